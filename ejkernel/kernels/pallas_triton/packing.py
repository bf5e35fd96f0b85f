"""Segment ids and key lengths in the Triton kernels: their operands, and the tile walk that skips, masks or
leaves unmasked each block (``docs/semantics.rst``, *Packed and variable-length sequences*).

Outside the kernels (XLA, O(S)): the query ids and the visible key ids (``segments.visible_kv_ids``: keys no
query may see are ``-1``), padded with ``-1``, and per pass the ``segments.block_ranges`` of both at that
pass's block sizes and their ``segments.block_spans`` both ways, plus ``kv_lengths``. Each loop over
blocks is cut to its block's span (``segments.narrow_to_span``), so the tiles of other documents of a
packed row are never visited: visiting them and skipping each by a check ran the packed row of 8
documents at 2.2x the time of the same documents as a batch on an H200. Inside the span one loop nest
runs, as without ids: where ``block_spans``' ``whole`` holds (every tile of the span lies in one
document) its interior tiles stay unmasked; elsewhere every tile of the span is masked element by element
by the ids (``walk_blocks``). There is no per-tile test: a second, tested loop nest beside the plain one
(chosen by ``whole``) ran the dK/dV kernel of that packed row 42% slower than the batch's on an H200
(``benchmarks/NOTES-triton.md``). The blocks a key length rules out never enter the loop range
(``masks.key_blocks``/``query_blocks`` end there).

Keys no query may see can hold NaN or Inf (uninitialised cache slots), and interior tiles hold none
(``key_ok``). A masked tile of the forward zeroes their V rows before ``P V`` (their logits are replaced by
``-inf``, so K needs nothing); one of dQ zeroes their K and V rows before its products, so that ``0 * NaN``
never happens; the dK/dV kernel zeroes its accumulators' rows of those keys at the end, the only rows a
NaN there reaches.
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

    ``q_ids [B, Sq_pad]``, ``kv_ids [B, Skv_pad]`` int32 (``-1`` padded); ``key_spans`` the ``(first, end, whole)``
    ``[B, n_q_blocks]`` of key blocks per query block (``segments.block_spans``), ``query_spans``
    ``[B, n_kv_blocks]`` the reverse;
    ``lengths [B]`` int32.
    """

    q_ids: Any = None
    kv_ids: Any = None
    key_spans: tuple[Any, Any, Any] | None = None
    query_spans: tuple[Any, Any, Any] | None = None
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
    """Each ``[block_k, D]`` tile (K, V or their gradients) with the rows of keys no query may see set to 0
    (unchanged for ``ok=None``)."""
    if ok is None:
        return tiles
    return tuple(jnp.where(ok[:, None], t, jnp.zeros((), t.dtype)) for t in tiles)


def packing_operands(p: Plan, c: PassBlocks, q_ids: Any, kv_ids: Any, lengths: Any, loop: str = "keys") -> list[Any]:
    """The kernel operands of one pass (in ``pop_packing_refs``' order), from the padded ids and lengths.

    ``loop`` says what the pass's kernel loops over: ``"keys"`` (forward, dQ: key blocks per query block,
    ``key_spans``) or ``"queries"`` (dK/dV, ``query_spans``); only that direction's spans are computed.
    """
    operands = []
    if p.segments:
        q_ranges, kv_ranges = segments.block_ranges(q_ids, c.block_q), segments.block_ranges(kv_ids, c.block_k)
        spans = segments.block_spans(q_ranges, kv_ranges) if loop == "keys" else segments.block_spans(kv_ranges, q_ranges)
        operands += [q_ids, kv_ids, *spans]
    if p.lengths:
        operands.append(lengths)
    return operands


def pop_packing_refs(p: Plan, refs: list, loop: str = "keys") -> PackingRefs:
    """Takes the packing refs off the front of ``refs`` (the order of ``packing_operands`` with ``loop``)."""
    if loop not in ("keys", "queries"):
        raise ValueError(f"loop must be 'keys' or 'queries', got {loop!r}")
    fields: dict[str, Any] = {}
    if p.segments:
        fields["q_ids"], fields["kv_ids"] = refs.pop(0), refs.pop(0)
        fields["key_spans" if loop == "keys" else "query_spans"] = tuple(refs.pop(0) for _ in range(3))
    if p.lengths:
        fields["lengths"] = refs.pop(0)
    return PackingRefs(**fields)


def walk_blocks(bounds: tuple[Any, Any, Any, Any], body, carry: Any, whole: Any = None) -> Any:
    """Runs ``body(block, carry, masked)`` over the visited blocks ``[lo, hi)`` of ``bounds = (lo, interior_lo,
    interior_hi, hi)``, masked outside the interior.

    ``whole`` (segment ids: a traced bool, every block of the range lies in one document with this one)
    keeps the interior unmasked; where it is False the interior is empty and every block is masked (by the
    ids as well as the positions). The bounds move, not the code: one loop nest either way.
    """
    lo, interior_lo, interior_hi, hi = bounds
    if whole is not None:
        interior_lo = jnp.where(whole, interior_lo, hi)
        interior_hi = jnp.where(whole, interior_hi, hi)
    carry = lax.fori_loop(lo, interior_lo, functools.partial(body, masked=True), carry)
    carry = lax.fori_loop(interior_lo, interior_hi, functools.partial(body, masked=False), carry)
    return lax.fori_loop(interior_hi, hi, functools.partial(body, masked=True), carry)
