"""Segment ids and key lengths in the TPU kernels (``docs/semantics.rst``, *Packed and variable-length
sequences*): their operands, and what they say of a tile.

Outside the kernels (XLA, O(S)), as scalar-prefetch operands in SMEM: ``kv_lengths [B]`` and, for one
pass's block sizes, the ``segments.block_ranges`` ``(lo, hi, uniform)`` of the query ids and of the
visible key ids (``segments.visible_kv_ids``: keys no query may see are ``-1``), each ``[B, n_blocks]``.
As VMEM blocks: the query ids ``[B, Sq_pad, 1]`` (a ``(block_q, 1)`` column) and the key ids twice,
``[B, 1, Skv_pad]`` (a ``(1, block_k)`` row, for the pair rule) and ``[B, Skv_pad, 1]`` (a column, to zero
the K/V rows of keys no query may see). All ids are padded with ``-1``.

A tile is visited when causal/window and the row's key length leave it a pair (``blocks.block_visited``)
and the ids' ranges meet (``segments.block_relation``); it is masked element by element unless it is
interior and the ids allow every pair. The index maps clamp the key blocks past a row's length into the
visited range, so those cost no DMA; a tile the ids skip inside the range is not computed, but its
blocks are still fetched (no next-visited-block table: the GPU measurements decide whether one pays).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ejkernel.ops.attention import segments

__all__ = ["Scalars", "Packing", "NO_PACKING", "scalar_operands", "scalar_view", "block_specs", "pop_blocks"]


@dataclasses.dataclass(frozen=True)
class Scalars:
    """The scalar-prefetch packing refs (``None`` where absent): ``lengths [B]``, the ``(lo, hi, uniform)``
    ranges ``[B, n]`` of the query blocks and of the key blocks."""

    lengths: Any = None
    q_ranges: tuple[Any, Any, Any] | None = None
    kv_ranges: tuple[Any, Any, Any] | None = None

    def length(self, b: Any) -> Any:
        return None if self.lengths is None else self.lengths[b]

    def relation(self, b: Any, q_block: Any, kv_block: Any) -> tuple[Any, Any] | None:
        """``(some, every)`` of a tile (``segments.block_relation``); ``None`` without segment ids."""
        if self.q_ranges is None:
            return None
        return segments.block_relation(*(r[b, q_block] for r in self.q_ranges), *(r[b, kv_block] for r in self.kv_ranges))


def scalar_operands(plan: Any, block_q: int, block_k: int, packing: tuple[Any, Any, Any]) -> list[Any]:
    """The scalar-prefetch operands of one pass, from ``packing = (q_ids, kv_ids, lengths)`` (padded int32)."""
    q_ids, kv_ids, lengths = packing
    operands = [lengths] if plan.lengths else []
    if plan.segments:
        operands += [*segments.block_ranges(q_ids, block_q), *segments.block_ranges(kv_ids, block_k)]
    return operands


def scalar_view(plan: Any, refs: tuple[Any, ...]) -> Scalars:
    """The ``Scalars`` of the prefetch refs in ``scalar_operands``' order (kernels and index maps alike)."""
    refs = list(refs)
    lengths = refs.pop(0) if plan.lengths else None
    if not plan.segments:
        return Scalars(lengths)
    return Scalars(lengths, tuple(refs[:3]), tuple(refs[3:6]))


def block_specs(plan: Any, packing: tuple[Any, Any, Any], block_q: int, block_k: int, q_block_of, kv_block_of,
                batch_of) -> tuple[list[Any], list[Any]]:
    """``(specs, inputs)`` of the id blocks, in ``pop_blocks``' order; ``q_block_of``/``kv_block_of``/``batch_of``
    map a grid index (and the prefetch refs) to the query block, key block and batch row."""
    if not plan.segments:
        return [], []
    from jax.experimental import pallas as pl

    q_ids, kv_ids, _ = packing
    specs = [
        pl.BlockSpec((None, block_q, 1), lambda *g: (batch_of(*g), q_block_of(*g), 0)),
        pl.BlockSpec((None, 1, block_k), lambda *g: (batch_of(*g), 0, kv_block_of(*g))),
        pl.BlockSpec((None, block_k, 1), lambda *g: (batch_of(*g), kv_block_of(*g), 0)),
    ]
    return specs, [q_ids[:, :, None], kv_ids[:, None, :], kv_ids[:, :, None]]


@dataclasses.dataclass(frozen=True)
class Packing:
    """A kernel's view of the packing: its ``Scalars`` and the id blocks of the current tile."""

    scalars: Scalars = Scalars()
    q_ids: Any = None  # (block_q, 1)
    kv_row: Any = None  # (1, block_k)
    kv_col: Any = None  # (block_k, 1)

    def pair_args(self, b: Any) -> dict[str, Any]:
        """``masks.valid_pairs``' packing arguments for the current ``[block_q, block_k]`` tile."""
        args: dict[str, Any] = {}
        if self.q_ids is not None:
            args["q_segment"], args["kv_segment"] = self.q_ids[...], self.kv_row[...]
        if self.scalars.lengths is not None:
            args["kv_length"] = self.scalars.length(b)
        return args

    def clean_keys(self, b: Any, kv_block: Any, block_k: int, *tiles: Any) -> tuple[Any, ...]:
        """Each ``[block_k, D]`` tile with the rows of keys no query may see set to 0 (NaN-safe ``p @ v``)."""
        if self.kv_col is not None:  # the visible ids already end at the key length
            ok = self.kv_col[...] >= 0
            return tuple(jnp.where(ok, t, jnp.zeros((), t.dtype)) for t in tiles)
        if self.scalars.lengths is None:
            return tiles
        length = self.scalars.length(b)
        out = []
        for t in tiles:
            position = kv_block * block_k + jnp.asarray(_row_iota(t.shape), jnp.int32)
            out.append(jnp.where(position < length, t, jnp.zeros((), t.dtype)))
        return tuple(out)


#: The view of a call without segment ids or key lengths.
NO_PACKING = Packing()


def _row_iota(shape: tuple[int, ...]) -> Any:
    import jax

    return jax.lax.broadcasted_iota(jnp.int32, shape, 0)


def pop_blocks(plan: Any, refs: list, scalars: Scalars) -> Packing:
    """The ``Packing`` of a kernel: takes the id block refs off the front of ``refs`` (``block_specs``' order)."""
    if not plan.segments:
        return Packing(scalars)
    return Packing(scalars, refs.pop(0), refs.pop(0), refs.pop(0))
