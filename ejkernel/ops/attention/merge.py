"""The one merge rule for partial attention results over disjoint key sets.

A partial result is ``(out, lse)``: ``out`` normalised over its own keys and ``lse`` the log of its
softmax denominator (``-inf`` when it saw no allowed key, in which case ``out`` must be zero). Merging is
exact, associative and commutative, so chunked XLA, split-kv decode and ring attention all use it. Sinks
are a partial result with no value: ``add_sinks`` folds them in exactly once.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

__all__ = ["merge_partials", "add_sinks", "sink_logits"]


def _safe_weight(lse_part: Array, lse_total: Array) -> Array:
    # exp(-inf - -inf) is NaN; a part that saw nothing contributes weight 0.
    return jnp.where(jnp.isneginf(lse_part), 0.0, jnp.exp(lse_part - jnp.where(jnp.isneginf(lse_total), 0.0, lse_total)))


def merge_partials(out_a: Array, lse_a: Array, out_b: Array, lse_b: Array) -> tuple[Array, Array]:
    """Merges two partials. ``lse`` has the shape of ``out`` without its last axis."""
    lse = jnp.logaddexp(lse_a, lse_b)
    w_a = _safe_weight(lse_a, lse)[..., None]
    w_b = _safe_weight(lse_b, lse)[..., None]
    out = out_a.astype(jnp.float32) * w_a + out_b.astype(jnp.float32) * w_b
    return out, lse


def add_sinks(out: Array, lse: Array, sinks_lse: Array) -> tuple[Array, Array]:
    """Adds sink logits (already reduced to their log-sum-exp, broadcastable to ``lse``) to a result."""
    lse_total = jnp.logaddexp(lse, sinks_lse)
    return out.astype(jnp.float32) * _safe_weight(lse, lse_total)[..., None], lse_total


def sink_logits(softmax_aux: Array, num_q_heads: int) -> Array:
    """``softmax_aux`` of shape ``[Hq, n]`` or ``[n]`` as float32 ``[Hq, n]`` (float64 stays float64)."""
    aux = softmax_aux.astype(jnp.promote_types(softmax_aux.dtype, jnp.float32))
    if aux.ndim == 1:
        aux = jnp.broadcast_to(aux[None, :], (num_q_heads, aux.shape[0]))
    return aux
