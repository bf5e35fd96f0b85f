"""The kernels' view of the shared rules: block ranges of a CTA and of each consumer, the edge-tile mask,
and row or column vectors broadcast over a tile.

Logits are in base 2 (``logits.transform_logits(..., base2=True)``) so the softmax uses ``exp2``. Masked
entries are ``-inf`` and the running max starts at the finite ``NEG_INIT``, so a row that has seen no
allowed key keeps ``p = exp2(-inf - NEG_INIT) = 0`` with no extra select.

The producer streams the key blocks of the whole CTA (``masks.key_blocks`` of its ``2 * block_q`` rows);
each consumer visits its own rows' blocks (``masks.key_blocks`` of its ``block_q`` rows), nested inside
the CTA's by ``nested_in``, and only lets the ring's other slots pass. The backward's dK/dV kernel walks
query blocks per key block the same way (``query_blocks``, the transpose, and ``mask_tile_transposed`` on
its ``[keys, queries]`` tiles). Every index is int32.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from ejkernel.kernels.pallas_mosaic_gpu.compat import iota
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.ops.attention import masks

__all__ = [
    "NEG_INIT",
    "i32",
    "key_blocks",
    "query_blocks",
    "nested_in",
    "rows",
    "columns",
    "mask_tile",
    "mask_tile_transposed",
    "heavy_first",
]

NEG_INIT = -1e30  # initial running max: below every finite logit, above -inf


def i32(x: Any) -> Any:
    """``x`` as an int32 scalar (a Python int would become int64 under ``jax_enable_x64``)."""
    return jnp.asarray(x, jnp.int32)


def heavy_first(p: Plan, index: Any, count: int, enabled: bool) -> Any:
    """The query block a query-side CTA (forward, dQ) of grid index ``index`` (of ``count``) takes.

    Under a causal mask a later query block sees more keys. The grid launches its CTAs in index order, so
    with ``enabled`` (and a causal mask) the last block goes first: the longest CTAs start in the first
    wave and the short ones fill the last, instead of the longest ones running alone at the end.
    """
    if enabled and p.causal:
        return i32(count - 1) - index
    return index


def key_blocks(p: Plan, q_first: Any, num_rows: int, block_k: int, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """``masks.key_blocks`` ``(lo, interior_lo, interior_hi, hi)`` of the rows ``[q_first, q_first + num_rows)``,
    ending at the row's ``kv_length`` where given."""
    q_first = i32(q_first)
    return masks.key_blocks(q_first, q_first + (num_rows - 1), block_k, p.q_len, p.kv_len, p.causal, p.window,
                            kv_length=kv_length)


def query_blocks(p: Plan, k_first: Any, num_keys: int, block_q: int, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """``masks.query_blocks`` ``(lo, interior_lo, interior_hi, hi)`` of the keys ``[k_first, k_first + num_keys)``."""
    k_first = i32(k_first)
    return masks.query_blocks(k_first, k_first + (num_keys - 1), block_q, p.q_len, p.kv_len, p.causal, p.window,
                              kv_length=kv_length)


def nested_in(outer: tuple[Any, Any, Any, Any], inner: tuple[Any, Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
    """``inner``'s blocks clipped into ``outer``'s ``[lo, hi)`` (an empty ``inner`` may sit outside it).

    Clipping drops nothing: a block outside the CTA's range holds no allowed pair of any of its rows.
    """
    lo, hi = outer[0], outer[3]
    a = jnp.clip(inner[0], lo, hi)
    d = jnp.clip(inner[3], a, hi)
    b = jnp.clip(inner[1], a, d)
    c = jnp.clip(inner[2], b, d)
    return a, b, c, d


def rows(x: Any, shape: tuple[int, int]) -> Any:
    """A per-row vector ``[rows]`` broadcast over a ``[rows, cols]`` tile (what Mosaic-GPU lowers from the
    wgmma row layout)."""
    return lax.broadcast_in_dim(x, shape, (0,))


def columns(x: Any, shape: tuple[int, int]) -> Any:
    """A per-column vector ``[cols]`` broadcast over a ``[rows, cols]`` tile."""
    return lax.broadcast_in_dim(x, shape, (1,))


def mask_tile(p: Plan, s2: Any, q_first: Any, k_first: Any, kv_length: Any = None, q_ids: Any = None,
              kv_ids: Any = None) -> Any:
    """``s2`` with the pairs ``masks.valid_pairs`` rules out (causal, window, keys past ``kv_len`` or the row's
    ``kv_length``, different segments: ``q_ids [rows]`` and ``kv_ids [cols]``) at ``-inf``."""
    shape = s2.shape
    q_idx = q_first + iota(shape, 0, p.interpret)
    k_idx = k_first + iota(shape, 1, p.interpret)
    ids = {} if q_ids is None else {"q_segment": rows(q_ids, shape), "kv_segment": columns(kv_ids, shape)}
    ok = masks.valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, kv_length=kv_length, **ids)
    return jnp.where(ok, s2, -jnp.inf)


def mask_tile_transposed(p: Plan, s2t: Any, k_first: Any, q_first: Any, kv_length: Any = None, kv_ids: Any = None,
                         q_ids: Any = None) -> Any:
    """``mask_tile`` of a transposed ``[keys, queries]`` tile (the dK/dV kernel's ``Sᵀ``): ``kv_ids [rows]``,
    ``q_ids [cols]``."""
    shape = s2t.shape
    k_idx = k_first + iota(shape, 0, p.interpret)
    q_idx = q_first + iota(shape, 1, p.interpret)
    ids = {} if q_ids is None else {"q_segment": columns(q_ids, shape), "kv_segment": rows(kv_ids, shape)}
    ok = masks.valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, kv_length=kv_length, **ids)
    return jnp.where(ok, s2t, -jnp.inf)
