"""Segment ids and key lengths as every backend sees them: the keys some query may see, and per-block
summaries that let a tiled kernel skip, or leave unmasked, whole blocks (``docs/semantics.rst``).

The element rule is ``masks.same_segment`` / ``masks.within_length``; this module only summarises it:

* ``visible_kv_ids``: the key ids with every key that *no query of its row* may see set to ``-1`` (padding):
  keys past ``kv_lengths``, and keys of a segment no query of the row has. Backends zero those keys' K and V
  rows (``zero_invisible``) before any product, so that a NaN or Inf there (an uninitialised cache slot)
  cannot reach a result through ``0 * NaN``. Under the pair rule ``-1`` changes nothing: no query could
  attend those keys anyway.
* ``block_ranges``: the ``(min, max)`` id (padding left out) of each block of a ``[B, S]`` id array and
  whether it holds one id only, in O(S), outside any kernel.
* ``block_relation``: from two blocks' ranges, whether the ids can allow some pair (else the tile is
  skipped) and whether they allow every pair (one id, the same, no padding: no per-element mask).
* ``block_spans``: for each block of one side, the first and one past the last block of the other side
  that ``block_relation`` may allow: a kernel's loop over the other side ends there, so the tiles of other
  documents of a packed row are not even visited.

Every function takes NumPy or JAX arrays (host-side block counting and kernels use the same code), but
``zero_invisible_for_kernels`` (JAX only).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

__all__ = [
    "PADDING_ID", "visible_kv_ids", "key_visible", "zero_invisible", "zero_invisible_for_kernels", "block_ranges",
    "block_relation", "block_spans", "narrow_to_span", "as_ids", "visited_tiles",
]

#: The id ``visible_kv_ids`` gives a key no query may see (any negative id is padding).
PADDING_ID = -1


def _xp(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def as_ids(x: Any) -> Any:
    """Segment ids or lengths as int32 (what every backend compares)."""
    xp = _xp(x)
    return xp.asarray(x).astype(xp.int32)


def visible_kv_ids(q_ids: Any, kv_ids: Any | None, kv_lengths: Any | None, kv_len: int) -> Any:
    """``[B, Skv]`` int32: ``kv_ids`` (all ``0`` when ``None``) with ``-1`` for every key no query of its row
    may see by the ids or the lengths: a negative id, a segment no query of the row has, a position at or
    past ``kv_lengths``. O(S log S): the row's query ids are sorted and each key id is looked up (O(S) when
    ``kv_ids`` is ``q_ids``, the same array: then only negative ids are invisible).

    Args:
      q_ids: ``[B, Sq]`` integer query ids, or ``None`` (then ``kv_ids`` must be ``None`` too).
      kv_ids: ``[B, Skv]`` integer key ids, or ``None``.
      kv_lengths: ``[B]`` integer, or ``None``.
      kv_len: ``Skv``.
    """
    xp = _xp(kv_ids if kv_ids is not None else (kv_lengths if kv_lengths is not None else q_ids))
    positions = xp.arange(kv_len, dtype=xp.int32)[None, :]
    if kv_ids is None:
        batch = kv_lengths.shape[0]
        ids = xp.zeros((batch, kv_len), xp.int32)
    elif kv_ids is q_ids:  # one array for both (self-attention on packed rows): every id has its queries
        ids = as_ids(kv_ids)
        ids = xp.where(ids >= 0, ids, PADDING_ID)
    else:
        ids = as_ids(kv_ids)
        q_sorted = xp.sort(as_ids(q_ids), axis=1)
        at = _searchsorted_rows(xp, q_sorted, ids)
        found = xp.take_along_axis(q_sorted, xp.minimum(at, q_sorted.shape[1] - 1), axis=1) == ids
        ids = xp.where(found & (ids >= 0), ids, PADDING_ID)
    if kv_lengths is not None:
        ids = xp.where(positions < as_ids(kv_lengths)[:, None], ids, PADDING_ID)
    return ids


def _searchsorted_rows(xp: Any, sorted_rows: Any, values: Any) -> Any:
    """Row-wise ``searchsorted(sorted_rows[b], values[b])`` (left)."""
    if xp is np:
        return np.stack([np.searchsorted(r, v) for r, v in zip(sorted_rows, values, strict=True)])
    import jax

    return jax.vmap(xp.searchsorted)(sorted_rows, values).astype(xp.int32)


def key_visible(visible_ids: Any) -> Any:
    """Whether each key of ``visible_kv_ids`` may be seen by some query (its id is not padding)."""
    return visible_ids >= 0


def zero_invisible(x: Any, visible_ids: Any, seq_axis: int = 1) -> Any:
    """``x`` (a ``[B, Skv, ...]`` key or value array, sequence on ``seq_axis``) with the rows of keys no query
    may see set to 0: a NaN or Inf there then meets only zero weights, never ``0 * NaN``. Its gradient is 0
    on those rows, which is the true gradient (no query reads them)."""
    xp = _xp(x)
    keep = key_visible(visible_ids)
    shape = [1] * x.ndim
    shape[0], shape[seq_axis] = keep.shape
    return xp.where(keep.reshape(shape), x, xp.zeros((), x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def zero_invisible_for_kernels(x: Any, visible_ids: Any, seq_axis: int = 1) -> Any:
    """``zero_invisible``, whose gradient passes the cotangent through unchanged.

    Only for operands of a kernel whose own gradient rows of those keys are already exactly 0 (a flash
    kernel masks them for every query, so ``p = 0`` there and every product is of finite zeros): the select's
    transpose would then be a second pass over dK and dV that changes nothing (on an H200, 0.064 ms of a
    1.4 ms packed-row forward+backward, ``benchmarks/NOTES-mosaic_gpu.md``).
    """
    return zero_invisible(x, visible_ids, seq_axis)


def _zero_invisible_fwd(x, visible_ids, seq_axis):
    return zero_invisible(x, visible_ids, seq_axis), None


def _zero_invisible_bwd(seq_axis, _, cotangent):
    return cotangent, None


zero_invisible_for_kernels.defvjp(_zero_invisible_fwd, _zero_invisible_bwd)


def block_ranges(ids: Any, block: int) -> tuple[Any, Any, Any]:
    """``(lo, hi, uniform)`` of each ``block`` positions of ``ids [B, S]``, each ``[B, ceil(S / block)]`` int32:
    the least and greatest id that is not padding (``lo = 2**31 - 1``, ``hi = -1`` for a block of padding
    only), and 1 where the block holds one id and no padding, else 0. O(S), outside any kernel.

    Padding is left out of the range because it matches nothing: a padding tail does not stop a block from
    being skipped. A ragged last block is padded with its last id (the kernels mask positions past the
    sequence themselves).
    """
    xp = _xp(ids)
    ids = as_ids(ids)
    batch, length = ids.shape
    n = -(-length // block)
    pad = n * block - length
    if pad:
        ids = xp.concatenate([ids, xp.broadcast_to(ids[:, -1:], (batch, pad))], axis=1)
    blocks = ids.reshape(batch, n, block)
    real = blocks >= 0
    lo = xp.where(real, blocks, xp.int32(np.iinfo(np.int32).max)).min(axis=2)
    hi = xp.where(real, blocks, xp.int32(-1)).max(axis=2)
    uniform = real.all(axis=2) & (lo == hi)
    return lo.astype(xp.int32), hi.astype(xp.int32), uniform.astype(xp.int32)


def block_relation(q_lo: Any, q_hi: Any, q_uniform: Any, kv_lo: Any, kv_hi: Any, kv_uniform: Any) -> tuple[Any, Any]:
    """``(some, every)`` of a query block and a key block from their ``block_ranges`` (broadcasting): whether
    the ids may allow some pair of the tile, and whether they allow every pair.

    ``some`` is False only when no pair can match: the ranges (padding left out) do not meet, or one side
    is padding only. ``every`` holds when both blocks hold one id, the same, and no padding.
    """
    some = (q_hi >= kv_lo) & (kv_hi >= q_lo)
    every = (q_uniform != 0) & (kv_uniform != 0) & (q_lo == kv_lo)
    return some, every


def block_spans(row_ranges: tuple[Any, Any, Any], col_ranges: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """``(first, end, whole)``, each ``[B, n_rows]`` int32: for each row block (``block_ranges`` of one side),
    the first column block (of the other side) whose ``block_relation`` has ``some``, and one past the
    last (``first = end = 0`` where none has); ``whole`` is 1 where every column block in ``[first, end)``
    has ``every`` (a block of one document inside a document aligned to the blocks: its loop needs no
    per-tile test at all). Outside any kernel, from the block summaries only (``B * n_rows * n_cols``
    booleans).

    For sorted (packed) ids every block between ``first`` and ``end`` has ``some``; for any ids a block
    outside the span has none, so a loop may end at the span without changing a result.
    """
    xp = _xp(row_ranges[0])
    some, every = block_relation(*(r[:, :, None] for r in row_ranges), *(c[:, None, :] for c in col_ranges))
    n_cols = some.shape[2]
    seen = some.any(axis=2)
    first = xp.where(seen, xp.argmax(some, axis=2), 0)
    end = xp.where(seen, n_cols - xp.argmax(some[:, :, ::-1], axis=2), 0)
    cols = xp.arange(n_cols)[None, None, :]
    in_span = (cols >= first[:, :, None]) & (cols < end[:, :, None])
    whole = seen & xp.all(every | ~in_span, axis=2)
    return first.astype(xp.int32), end.astype(xp.int32), whole.astype(xp.int32)


def narrow_to_span(bounds: tuple[Any, Any, Any, Any], first: Any, end: Any) -> tuple[Any, Any, Any, Any]:
    """A kernel loop's ``(lo, interior_lo, interior_hi, hi)`` (``masks.key_blocks``' form) cut to the blocks
    ``[first, end)`` of ``block_spans``; the interior stays inside the cut range (possibly empty). (The
    ``whole`` flag of ``block_spans`` is the kernel's to use.)"""
    xp = _xp(first)
    lo, interior_lo, interior_hi, hi = bounds
    lo = xp.maximum(lo, first)
    hi = xp.maximum(xp.minimum(hi, end), lo)
    interior_lo = xp.clip(interior_lo, lo, hi)
    return lo, interior_lo, xp.clip(interior_hi, interior_lo, hi), hi


def visited_tiles(q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool, window: tuple[int, int] | None,
                  q_ids: Any = None, kv_ids: Any = None, kv_lengths: Any = None) -> np.ndarray:
    """``[B, n_q, n_k]`` bool, on the host: the tiles a kernel computes, from the rules the kernels use
    (``masks.key_blocks`` ending at each row's length, and ``block_relation`` of the visible ids' ranges).

    ``q_ids``/``kv_ids`` ``[B, S]`` and ``kv_lengths [B]`` are NumPy arrays or ``None`` (at least one given).
    """
    from ejkernel.ops.attention.masks import key_blocks

    batch = (q_ids if q_ids is not None else kv_lengths).shape[0]
    n_q, n_k = -(-q_len // block_q), -(-kv_len // block_k)
    q_first = np.arange(n_q) * block_q
    visited = np.zeros((batch, n_q, n_k), bool)
    kv_block = np.arange(n_k)[None, :]
    for b in range(batch):
        length = None if kv_lengths is None else int(kv_lengths[b])
        lo, _, _, hi = (np.asarray(x)[:, None] for x in key_blocks(q_first, q_first + block_q - 1, block_k, q_len,
                                                                   kv_len, causal, window, kv_length=length))
        visited[b] = (kv_block >= lo) & (kv_block < hi)
    if q_ids is not None:
        visible = visible_kv_ids(np.asarray(q_ids), np.asarray(kv_ids), kv_lengths, kv_len)
        q_lo, q_hi, q_one = (x[:, :, None] for x in block_ranges(np.asarray(q_ids), block_q))
        kv_lo, kv_hi, kv_one = (x[:, None, :] for x in block_ranges(visible, block_k))
        visited &= block_relation(q_lo, q_hi, q_one, kv_lo, kv_hi, kv_one)[0]
    return visited
