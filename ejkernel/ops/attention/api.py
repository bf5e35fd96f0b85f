"""The public ``attention`` entry point and its algorithm record for the registry."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike
from jaxtyping import Bool, Float, Key, UInt32

from ejkernel.errors import FallbackWarning
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.ops.attention.validation import resolve_bias, validate_attention
from ejkernel.registry import Algorithm, Decision, get_kernel

__all__ = ["attention", "explain_attention", "ATTENTION", "analyze_attention"]



def analyze_attention(bound: inspect.BoundArguments) -> tuple[AttentionFeatures, inspect.BoundArguments]:
    """Resolves ``init_bias`` (called only when bias and mask are both ``None``) and validates the call."""
    a = bound.arguments
    a["bias"] = resolve_bias(a["bias"], a["attention_mask"], a["init_bias"])
    a["init_bias"] = None
    features = validate_attention(
        a["query"], a["key"], a["value"], a["attention_mask"], a["bias"], a["deterministic"],
        a["dropout_rng"], a["softmax_aux"], a["softmax_scale"], a["logits_soft_cap"], a["dtype"],
        a["softmax_dtype"], a["dropout_prob"], a["causal"], a["sliding_window"],
    )
    return features, bound


ATTENTION = Algorithm(name="attention", signature=SIGNATURE, analyze=analyze_attention)


def attention(
    query: Float[Array, "batch q_len num_q_heads head_dim"],
    key: Float[Array, "batch kv_len num_kv_heads head_dim"],
    value: Float[Array, "batch kv_len num_kv_heads v_head_dim"],
    attention_mask: Bool[Array, "#batch mask_heads q_len kv_len"] | None = None,
    bias: Float[Array, "#batch bias_heads q_len kv_len"] | None = None,
    init_bias: Callable[[], Float[Array, "#batch bias_heads q_len kv_len"]] | None = None,
    deterministic: bool = True,
    dropout_rng: Key[Array, ""] | UInt32[Array, "2"] | None = None,
    softmax_aux: Float[Array, "num_q_heads num_sinks"] | Float[Array, "num_sinks"] | None = None,
    softmax_scale: float | None = None,
    logits_soft_cap: float | None = None,
    dtype: DTypeLike | None = jnp.bfloat16,
    softmax_dtype: DTypeLike | None = None,
    dropout_prob: float = 0.0,
    causal: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    *,
    platform: str = "auto",
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch num_q_heads q_len kv_len"] | None]:
    """Attention on the best implementation for this device and these arguments.

    The parameters and semantics are those of the XLA reference
    (``ejkernel.kernels._xla.attention._interface.attention``; ``docs/semantics.rst``), identical on every
    backend. ``platform`` is "auto" (the best implementation registered for the device JAX would use),
    "xla", "pallas" (TPU) or "triton" (NVIDIA GPU). A platform that cannot run here, or cannot serve these
    arguments, hands the call to one that can (finally XLA) with a ``FallbackWarning``.

    Returns ``(output, weights)``; fused kernels return ``None`` for the weights.
    """
    kernel = get_kernel("attention", platform)
    return kernel(
        query, key, value, attention_mask, bias, init_bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
    )


def explain_attention(*args: Any, platform: str = "auto", interpret: bool = False, **kwargs: Any) -> Decision:
    """Which implementation ``attention(*args, **kwargs, platform=platform)`` would use, and why.

    Arrays may be ``jax.ShapeDtypeStruct`` objects: only shapes, dtypes and Python arguments are read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the decision itself carries the reason
        kernel = get_kernel("attention", platform, interpret=interpret)
    return kernel.explain(*args, **kwargs)
