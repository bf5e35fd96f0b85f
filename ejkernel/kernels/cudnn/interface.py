"""The registered cuDNN implementation: a validated ``AttentionCall`` in, ``(output, None)`` out.

Only calls inside ``capabilities.CAPABILITIES`` arrive here (the registry checks before tracing), so the
translation to ``jax.nn.dot_product_attention`` is one-to-one: our bottom-right causal alignment is
jax.nn's on a square score matrix, and a causal window ``(left, right)`` is jax.nn's ``(left, 0)`` (under
causal the right bound allows nothing more).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ejkernel.ops.attention.call import AttentionCall

__all__ = ["registered_attention", "cudnn_attention"]


def cudnn_attention(call: AttentionCall) -> tuple[Array, None]:
    """``jax.nn.dot_product_attention(implementation="cudnn")`` on the call, in the call's dtype."""
    f = call.features
    dtype = jnp.dtype(f.dtype)
    window = None if f.window is None else (f.window[0], 0)
    out = jax.nn.dot_product_attention(
        call.query.astype(dtype), call.key.astype(dtype), call.value.astype(dtype),
        scale=f.softmax_scale, is_causal=f.causal, local_window_size=window, implementation="cudnn",
    )
    return out, None


def registered_attention(interpret: Any) -> Callable[[AttentionCall], tuple[Array, None]]:
    """The implementation the registry builds (cuDNN has no interpret mode)."""
    del interpret
    return cudnn_attention
