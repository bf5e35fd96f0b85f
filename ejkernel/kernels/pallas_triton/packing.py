"""Segment ids and key lengths in the Triton kernels: their operands, and the tile walk that skips, masks or
leaves unmasked each block (``docs/semantics.rst``, *Packed and variable-length sequences*).

Outside the kernels (XLA, O(S)): the query ids and the visible key ids (``segments.visible_kv_ids``: keys no
query may see are ``-1``), padded with ``-1``, and per pass the ``segments.block_ranges`` of both at that
pass's block sizes and their ``segments.block_spans`` both ways, plus ``kv_lengths``. Each loop over
blocks is cut to its block's span (``segments.narrow_to_span``), so the tiles of other documents of a
packed row are never visited: visiting them and skipping each by a check ran the packed row of 8
documents at 2.2x the time of the same documents as a batch on an H200. Inside the span, for each visited
tile, ``segments.block_relation`` of the two blocks' ranges says whether the ids may allow some pair
(else the tile is skipped) and whether they allow every pair (then an interior tile stays unmasked); the
blocks a key length rules out never enter the loop range (``masks.key_blocks``/``query_blocks`` end
there).

Keys no query may see can hold NaN or Inf (uninitialised cache slots): a masked tile zeroes their K and V
rows (``key_ok``) before its products, so that ``0 * NaN`` never happens; interior tiles hold none.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ejkernel.kernels.pallas_triton.blocks import PassBlocks
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.ops.attention import segments

__all__ = ["PackingRefs", "packing_operands", "pop_packing_refs", "walk_blocks", "clean_keys"]


@dataclasses.dataclass(frozen=True)
class PackingRefs:
    """The packing refs of one kernel; all ``None`` for a call without segment ids or key lengths.

    ``q_ids [B, Sq_pad]``, ``kv_ids [B, Skv_pad]`` int32 (``-1`` padded); ``q_ranges``/``kv_ranges`` the
    ``(lo, hi, uniform)`` ``[B, n_blocks]`` of this pass's blocks; ``key_spans`` the ``(first, end, whole)``
    ``[B, n_q_blocks]`` of key blocks per query block (``segments.block_spans``), ``query_spans``
    ``[B, n_kv_blocks]`` the reverse;
    ``lengths [B]`` int32.
    """

    q_ids: Any = None
    kv_ids: Any = None
    q_ranges: tuple[Any, Any, Any] | None = None
    kv_ranges: tuple[Any, Any, Any] | None = None
    key_spans: tuple[Any, Any] | None = None
    query_spans: tuple[Any, Any] | None = None
    lengths: Any = None

    def keys_of(self, b: Any, q_block: Any, bounds: tuple[Any, Any, Any, Any]) -> tuple[tuple[Any, ...], Any]:
        """A loop over key blocks for query block ``q_block`` cut to its span, and its ``whole`` flag
        (``(bounds, None)`` without segment ids)."""
        return self._cut(self.key_spans, b, q_block, bounds)

    def queries_of(self, b: Any, kv_block: Any, bounds: tuple[Any, Any, Any, Any]) -> tuple[tuple[Any, ...], Any]:
        """A loop over query blocks for key block ``kv_block`` cut to its span, and its ``whole`` flag."""
        return self._cut(self.query_spans, b, kv_block, bounds)

    @staticmethod
    def _cut(spans: tuple[Any, Any, Any] | None, b: Any, block: Any, bounds: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
        if spans is None:
            return bounds, None
        first, end, whole = (x[b, block] for x in spans)
        return segments.narrow_to_span(bounds, first, end), whole != 0

    def length(self, b: Any) -> Any:
        """Row ``b``'s key length, clipped by ``masks.key_blocks`` (``None`` without lengths)."""
        return None if self.lengths is None else self.lengths[b]

    def relation(self, b: Any, q_block: Any, kv_block: Any) -> tuple[Any, Any] | None:
        """``(some, every)`` of a tile (``segments.block_relation``); ``None`` without segment ids."""
        if self.q_ranges is None:
            return None
        q = [r[b, q_block] for r in self.q_ranges]
        kv = [r[b, kv_block] for r in self.kv_ranges]
        return segments.block_relation(*q, *kv)

    def pair_args(self, b: Any, q_first: Any, block_q: int, k_first: Any, block_k: int, transposed: bool = False) -> dict:
        """``masks.valid_pairs``' packing arguments for a ``[block_q, block_k]`` tile (``[block_k, block_q]``
        when ``transposed``)."""
        args: dict[str, Any] = {}
        if self.q_ids is not None:
            q = self.q_ids[b, pl.ds(q_first, block_q)]
            kv = self.kv_ids[b, pl.ds(k_first, block_k)]
            args["q_segment"], args["kv_segment"] = (q[None, :], kv[:, None]) if transposed else (q[:, None], kv[None, :])
        if self.lengths is not None:
            args["kv_length"] = self.lengths[b]
        return args

    def key_ok(self, b: Any, k_first: Any, block_k: int) -> Any:
        """``[block_k]``: the keys of a block some query may see (``None`` when every key may be seen)."""
        if self.kv_ids is not None:  # the visible ids already end at the key length
            return self.kv_ids[b, pl.ds(k_first, block_k)] >= 0
        if self.lengths is not None:
            return k_first + lax.broadcasted_iota(jnp.int32, (block_k,), 0) < self.lengths[b]
        return None


