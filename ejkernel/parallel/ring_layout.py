"""Where the sequence chunks of each shard lie on a ring, and the permutation that places a sequence there.

A sequence of length ``S`` sharded over ``n`` devices is cut into equal chunks:

- contiguous (``load_balance=False``): ``n`` chunks, shard ``r`` holds chunk ``r``;
- zigzag (``load_balance=True``): ``2n`` chunks, shard ``r`` holds chunks ``r`` and ``2n - 1 - r``, in that
  order. Under causality shard ``r`` then has ``(r + 1) + (2n - r)`` = ``2n + 1`` chunk pairs of work
  whatever ``r`` (contiguous: ``r + 1`` pairs, so the last shard works ``n`` times as much as the first).

``shard_map`` hands shard ``r`` the ``r``-th slice of the sequence axis. For zigzag the caller therefore
reorders the sequence first: ``x_placed = x[:, load_balance_permutation(S, n)]`` (``to_ring_layout``), and
``from_ring_layout`` undoes it on the output. Queries, keys, values, and both sequence axes of a bias or
mask, take the same permutation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = ["shard_chunks", "chunks_per_shard", "load_balance_permutation", "to_ring_layout", "from_ring_layout"]


def chunks_per_shard(load_balance: bool) -> int:
    """How many chunks each shard holds: 2 with zigzag load balancing, else 1."""
    return 2 if load_balance else 1


def shard_chunks(num_shards: int, load_balance: bool) -> np.ndarray:
    """``[n, chunks_per_shard]`` int: the global chunk index of each local chunk of each shard, in local order."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    r = np.arange(num_shards)
    if not load_balance:
        return r[:, None]
    return np.stack([r, 2 * num_shards - 1 - r], axis=1)


def load_balance_permutation(seq_len: int, num_shards: int) -> np.ndarray:
    """``[S]`` int: position ``p`` of the placed sequence holds position ``perm[p]`` of the natural one (zigzag).

    Raises:
      ValueError: ``seq_len`` not a multiple of ``2 * num_shards``.
    """
    if num_shards < 1 or seq_len % (2 * num_shards):
        raise ValueError(f"seq_len {seq_len} must be a multiple of 2 * num_shards = {2 * num_shards} for load balancing")
    chunk = seq_len // (2 * num_shards)
    order = shard_chunks(num_shards, True).reshape(-1)
    return (order[:, None] * chunk + np.arange(chunk)[None, :]).reshape(-1)


def to_ring_layout(x: Array, num_shards: int, *, axis: int = 1) -> Array:
    """``x`` with its sequence ``axis`` in zigzag order (``load_balance_permutation``), ready to shard."""
    perm = load_balance_permutation(x.shape[axis], num_shards)
    return jnp.take(x, jnp.asarray(perm), axis=axis)


def from_ring_layout(x: Array, num_shards: int, *, axis: int = 1) -> Array:
    """The inverse of ``to_ring_layout``: a zigzag-ordered sequence ``axis`` back in natural order."""
    perm = load_balance_permutation(x.shape[axis], num_shards)
    return jnp.take(x, jnp.asarray(np.argsort(perm)), axis=axis)
