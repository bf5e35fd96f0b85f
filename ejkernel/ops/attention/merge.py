"""Partial results and the one rule that merges them; the empty-row convention.

A partial result is ``(out, lse)``: ``out`` normalised over its own keys and ``lse`` the log of its
softmax denominator. **A row with no allowed key (and no sink) has ``out = 0`` and ``lse = -inf``**, on
every backend and in every public ``lse``; ``normalize_rows`` produces that form from an online softmax's
running ``(acc, max, sum)``, and ``recompute_lse`` turns it into the value a backward pass recomputes
``p = exp(s - lse)`` from (``+inf`` there, so ``p`` is 0 with no extra select).

Merging is exact, associative and commutative, so chunked XLA, split-kv decode and ring attention all use
it (``merge_partials`` for two, ``merge_many`` for n). Sinks are a partial result with no value:
``add_sinks`` folds them in exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array

__all__ = ["normalize_rows", "recompute_lse", "merge_partials", "merge_many", "add_sinks"]


def normalize_rows(acc: Any, row_max: Any, row_sum: Any, *, base2: bool = False,
                   broadcast: Callable[[Any, tuple[int, ...]], Any] | None = None) -> tuple[Any, Any]:
    """``(out, lse)`` from an online softmax's unnormalised ``acc [..., rows, Dv]`` and per-row max and sum.

    ``row_max`` is in the logits' units (base 2 with ``base2``, and then so is the returned ``lse``). A row
    whose sum is 0 saw no allowed key: its output is 0 and its lse ``-inf``. Works inside kernels;
    ``broadcast(row_vector, acc.shape)`` spreads a row vector over ``acc`` where a kernel language needs it
    spelled its own way (default ``row_vector[..., None]``).
    """
    seen = row_sum > 0
    safe = jnp.where(seen, row_sum, 1.0)
    inverse = jnp.where(seen, 1.0 / safe, 0.0)
    log = jnp.log2 if base2 else jnp.log
    lse = jnp.where(seen, row_max + log(safe), -jnp.inf)
    spread = inverse[..., None] if broadcast is None else broadcast(inverse, acc.shape)
    return acc * spread, lse


def recompute_lse(lse: Any) -> Any:
    """``lse`` with empty rows (``-inf``) as ``+inf``: the form ``p = exp(s - lse)`` is recomputed from."""
    return jnp.where(jnp.isneginf(lse), jnp.inf, lse)


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


def merge_many(outs: Array, lses: Array) -> tuple[Array, Array]:
    """Merges ``n`` partials stacked on axis 0: ``outs [n, ..., Dv]``, ``lses [n, ...]``; float32 out."""
    top = jnp.max(lses, axis=0)
    shift = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.where(jnp.isneginf(lses), 0.0, jnp.exp(lses - shift))
    total = jnp.sum(weights, axis=0)
    seen = total > 0
    weights = weights / jnp.where(seen, total, 1.0)
    out = jnp.sum(outs.astype(jnp.float32) * weights[..., None], axis=0)
    return out, jnp.where(seen, shift + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)


def add_sinks(out: Array, lse: Array, sinks_lse: Array) -> tuple[Array, Array]:
    """Adds sink logits (already reduced to their log-sum-exp, broadcastable to ``lse``) to a result."""
    lse_total = jnp.logaddexp(lse, sinks_lse)
    return out.astype(jnp.float32) * _safe_weight(lse, lse_total)[..., None], lse_total