def clean_keys(ok: Any, *tiles: Any) -> tuple[Any, ...]:
    """Each ``[block_k, D]`` tile with the rows of keys no query may see set to 0 (unchanged for ``ok=None``)."""
    if ok is None:
        return tiles
    return tuple(jnp.where(ok[:, None], t, jnp.zeros((), t.dtype)) for t in tiles)


def packing_operands(p: Plan, c: PassBlocks, q_ids: Any, kv_ids: Any, lengths: Any) -> list[Any]:
    """The kernel operands of one pass (in ``pop_packing_refs``' order), from the padded ids and lengths."""
    operands = []
    if p.segments:
        q_ranges, kv_ranges = segments.block_ranges(q_ids, c.block_q), segments.block_ranges(kv_ids, c.block_k)
        operands += [q_ids, kv_ids, *q_ranges, *kv_ranges, *segments.block_spans(q_ranges, kv_ranges),
                     *segments.block_spans(kv_ranges, q_ranges)]
    if p.lengths:
        operands.append(lengths)
    return operands


def pop_packing_refs(p: Plan, refs: list) -> PackingRefs:
    """Takes the packing refs off the front of ``refs`` (the order of ``packing_operands``)."""
    fields: dict[str, Any] = {}
    if p.segments:
        fields["q_ids"], fields["kv_ids"] = refs.pop(0), refs.pop(0)
        fields["q_ranges"] = tuple(refs.pop(0) for _ in range(3))
        fields["kv_ranges"] = tuple(refs.pop(0) for _ in range(3))
        fields["key_spans"] = tuple(refs.pop(0) for _ in range(3))
        fields["query_spans"] = tuple(refs.pop(0) for _ in range(3))
    if p.lengths:
        fields["lengths"] = refs.pop(0)
    return PackingRefs(**fields)


def walk_blocks(bounds: tuple[Any, Any, Any, Any], body, carry: Any, relation=None, whole: Any = None) -> Any:
    """Runs ``body(block, carry, masked)`` over the visited blocks ``[lo, hi)`` of ``bounds = (lo, interior_lo,
    interior_hi, hi)``, masked outside the interior.

    With ``relation(block) -> (some, every)`` (segment ids), a block where ``some`` is False is skipped, and
    an interior block is masked unless ``every`` holds; where ``whole`` (traced bool: every block of the
    range has ``every``) holds, the plain loops run instead, with no per-block test.
    """
    lo, interior_lo, interior_hi, hi = bounds
    masked, unmasked = functools.partial(body, masked=True), functools.partial(body, masked=False)

    def plain(carry):
        carry = lax.fori_loop(lo, interior_lo, masked, carry)
        carry = lax.fori_loop(interior_lo, interior_hi, unmasked, carry)
        return lax.fori_loop(interior_hi, hi, masked, carry)

    if relation is None:
        return plain(carry)

    def keep(block, carry):
        return carry

    def edge(block, carry):
        some, _ = relation(block)
        return lax.cond(some, masked, keep, block, carry)

    def interior(block, carry):
        _, every = relation(block)
        return lax.cond(every, unmasked, edge, block, carry)

    def tested(carry):
        carry = lax.fori_loop(lo, interior_lo, edge, carry)
        carry = lax.fori_loop(interior_lo, interior_hi, interior, carry)
        return lax.fori_loop(interior_hi, hi, edge, carry)

    return tested(carry) if whole is None else lax.cond(whole, plain, tested, carry)
