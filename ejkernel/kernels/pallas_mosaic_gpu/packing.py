"""Segment ids and key lengths in the Mosaic-GPU kernels: their operands, and the block ranges they cut.

Outside the kernels (XLA, O(S)), from the padded query ids and the visible key ids (``segments.visible_kv_ids``:
``-1`` for every key no query may see, padding included) of ``Operands``:

- the keys no query may see are zeroed in K and V (``segments.zero_invisible_for_kernels``, by the interface): a
  masked tile still multiplies its probabilities of 0 by V, and ``0 * NaN`` would reach the output. The
  kernels' dK and dV rows of those keys are exactly 0 already, so the zeroing passes its cotangent through;
- per kernel, the ``segments.block_spans`` of the blocks it walks, at two granularities: the CTA's (the
  producer streams the CTA's span) and each consumer's (``CONSUMERS`` per CTA), the latter with its
  ``whole`` flag.

Inside (``Refs``): a kernel reads its row's key length and its spans as scalars; each loop range is cut
to its span (``segments.narrow_to_span``), so a packed row never streams the tiles of its other documents;
a consumer whose span is not ``whole`` masks every tile of it by the ids (its interior is emptied,
``interior_unless_whole``). The ids themselves reach the masked tiles through shared memory (a consumer's
own rows once, the streamed side's ids in a ring beside its tiles); ``tiles.mask_tile`` compares them by
``masks.valid_pairs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.ops.attention import segments

__all__ = ["Operands", "NO_PACKING", "Refs", "span_operands", "split_refs", "interior_unless_whole"]

CONSUMERS = 2


@dataclasses.dataclass(frozen=True)
class Operands:
    """The padded packing arrays of one call: ``q_ids [B, Sq_pad]`` and visible ``kv_ids [B, Skv_pad]``
    int32 (``-1`` padded; ``None`` without segment ids), ``lengths [B]`` int32 (``None`` without)."""

    q_ids: Any = None
    kv_ids: Any = None
    lengths: Any = None


#: A call without segment ids or key lengths.
NO_PACKING = Operands()


def span_operands(p: Plan, ops: Operands, rows: str, own_rows: int, block_other: int) -> list[Any]:
    """One kernel's packing operands, in ``split_refs``' order: ``lengths`` (with key lengths), then (with
    segment ids) ``rows_ids``, ``other_ids``, the CTA spans ``(first, end)`` and the consumers' spans
    ``(first, end, whole)``, each ``[B, n]`` int32.

    ``rows`` is the side a CTA keeps (``"q"``: forward and dQ, walking key blocks; ``"kv"``: dK/dV,
    walking query blocks), ``own_rows`` a consumer's rows of it, ``block_other`` the streamed blocks.
    """
    operands = []
    if p.lengths:
        operands.append(ops.lengths)
    if p.segments:
        kept, streamed = (ops.q_ids, ops.kv_ids) if rows == "q" else (ops.kv_ids, ops.q_ids)
        other = segments.block_ranges(streamed, block_other)
        cta = segments.block_spans(segments.block_ranges(kept, CONSUMERS * own_rows), other)
        own = segments.block_spans(segments.block_ranges(kept, own_rows), other)
        operands += [kept, streamed, cta[0], cta[1], *own]
    return operands


@dataclasses.dataclass(frozen=True)
class Refs:
    """A kernel's packing refs (``span_operands``' order); all ``None`` for a call without packing."""

    lengths: Any = None
    rows_ids: Any = None
    other_ids: Any = None
    cta_spans: tuple[Any, Any] | None = None
    own_spans: tuple[Any, Any, Any] | None = None

    def length(self, b: Any) -> Any:
        """Row ``b``'s key length (``None`` without key lengths)."""
        return None if self.lengths is None else self.lengths[b]

    def cut_cta(self, bounds: tuple[Any, Any, Any, Any], b: Any, cta: Any) -> tuple[Any, Any, Any, Any]:
        """The CTA's block range cut to its span (unchanged without segment ids)."""
        if self.cta_spans is None:
            return bounds
        first, end = (x[b, cta] for x in self.cta_spans)
        return segments.narrow_to_span(bounds, first, end)

    def cut_own(self, bounds: tuple[Any, Any, Any, Any], b: Any, own: Any) -> tuple[Any, Any, Any, Any]:
        """A consumer's block range cut to its span, its interior emptied unless the span is ``whole``."""
        if self.own_spans is None:
            return bounds
        first, end, whole = (x[b, own] for x in self.own_spans)
        return interior_unless_whole(segments.narrow_to_span(bounds, first, end), whole != 0)


def interior_unless_whole(bounds: tuple[Any, Any, Any, Any], whole: Any) -> tuple[Any, Any, Any, Any]:
    """``(lo, interior_lo, interior_hi, hi)`` with an empty interior at ``hi`` where ``whole`` is False:
    every block of the range is then masked (by the ids too). The bounds move, not the code."""
    lo, interior_lo, interior_hi, hi = bounds
    return lo, jnp.where(whole, interior_lo, hi), jnp.where(whole, interior_hi, hi), hi


def split_refs(p: Plan, refs: list) -> Refs:
    """Takes the packing refs off the front of ``refs`` (``span_operands``' order)."""
    fields: dict[str, Any] = {}
    if p.lengths:
        fields["lengths"] = refs.pop(0)
    if p.segments:
        fields["rows_ids"], fields["other_ids"] = refs.pop(0), refs.pop(0)
        fields["cta_spans"] = (refs.pop(0), refs.pop(0))
        fields["own_spans"] = (refs.pop(0), refs.pop(0), refs.pop(0))
    return Refs(**fields)
