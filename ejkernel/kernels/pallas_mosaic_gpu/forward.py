"""The forward kernel: warp-specialised flash attention for Hopper (one CTA per 128 query rows of a head).

Operands are whole arrays padded by ``flash``: ``q [B, Sq, Hq, D]``, ``k``/``v [B, Skv, Hkv, D]``.
Outputs: ``out [B, Sq, Hq, D]`` and ``lse [B, Hq, Sq]``, the natural-log log-sum-exp, both from
``merge.normalize_rows`` (a row with no allowed key has ``out = 0`` and ``lse = -inf``).

Each CTA runs three warpgroups:

- warpgroup 2, the producer, gives up registers and streams the CTA's key blocks (``tiles.key_blocks``
  of its ``2 * block_q`` rows) of K and V by TMA into a ring of ``stages`` shared-memory slots; slot
  ``s`` has a ``ready`` barrier per operand (the TMA completes it) and a ``free`` one (both consumers
  arrive when done reading);
- warpgroups 0 and 1, the consumers, each own ``block_q`` query rows. Each walks every block of the CTA's
  range in order, so that it waits and arrives on every slot once (the barriers' phases stay in step),
  and computes only its own rows' blocks: masked element by element at the edges (``tiles.mask_tile``),
  unmasked inside, passed over outside. S = Q·Kᵀ and O += P·V are wgmmas into float32 accumulators
  (``compat``), the online softmax is float32 in base 2.
- a schedule barrier alternates the consumers: one issues its wgmmas while the other does its softmax.

Under a causal mask the grid's CTAs take their query blocks last first (``tiles.heavy_first``,
``ForwardBlocks.heavy_first``), so the CTAs with the most keys start first.

GQA reads K/V head ``h // group`` (``layouts.kv_head``); nothing is repeated. With key lengths the ranges
end at the row's length; with segment ids they are cut to the CTA's and each consumer's spans, and the
producer streams each key block's ids beside K into a ring of their own (``packing``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ejkernel.kernels.pallas_mosaic_gpu import packing
from ejkernel.kernels.pallas_mosaic_gpu.blocks import ForwardBlocks
from ejkernel.kernels.pallas_mosaic_gpu.compat import (
    accumulate_pv,
    interpret_params,
    load_vector,
    named,
    scores,
    with_layout,
)
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.kernels.pallas_mosaic_gpu.tiles import NEG_INIT, heavy_first, i32, key_blocks, mask_tile, nested_in, rows
from ejkernel.ops.attention.layouts import kv_head
from ejkernel.ops.attention.logits import tanh_from_exp2, transform_logits
from ejkernel.ops.attention.merge import normalize_rows

__all__ = ["forward_call"]

CONSUMERS = 2
# Registers per thread after reallocation (jax's Hopper attention uses the same split): the consumers hold
# the accumulators, the producer only issues copies.
CONSUMER_REGISTERS = 232
PRODUCER_REGISTERS = 40


def _work_item(p: Plan, q_blocks: int, w: Any) -> tuple[Any, Any, Any]:
    """``(batch, head, query block)`` of work item ``w`` in the grid's order: heads fastest, then query
    blocks, then batch."""
    h = lax.rem(w, i32(p.num_q_heads))
    rest = lax.div(w, i32(p.num_q_heads))
    return lax.div(rest, i32(q_blocks)), h, lax.rem(rest, i32(q_blocks))


def _for_each_item(p: Plan, c: ForwardBlocks, body: Callable[[Any, Any, Any, Any], Any]) -> Any:
    """Runs ``body(batch, head, query block, step)`` for each work item of this CTA, threading ``step`` (the
    ring steps taken so far) through; returns the last one. One item a CTA on a grid over the items; with
    ``c.persistent_ctas``, CTA ``i`` takes items ``i, i + n, i + 2n, ...`` of the ``n`` CTAs."""
    q_blocks = p.q_len_pad // c.q_multiple
    if not c.persistent_ctas:
        b, h, qb = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("q_seq")
        return body(b, h, qb, i32(0))
    total, stride = p.batch * p.num_q_heads * q_blocks, c.persistent_ctas
    first = lax.axis_index("cta")
    count = lax.div(i32(total + stride - 1) - first, i32(stride))

    def one(t, step):
        b, h, qb = _work_item(p, q_blocks, first + t * stride)
        return body(b, h, qb, step)

    return lax.fori_loop(i32(0), count, one, i32(0))


def _kernel(q_ref, k_ref, v_ref, pk, o_ref, lse_ref, scoped, *, p: Plan, c: ForwardBlocks):
    (q_smem2, k_smem, v_smem, lse_smem2), (k_ready, v_ready, q_ready), (k_free, v_free), schedule_bar, ids = scoped
    bq, bk, stages = c.block_q, c.block_k, c.stages
    wg = lax.axis_index("wg")
    q_blocks = p.q_len_pad // c.q_multiple

    def item_range(b, qb):
        """The item's CTA index (its query block, heavy first), first row, row length and key blocks."""
        cta_index = heavy_first(p, qb, q_blocks, c.heavy_first)
        cta_first = cta_index * (CONSUMERS * bq)
        length = pk.length(b)
        return cta_index, cta_first, length, pk.cut_cta(key_blocks(p, cta_first, CONSUMERS * bq, bk, length), b, cta_index)

    def schedule():
        if c.schedule_barrier:
            plgpu.barrier_arrive(schedule_bar)
            plgpu.barrier_wait(schedule_bar)

    @pl.when(wg < CONSUMERS)
    def _consumer():
        if not p.interpret:
            plgpu.set_max_registers(CONSUMER_REGISTERS, action="increase")
        q_smem, lse_smem = q_smem2.at[wg], lse_smem2.at[wg]

        def item(b, h, qb, step):
            cta_index, cta_first, length, cta = item_range(b, qb)
            lo, hi = cta[0], cta[3]

            def slot_of(kb):
                return lax.rem(step + kb - lo, i32(stages))

            q_first = cta_first + wg * bq
            if c.persistent_ctas:  # the previous item's output and lse have left q_smem and lse_smem
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_first, bq), h], q_smem, q_ready.at[wg])
            q_ids = None
            if p.segments:
                (q_ids_smem2, _), (q_ids_ready, _) = ids
                plgpu.copy_gmem_to_smem(pk.rows_ids.at[b, pl.ds(q_first, bq)], q_ids_smem2.at[wg], q_ids_ready.at[wg])
                plgpu.barrier_wait(q_ids_ready.at[wg])
                q_ids = load_vector(q_ids_smem2.at[wg], 1, p.interpret)
            plgpu.barrier_wait(q_ready.at[wg])
            own = pk.cut_own(key_blocks(p, q_first, bq, bk, length), b, CONSUMERS * cta_index + wg)
            own_lo, interior_lo, interior_hi, own_hi = nested_in(cta, own)

            def step_fn(kb, carry, mode: str):
                slot = slot_of(kb)
                plgpu.barrier_wait(k_ready.at[slot])
                kv_ids = None
                if p.segments:
                    (_, kv_ids_ring), (_, kv_ids_ready) = ids
                    plgpu.barrier_wait(kv_ids_ready.at[slot])
                    if mode == "masked":  # read before the slot is freed
                        kv_ids = load_vector(kv_ids_ring.at[slot], 0, p.interpret)
                if mode == "pass":  # not this warpgroup's block: let the slot go, keep the schedule in step
                    plgpu.barrier_wait(v_ready.at[slot])
                    plgpu.barrier_arrive(k_free.at[slot])
                    plgpu.barrier_arrive(v_free.at[slot])
                    schedule()
                    schedule()
                    return carry
                acc, m, denom = carry
                s = scores(q_smem, k_smem.at[slot], p.interpret, after_issue=schedule)
                plgpu.barrier_arrive(k_free.at[slot])
                s2, _ = transform_logits(s, p.softmax_scale, p.logits_soft_cap, base2=True, tanh=tanh_from_exp2)
                if mode == "masked":
                    s2 = mask_tile(p, s2, q_first, kb * bk, length, q_ids, kv_ids)
                m_new = jnp.maximum(m, s2.max(axis=1))
                alpha = jnp.exp2(m - m_new)
                prob = jnp.exp2(s2 - rows(m_new, s2.shape))
                acc = acc * rows(alpha, acc.shape)
                denom = denom * alpha + prob.sum(axis=1)
                prob = prob.astype(q_smem.dtype)
                if c.schedule_barrier:
                    plgpu.barrier_arrive(schedule_bar)  # softmax done
                plgpu.barrier_wait(v_ready.at[slot])
                if c.schedule_barrier:
                    plgpu.barrier_wait(schedule_bar)  # the other consumer's wgmmas are issued
                acc = accumulate_pv(acc, prob, v_smem.at[slot], p.interpret)
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, denom

            row_layout = plgpu.Layout.WGMMA.reduce(1)
            carry = (
                with_layout(jnp.zeros((bq, p.head_dim), jnp.float32), plgpu.Layout.WGMMA, p.interpret),
                with_layout(jnp.full((bq,), NEG_INIT, jnp.float32), row_layout, p.interpret),
                with_layout(jnp.zeros((bq,), jnp.float32), row_layout, p.interpret),
            )
            pl.when(wg == 1)(schedule)
            for start, stop, mode in (
                (lo, own_lo, "pass"),
                (own_lo, interior_lo, "masked"),
                (interior_lo, interior_hi, "interior"),
                (interior_hi, own_hi, "masked"),
                (own_hi, hi, "pass"),
            ):
                carry = lax.fori_loop(start, stop, functools.partial(step_fn, mode=mode), carry)
            pl.when(wg == 0)(schedule)

            acc, m, denom = carry
            # m is in base 2: m * ln 2 is the natural-log max, so lse comes out in natural log.
            out, lse = normalize_rows(acc, m * math.log(2.0), denom, broadcast=rows)
            q_smem[...] = out.astype(q_smem.dtype)
            lse_smem[...] = lse
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_smem, o_ref.at[b, pl.ds(q_first, bq), h])
            plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, pl.ds(q_first, bq)])
            return step + (hi - lo)

        _for_each_item(p, c, item)
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == CONSUMERS)
    def _producer():
        if not p.interpret:
            plgpu.set_max_registers(PRODUCER_REGISTERS, action="decrease")

        def item(b, h, qb, step):
            _, _, _, cta = item_range(b, qb)
            lo, hi = cta[0], cta[3]
            hkv = kv_head(h, p.group)

            def load(kb, wait_free):
                t = step + kb - lo  # the ring step: slot t % stages, free once the step t - stages is done
                slot = lax.rem(t, i32(stages))
                keys = (b, pl.ds(kb * bk, bk), hkv)
                when(wait_free(t), lambda: plgpu.barrier_wait(k_free.at[slot]))
                plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem.at[slot], k_ready.at[slot])
                if p.segments:  # the key ids share K's slot and its free barrier
                    (_, kv_ids_ring), (_, kv_ids_ready) = ids
                    plgpu.copy_gmem_to_smem(pk.other_ids.at[b, pl.ds(kb * bk, bk)], kv_ids_ring.at[slot],
                                            kv_ids_ready.at[slot])
                when(wait_free(t), lambda: plgpu.barrier_wait(v_free.at[slot]))
                plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem.at[slot], v_ready.at[slot])

            if c.persistent_ctas:  # one loop: a slot is fresh only in the CTA's first `stages` steps
                lax.fori_loop(lo, hi, lambda kb, carry: (load(kb, lambda t: t >= stages), carry)[1], None)
            else:
                for i in range(stages):  # fill the ring
                    pl.when(lo + i < hi)(functools.partial(load, lo + i, lambda t: False))
                lax.fori_loop(lo + stages, jnp.maximum(hi, lo + stages),
                              lambda kb, carry: (load(kb, lambda t: True), carry)[1], None)
            return step + (hi - lo)

        steps = _for_each_item(p, c, item)

        def drain(t, carry):  # every phase of a barrier is observed (the interpreter checks it)
            plgpu.barrier_wait(k_free.at[lax.rem(t, i32(stages))])
            plgpu.barrier_wait(v_free.at[lax.rem(t, i32(stages))])
            return carry

        lax.fori_loop(jnp.maximum(steps - stages, 0), steps, drain, None)


