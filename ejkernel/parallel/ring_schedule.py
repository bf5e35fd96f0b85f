"""Which chunk pairs of a ring step causality or a window leave, written as one static table.

At step ``t`` of the ring shard ``r`` holds the keys of shard ``(r - t) mod n`` (``ppermute`` sends each
block to the next shard). Each (local query chunk, held key chunk) pair is of one ``PairClass``, decided
from the global chunk indices with the rule of ``masks.allowed`` (queries and keys share one global
sequence, so the alignment offset is 0):

- ``SKIP``: causality or the window allows no pair: nothing is computed;
- ``FULL``: every pair is allowed: the step kernel runs with no causal flag and no window;
- ``DIAGONAL``: the same chunk of queries and keys: the step kernel runs with the call's own ``causal``
  and ``sliding_window`` (on equal lengths its bottom-right alignment is the global one);
- ``BAND``: a window's edge crosses an off-diagonal pair: the step kernel gets the pair's allowed set as a
  boolean ``[1, 1, C, C]`` mask built from global positions (``masks.allowed``), and-ed with the user's.

``step_classes`` is computed in NumPy before tracing; the ring indexes it with the traced shard index, so
the work it counts (``work_per_shard``) is the work the ring does.
"""

from __future__ import annotations

import enum

import numpy as np

from ejkernel.parallel.ring_layout import shard_chunks

__all__ = ["PairClass", "pair_class", "step_classes", "work_per_shard", "critical_path"]


class PairClass(enum.IntEnum):
    """How one (query chunk, key chunk) pair of a ring step is computed (the branch index of the step)."""

    SKIP = 0
    FULL = 1
    DIAGONAL = 2
    BAND = 3


#: Past any ``j - i`` of a sequence: a side with no bound.
_UNBOUNDED = 1 << 62


def _band(causal: bool, window: tuple[int, int] | None) -> tuple[int, int]:
    """``(lo, hi)``: key ``j`` is allowed for query ``i`` iff ``lo <= j - i <= hi`` (global positions)."""
    lo, hi = -_UNBOUNDED, _UNBOUNDED
    if window is not None:
        lo, hi = -window[0], window[1]
    if causal:
        hi = min(hi, 0)
    return lo, hi


def pair_class(q_chunk: int, k_chunk: int, chunk_len: int, causal: bool, window: tuple[int, int] | None) -> PairClass:
    """The class of global query chunk ``q_chunk`` against global key chunk ``k_chunk`` (chunks of ``chunk_len``)."""
    lo, hi = _band(causal, window)
    shift = (k_chunk - q_chunk) * chunk_len  # j - i ranges over shift + [-(C - 1), C - 1] in this pair
    first, last = shift - (chunk_len - 1), shift + (chunk_len - 1)
    if last < lo or first > hi:
        return PairClass.SKIP
    if lo <= first and last <= hi:
        return PairClass.FULL
    if q_chunk == k_chunk:
        return PairClass.DIAGONAL
    return PairClass.BAND


def step_classes(num_shards: int, load_balance: bool, chunk_len: int, causal: bool,
                 window: tuple[int, int] | None) -> np.ndarray:
    """``[n shards, n steps, k, k]`` int32 classes: shard ``r``, step ``t``, local query chunk, held key chunk."""
    chunks = shard_chunks(num_shards, load_balance)
    k = chunks.shape[1]
    table = np.zeros((num_shards, num_shards, k, k), np.int32)
    for r in range(num_shards):
        for t in range(num_shards):
            held = chunks[(r - t) % num_shards]
            for a in range(k):
                for b in range(k):
                    table[r, t, a, b] = pair_class(int(chunks[r, a]), int(held[b]), chunk_len, causal, window)
    return table


def _allowed_pairs(q_chunk: int, k_chunk: int, chunk_len: int, causal: bool, window: tuple[int, int] | None) -> int:
    lo, hi = _band(causal, window)
    rel = (k_chunk - q_chunk) * chunk_len + np.arange(chunk_len)[None, :] - np.arange(chunk_len)[:, None]
    return int(np.count_nonzero((rel >= lo) & (rel <= hi)))


def work_per_shard(num_shards: int, load_balance: bool, seq_len: int, causal: bool,
                   window: tuple[int, int] | None = None) -> np.ndarray:
    """``[n shards, n steps]``: the allowed (query, key) pairs each shard computes at each step.

    This is the work of a kernel that skips what is not allowed (a diagonal pair costs about half a full
    one); a skipped pair costs nothing.
    """
    k = 2 if load_balance else 1
    chunk_len = seq_len // (num_shards * k)
    chunks = shard_chunks(num_shards, load_balance)
    work = np.zeros((num_shards, num_shards), np.int64)
    for r in range(num_shards):
        for t in range(num_shards):
            held = chunks[(r - t) % num_shards]
            work[r, t] = sum(_allowed_pairs(int(a), int(b), chunk_len, causal, window) for a in chunks[r] for b in held)
    return work


def critical_path(work: np.ndarray) -> int:
    """The ring's time in pairs: every step waits for its slowest shard (the next block's ``ppermute``)."""
    return int(np.sum(np.max(work, axis=0)))
