"""A call served by one implementation when it is not differentiated and by another when it is.

``platform="auto"`` ranks implementations by forward+backward speed (training is the common case), but the
fastest forward alone can be another kernel (on the H200, at short sequences and D=256 the Mosaic-GPU
forward beats cuDNN's while cuDNN's backward is far ahead). ``split`` gives each its pass: a
``jax.custom_vjp`` whose primal runs ``forward`` and whose forward rule runs ``training`` under ``jax.vjp``,
keeping that implementation's residuals for the backward. Only calls with nothing but ``query``, ``key``
and ``value`` as arrays are split (the speed table classes no other call), so those three are the only
differentiable inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from ejkernel.ops.attention.call import AttentionCall

__all__ = ["split"]

_OTHER_ARRAYS = ("attention_mask", "bias", "softmax_aux", "dropout_rng", "q_segment_ids", "kv_segment_ids", "kv_lengths")


def split(call: AttentionCall, forward: Callable[[AttentionCall], Any], training: Callable[[AttentionCall], Any]) -> Any:
    """``forward(call)``'s result, differentiated as ``training(call)`` (same semantics, other kernel).

    Raises:
      ValueError: the call carries arrays besides query, key and value (it is never split).
    """
    others = [name for name in _OTHER_ARRAYS if getattr(call, name) is not None]
    if others:
        raise ValueError(f"only calls of query, key and value are split between implementations, not ones with {others}")

    def with_arrays(query, key, value):
        return dataclasses.replace(call, query=query, key=key, value=value)

    @jax.custom_vjp
    def attend(query, key, value):
        return forward(with_arrays(query, key, value))

    def attend_forward(query, key, value):
        return jax.vjp(lambda q, k, v: training(with_arrays(q, k, v)), query, key, value)

    def attend_backward(vjp, cotangent):
        return vjp(cotangent)

    attend.defvjp(attend_forward, attend_backward)
    return attend(call.query, call.key, call.value)