def when(condition: Any, fn: Callable[[], Any]) -> None:
    """``fn()`` if ``condition`` holds: at trace time for a Python bool, in the kernel for a traced one."""
    if isinstance(condition, bool):
        if condition:
            fn()
    else:
        pl.when(condition)(fn)


def _entry(*refs, p: Plan, c: ForwardBlocks):
    refs = list(refs)
    q_ref, k_ref, v_ref = refs[:3]
    o_ref, lse_ref = refs[-2:]
    pk = packing.split_refs(p, refs[3:-2])
    dtype = q_ref.dtype
    swizzle = 128  # bytes: one row of a tile is 64 two-byte elements
    transforms = (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))
    d = p.head_dim
    ids = ()
    if p.segments:  # the consumers' query ids, a ring of key ids; their ready barriers
        ids = (
            (plgpu.SMEM((CONSUMERS, c.block_q), jnp.int32), plgpu.SMEM((c.stages, c.block_k), jnp.int32)),
            (plgpu.Barrier(num_barriers=CONSUMERS), plgpu.Barrier(num_barriers=c.stages)),
        )
    pl.run_scoped(
        lambda *scoped: _kernel(q_ref, k_ref, v_ref, pk, o_ref, lse_ref, scoped, p=p, c=c),
        (
            plgpu.SMEM((CONSUMERS, c.block_q, d), dtype, transforms=transforms),
            plgpu.SMEM((c.stages, c.block_k, d), dtype, transforms=transforms),
            plgpu.SMEM((c.stages, c.block_k, d), dtype, transforms=transforms),
            plgpu.SMEM((CONSUMERS, c.block_q), jnp.float32),
        ),
        (
            plgpu.Barrier(num_barriers=c.stages),
            plgpu.Barrier(num_barriers=c.stages),
            plgpu.Barrier(num_barriers=CONSUMERS),
        ),
        (plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=c.stages),) * 2,
        plgpu.Barrier(num_arrivals=CONSUMERS),
        ids,
        collective_axes="wg",
    )


def forward_call(p: Plan, c: ForwardBlocks, q, k, v, ops: packing.Operands = packing.NO_PACKING):
    """``(out [B, Sq_pad, Hq, D], lse [B, Hq, Sq_pad] float32, natural log)`` for padded operands; ``ops``
    the packing arrays (``packing.Operands``; K and V already zeroed where no query may look)."""
    out_type = (
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct((p.batch, p.num_q_heads, p.q_len_pad), jnp.float32),
    )
    if c.persistent_ctas:
        grid, grid_names = (c.persistent_ctas,), ("cta",)
    else:
        grid, grid_names = (p.num_q_heads, p.q_len_pad // c.q_multiple, p.batch), ("heads", "q_seq", "batch")
    kernel = plgpu.kernel(
        named(functools.partial(_entry, p=p, c=c), "ejk_mgpu_fwd"),
        out_type=out_type,
        grid=grid,
        grid_names=grid_names,
        num_threads=CONSUMERS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret_params(p.interpret),
    )
    return kernel(q, k, v, *packing.span_operands(p, ops, "q", c.block_q, c.block_k))
