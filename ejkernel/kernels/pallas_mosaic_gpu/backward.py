"""The native backward: a dK/dV kernel and a dQ kernel for Hopper, deterministic (no atomics).

``backward_call(p, c, residuals, cotangents)`` returns ``(dq, dk, dv)`` of the padded operands from the
forward's padded ``q, k, v``, its output and natural-log ``lse [B, Hq, Sq_pad]``. XLA prepares, as the
Triton backward does: ``delta = rowsum(dO ∘ O)`` (shifted by ``-d_lse`` where a cotangent reaches the lse)
and ``lse2``, the base-2 lse in ``merge.recompute_lse``'s form (``+inf`` for an empty or padded row, so
``P = exp2(S·scale·log2e − lse2)`` is 0 there with no select).

Both kernels are laid out as the forward: two consumer warpgroups of ``blocks.OWNED_ROWS`` kept rows each
and a producer warpgroup streaming the other side's tiles by TMA into a ring of shared-memory slots, a
*ready* barrier per operand and slot (completed by the copy) and one *free* barrier per slot (both
consumers arrive). Each consumer walks every tile the CTA streams, in order, so that it observes every
barrier phase, and computes only its own rows' tiles: masked at the edges, unmasked inside, passed over
outside (the shared ``masks.key_blocks`` / ``masks.query_blocks`` through ``tiles``, exactly the pairs the
forward visits).

- dK/dV: a CTA keeps ``2 * 64`` keys of one kv head; for every query head of its group (GQA: the sum over
  the group is this loop, in order, so K/V are never repeated and no atomics are needed) and every query
  tile that sees its keys, it recomputes ``Sᵀ = K·Qᵀ``, ``Pᵀ``, then ``dV += Pᵀ·dO``, ``dPᵀ = V·dOᵀ``,
  ``dSᵀ = Pᵀ ∘ (dPᵀ − delta)``, ``dK += dSᵀ·Q``;
- dQ: a CTA keeps ``2 * 64`` query rows of one head and streams the key tiles they see: ``S = Q·Kᵀ``,
  ``P``, ``dP = dO·Vᵀ``, ``dS = P ∘ (dP − delta)``, ``dQ += dS·K``; under a causal mask its CTAs take
  their query blocks last first, as the forward's (``BackwardBlocks.dq_heavy_first``).

With a soft cap, the logits are ``logits.transform_logits``' (the forward's, ``tanh_from_exp2``) and dS is
taken through the cap by ``logits.cap_gradient``. Every product is a wgmma with a float32 accumulator
(``compat``). The dS products take dS in the operand dtype (``accumulate_score_gradient``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ejkernel.kernels.pallas_mosaic_gpu import packing
from ejkernel.kernels.pallas_mosaic_gpu.blocks import OWNED_ROWS, BackwardBlocks
from ejkernel.kernels.pallas_mosaic_gpu.compat import (
    accumulate_pv,
    interpret_params,
    load_vector,
    named,
    scores,
    with_layout,
)
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.kernels.pallas_mosaic_gpu.tiles import (
    columns,
    heavy_first,
    i32,
    key_blocks,
    mask_tile,
    mask_tile_transposed,
    nested_in,
    query_blocks,
    rows,
)
from ejkernel.ops.attention.layouts import kv_head
from ejkernel.ops.attention.logits import LOG2E, cap_gradient, tanh_from_exp2, transform_logits
from ejkernel.ops.attention.merge import recompute_lse

__all__ = ["backward_call", "accumulate_score_gradient", "FLOAT16_ROW_LIMIT"]

CONSUMERS = 2
CONSUMER_REGISTERS = 232
PRODUCER_REGISTERS = 40
#: The largest |dS| a float16 operand row keeps unscaled (half of float16's largest value, 65504).
FLOAT16_ROW_LIMIT = 32768.0
SWIZZLE = 128  # bytes: one row of a tile is 64 two-byte elements


def accumulate_score_gradient(acc, ds, b_smem, interpret: bool):
    """``acc + dS·B`` (``B`` a shared tile): dS's products (dS·K, dSᵀ·Q), dS a float32 tile in registers.

    bfloat16 takes dS in bfloat16 (float32's range). float16 cannot take float32 operands here as
    ``precision.score_gradient_dtype`` asks: wgmma's float32 (tf32) operands cannot come from registers
    or be the transposed shared tiles these products read. So a row of dS whose largest magnitude passes
    ``FLOAT16_ROW_LIMIT`` is scaled into float16's range by ``f = limit / peak`` and the accumulator row
    with it (``acc·f + (dS·f)·B``, then ``/ f``): float16's 11 significant bits (tf32 keeps 11 too) with
    float32's range. A row within the limit has ``f = 1`` exactly, an unscaled float16 cast.
    """
    dtype = b_smem.dtype
    if dtype != jnp.float16:
        return accumulate_pv(acc, ds.astype(dtype), b_smem, interpret)
    peak = jnp.maximum(ds.max(axis=1), (-ds).max(axis=1))
    over = peak > FLOAT16_ROW_LIMIT
    shrink = jnp.where(over, FLOAT16_ROW_LIMIT / peak, 1.0)
    grow = jnp.where(over, peak / FLOAT16_ROW_LIMIT, 1.0)
    acc = accumulate_pv(acc * rows(shrink, acc.shape), (ds * rows(shrink, ds.shape)).astype(dtype), b_smem, interpret)
    return acc * rows(grow, acc.shape)


def _logits(p: Plan, products):
    """The base-2 logits of a tile of products and the cap's tanh (``None`` without a cap), as the forward."""
    return transform_logits(products, p.softmax_scale, p.logits_soft_cap, base2=True, tanh=tanh_from_exp2)


def _walk(outer, inner):
    """The ``(start, stop, mode)`` segments of a consumer's walk over its CTA's tiles ``outer``: its own
    ``inner`` ones (``nested_in``) masked at the edges, interior inside, the rest passed over."""
    lo, hi = outer[0], outer[3]
    own_lo, interior_lo, interior_hi, own_hi = nested_in(outer, inner)
    return (
        (lo, own_lo, "pass"),
        (own_lo, interior_lo, "masked"),
        (interior_lo, interior_hi, "interior"),
        (interior_hi, own_hi, "masked"),
        (own_hi, hi, "pass"),
    )


def _fill_and_drain(total, stages: int, load, wait_free):
    """The producer's schedule over ``total`` streamed tiles: fill the ring, refill each slot once freed,
    then observe the last frees (the interpreter checks every barrier phase is observed)."""
    for i in range(stages):
        pl.when(i < total)(functools.partial(load, i32(i)))

    def refill(t, carry):
        wait_free(t)
        load(t)
        return carry

    lax.fori_loop(i32(stages), jnp.maximum(total, stages), refill, None)

    def drain(t, carry):
        wait_free(t)
        return carry

    lax.fori_loop(jnp.maximum(total - stages, 0), total, drain, None)


def _dkv_kernel(q_ref, k_ref, v_ref, pk, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, scoped, *, p: Plan,
                c: BackwardBlocks):
    (k_own2, v_own2, q_ring, do_ring, lse_ring, delta_ring), ready, (k_ready, v_ready), free, ids = scoped
    bk, bq, stages = OWNED_ROWS, c.dkv_block_q, c.dkv_stages
    b, hkv, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    cta_index = lax.axis_index("kv_seq")
    cta_first = cta_index * (CONSUMERS * bk)
    length = pk.length(b)
    cta = pk.cut_cta(query_blocks(p, cta_first, CONSUMERS * bk, bq, length), b, cta_index)
    lo, tiles_per_head = cta[0], cta[3] - cta[0]

    def slot_of(t):
        return lax.rem(t, i32(stages))

    @pl.when(wg < CONSUMERS)
    def _consumer():
        if not p.interpret:
            plgpu.set_max_registers(CONSUMER_REGISTERS, action="increase")
        k_own, v_own = k_own2.at[wg], v_own2.at[wg]
        k_first = cta_first + wg * bk
        plgpu.copy_gmem_to_smem(k_ref.at[b, pl.ds(k_first, bk), hkv], k_own, k_ready.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[b, pl.ds(k_first, bk), hkv], v_own, v_ready.at[wg])
        kv_ids = None
        if p.segments:
            (kv_ids_own2, _), (kv_ids_ready, _) = ids
            plgpu.copy_gmem_to_smem(pk.rows_ids.at[b, pl.ds(k_first, bk)], kv_ids_own2.at[wg], kv_ids_ready.at[wg])
            plgpu.barrier_wait(kv_ids_ready.at[wg])
            kv_ids = load_vector(kv_ids_own2.at[wg], 1, p.interpret)
        plgpu.barrier_wait(k_ready.at[wg])
        plgpu.barrier_wait(v_ready.at[wg])

        def step(qb, carry, g, mode: str):
            slot = slot_of(g * tiles_per_head + (qb - lo))
            for barrier in ready:
                plgpu.barrier_wait(barrier.at[slot])
            q_ids = None
            if p.segments:
                (_, q_ids_ring), (_, q_ids_ready) = ids
                plgpu.barrier_wait(q_ids_ready.at[slot])
                if mode == "masked":
                    q_ids = load_vector(q_ids_ring.at[slot], 0, p.interpret)
            if mode == "pass":
                plgpu.barrier_arrive(free.at[slot])
                return carry
            dk, dv = carry
            q_tile, do_tile = q_ring.at[slot], do_ring.at[slot]
            s2t, tanh = _logits(p, scores(k_own, q_tile, p.interpret))
            if mode == "masked":
                s2t = mask_tile_transposed(p, s2t, k_first, qb * bq, length, kv_ids, q_ids)
            lse2 = load_vector(lse_ring.at[slot], 0, p.interpret)
            pt = jnp.exp2(s2t - columns(lse2, s2t.shape))
            dv = accumulate_pv(dv, pt.astype(do_tile.dtype), do_tile, p.interpret)
            dpt = scores(v_own, do_tile, p.interpret)
            delta = load_vector(delta_ring.at[slot], 0, p.interpret)
            dst = cap_gradient(pt * (dpt - columns(delta, dpt.shape)), tanh)
            dk = accumulate_score_gradient(dk, dst, q_tile, p.interpret)
            plgpu.barrier_arrive(free.at[slot])
            return dk, dv

        own = pk.cut_own(query_blocks(p, k_first, bk, bq, length), b, CONSUMERS * cta_index + wg)
        walk = _walk(cta, own)

        def head(g, carry):
            for start, stop, mode in walk:
                carry = lax.fori_loop(start, stop, functools.partial(step, g=g, mode=mode), carry)
            return carry

        zeros = with_layout(jnp.zeros((bk, p.head_dim), jnp.float32), plgpu.Layout.WGMMA, p.interpret)
        dk, dv = lax.fori_loop(i32(0), i32(p.group), head, (zeros, zeros))
        k_own[...] = (dk * p.softmax_scale).astype(k_own.dtype)
        v_own[...] = dv.astype(v_own.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_own, dk_ref.at[b, pl.ds(k_first, bk), hkv])
        plgpu.copy_smem_to_gmem(v_own, dv_ref.at[b, pl.ds(k_first, bk), hkv])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == CONSUMERS)
    def _producer():
        if not p.interpret:
            plgpu.set_max_registers(PRODUCER_REGISTERS, action="decrease")
        per_head = jnp.maximum(tiles_per_head, 1)  # no division by 0 when the CTA sees no query

        def load(t):
            slot = slot_of(t)
            h = hkv * p.group + lax.div(t, per_head)  # query heads of the group in order
            q_first = (lo + lax.rem(t, per_head)) * bq
            tile = (b, pl.ds(q_first, bq), h)
            plgpu.copy_gmem_to_smem(q_ref.at[tile], q_ring.at[slot], ready[0].at[slot])
            plgpu.copy_gmem_to_smem(do_ref.at[tile], do_ring.at[slot], ready[1].at[slot])
            plgpu.copy_gmem_to_smem(lse_ref.at[b, h, pl.ds(q_first, bq)], lse_ring.at[slot], ready[2].at[slot])
            plgpu.copy_gmem_to_smem(delta_ref.at[b, h, pl.ds(q_first, bq)], delta_ring.at[slot], ready[3].at[slot])
            if p.segments:
                (_, q_ids_ring), (_, q_ids_ready) = ids
                plgpu.copy_gmem_to_smem(pk.other_ids.at[b, pl.ds(q_first, bq)], q_ids_ring.at[slot], q_ids_ready.at[slot])

        def wait_free(t):
            plgpu.barrier_wait(free.at[slot_of(t)])

        _fill_and_drain(p.group * tiles_per_head, stages, load, wait_free)


def _dq_kernel(q_ref, k_ref, v_ref, pk, do_ref, lse_ref, delta_ref, dq_ref, scoped, *, p: Plan, c: BackwardBlocks):
    (q_own2, do_own2, lse_own2, delta_own2, k_ring, v_ring), own_ready, (k_ready, v_ready), free, ids = scoped
    bq, bk, stages = OWNED_ROWS, c.dq_block_k, c.dq_stages
    b, h, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    cta_index = heavy_first(p, lax.axis_index("q_seq"), p.q_len_pad // (CONSUMERS * bq), c.dq_heavy_first)
    cta_first = cta_index * (CONSUMERS * bq)
    length = pk.length(b)
    cta = pk.cut_cta(key_blocks(p, cta_first, CONSUMERS * bq, bk, length), b, cta_index)
    lo, hi = cta[0], cta[3]

    def slot_of(t):
        return lax.rem(t, i32(stages))

    @pl.when(wg < CONSUMERS)
    def _consumer():
        if not p.interpret:
            plgpu.set_max_registers(CONSUMER_REGISTERS, action="increase")
        q_own, do_own = q_own2.at[wg], do_own2.at[wg]
        q_first = cta_first + wg * bq
        own_rows = (b, pl.ds(q_first, bq), h)
        for src, dst, barrier in (
            (q_ref.at[own_rows], q_own, own_ready[0]),
            (do_ref.at[own_rows], do_own, own_ready[1]),
            (lse_ref.at[b, h, pl.ds(q_first, bq)], lse_own2.at[wg], own_ready[2]),
            (delta_ref.at[b, h, pl.ds(q_first, bq)], delta_own2.at[wg], own_ready[3]),
        ):
            plgpu.copy_gmem_to_smem(src, dst, barrier.at[wg])
        q_ids = None
        if p.segments:  # issued with the other copies: its latency overlaps theirs
            (q_ids_own2, _), (q_ids_ready, _) = ids
            plgpu.copy_gmem_to_smem(pk.rows_ids.at[b, pl.ds(q_first, bq)], q_ids_own2.at[wg], q_ids_ready.at[wg])
        for barrier in own_ready:
            plgpu.barrier_wait(barrier.at[wg])
        lse2 = load_vector(lse_own2.at[wg], 1, p.interpret)
        delta = load_vector(delta_own2.at[wg], 1, p.interpret)
        if p.segments:
            plgpu.barrier_wait(q_ids_ready.at[wg])
            q_ids = load_vector(q_ids_own2.at[wg], 1, p.interpret)

        def step(kb, dq, mode: str):
            slot = slot_of(kb - lo)
            plgpu.barrier_wait(k_ready.at[slot])
            plgpu.barrier_wait(v_ready.at[slot])
            kv_ids = None
            if p.segments:
                (_, kv_ids_ring), (_, kv_ids_ready) = ids
                plgpu.barrier_wait(kv_ids_ready.at[slot])
                if mode == "masked":
                    kv_ids = load_vector(kv_ids_ring.at[slot], 0, p.interpret)
            if mode == "pass":
                plgpu.barrier_arrive(free.at[slot])
                return dq
            k_tile, v_tile = k_ring.at[slot], v_ring.at[slot]
            s2, tanh = _logits(p, scores(q_own, k_tile, p.interpret))
            if mode == "masked":
                s2 = mask_tile(p, s2, q_first, kb * bk, length, q_ids, kv_ids)
            prob = jnp.exp2(s2 - rows(lse2, s2.shape))
            dp = scores(do_own, v_tile, p.interpret)
            ds = cap_gradient(prob * (dp - rows(delta, dp.shape)), tanh)
            dq = accumulate_score_gradient(dq, ds, k_tile, p.interpret)
            plgpu.barrier_arrive(free.at[slot])
            return dq

        dq = with_layout(jnp.zeros((bq, p.head_dim), jnp.float32), plgpu.Layout.WGMMA, p.interpret)
        own = pk.cut_own(key_blocks(p, q_first, bq, bk, length), b, CONSUMERS * cta_index + wg)
        for start, stop, mode in _walk(cta, own):
            dq = lax.fori_loop(start, stop, functools.partial(step, mode=mode), dq)
        q_own[...] = (dq * p.softmax_scale).astype(q_own.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_own, dq_ref.at[own_rows])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == CONSUMERS)
    def _producer():
        if not p.interpret:
            plgpu.set_max_registers(PRODUCER_REGISTERS, action="decrease")

        def load(t):
            slot = slot_of(t)
            tile = (b, pl.ds((lo + t) * bk, bk), kv_head(h, p.group))
            plgpu.copy_gmem_to_smem(k_ref.at[tile], k_ring.at[slot], k_ready.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[tile], v_ring.at[slot], v_ready.at[slot])
            if p.segments:
                (_, kv_ids_ring), (_, kv_ids_ready) = ids
                plgpu.copy_gmem_to_smem(pk.other_ids.at[b, pl.ds((lo + t) * bk, bk)], kv_ids_ring.at[slot],
                                        kv_ids_ready.at[slot])

        def wait_free(t):
            plgpu.barrier_wait(free.at[slot_of(t)])

        _fill_and_drain(hi - lo, stages, load, wait_free)


def _tile(shape, dtype):
    """A shared-memory tile (or a stack of them) in the 128-byte swizzle wgmma reads."""
    transforms = (plgpu.TilingTransform((8, SWIZZLE // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(SWIZZLE))
    return plgpu.SMEM(shape, dtype, transforms=transforms)


def _ids_scratch(p: Plan, streamed: int, stages: int):
    """With segment ids: the consumers' own ids, a ring of the streamed tiles' ids, their ready barriers."""
    if not p.segments:
        return ()
    return (
        (plgpu.SMEM((CONSUMERS, OWNED_ROWS), jnp.int32), plgpu.SMEM((stages, streamed), jnp.int32)),
        (plgpu.Barrier(num_barriers=CONSUMERS), plgpu.Barrier(num_barriers=stages)),
    )


def _dkv_entry(*refs, p: Plan, c: BackwardBlocks):
    dtype, d, bq, stages = refs[0].dtype, p.head_dim, c.dkv_block_q, c.dkv_stages
    q_ref, k_ref, v_ref, *rest = refs
    pk = packing.split_refs(p, rest)
    pl.run_scoped(
        lambda *scoped: _dkv_kernel(q_ref, k_ref, v_ref, pk, *rest, scoped, p=p, c=c),
        (
            _tile((CONSUMERS, OWNED_ROWS, d), dtype),
            _tile((CONSUMERS, OWNED_ROWS, d), dtype),
            _tile((stages, bq, d), dtype),
            _tile((stages, bq, d), dtype),
            plgpu.SMEM((stages, bq), jnp.float32),
            plgpu.SMEM((stages, bq), jnp.float32),
        ),
        (plgpu.Barrier(num_barriers=stages),) * 4,
        (plgpu.Barrier(num_barriers=CONSUMERS),) * 2,
        plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=stages),
        _ids_scratch(p, bq, stages),
        collective_axes="wg",
    )


def _dq_entry(*refs, p: Plan, c: BackwardBlocks):
    dtype, d, bk, stages = refs[0].dtype, p.head_dim, c.dq_block_k, c.dq_stages
    q_ref, k_ref, v_ref, *rest = refs
    pk = packing.split_refs(p, rest)
    pl.run_scoped(
        lambda *scoped: _dq_kernel(q_ref, k_ref, v_ref, pk, *rest, scoped, p=p, c=c),
        (
            _tile((CONSUMERS, OWNED_ROWS, d), dtype),
            _tile((CONSUMERS, OWNED_ROWS, d), dtype),
            plgpu.SMEM((CONSUMERS, OWNED_ROWS), jnp.float32),
            plgpu.SMEM((CONSUMERS, OWNED_ROWS), jnp.float32),
            _tile((stages, bk, d), dtype),
            _tile((stages, bk, d), dtype),
        ),
        (plgpu.Barrier(num_barriers=CONSUMERS),) * 4,
        (plgpu.Barrier(num_barriers=stages),) * 2,
        plgpu.Barrier(num_arrivals=CONSUMERS, num_barriers=stages),
        _ids_scratch(p, bk, stages),
        collective_axes="wg",
    )


def _kernel(entry, p: Plan, c: BackwardBlocks, out_type, grid, grid_names, name: str):
    return plgpu.kernel(
        named(functools.partial(entry, p=p, c=c), name),
        out_type=out_type,
        grid=grid,
        grid_names=grid_names,
        num_threads=CONSUMERS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret_params(p.interpret),
    )


def dkv_call(p: Plan, c: BackwardBlocks, q, k, v, d_out, lse2, delta, ops: packing.Operands = packing.NO_PACKING):
    """``(dk, dv)`` of padded operands; ``lse2`` (``recompute_lse``'s form) and ``delta`` ``[B, Hq, Sq_pad]``;
    ``ops`` the packing arrays."""
    out_type = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype))
    grid = (p.num_kv_heads, p.kv_len_pad // (CONSUMERS * OWNED_ROWS), p.batch)
    kernel = _kernel(_dkv_entry, p, c, out_type, grid, ("heads", "kv_seq", "batch"), "ejk_mgpu_dkv")
    return kernel(q, k, v, *packing.span_operands(p, ops, "kv", OWNED_ROWS, c.dkv_block_q), d_out, lse2, delta)


def dq_call(p: Plan, c: BackwardBlocks, q, k, v, d_out, lse2, delta, ops: packing.Operands = packing.NO_PACKING):
    """``dq`` of padded operands; the other arguments as ``dkv_call``'s."""
    grid = (p.num_q_heads, p.q_len_pad // (CONSUMERS * OWNED_ROWS), p.batch)
    kernel = _kernel(_dq_entry, p, c, jax.ShapeDtypeStruct(q.shape, q.dtype), grid, ("heads", "q_seq", "batch"),
                     "ejk_mgpu_dq")
    return kernel(q, k, v, *packing.span_operands(p, ops, "q", OWNED_ROWS, c.dq_block_k), d_out, lse2, delta)


def _prepared(p: Plan, out, lse, d_out, d_lse):
    """``(lse2, delta)`` ``[B, Hq, Sq_pad]`` float32 from the forward's natural-log ``lse [B, Hq, Sq_pad]``.

    Padded rows count as empty (``lse2 = +inf``): their probabilities are 0 whatever their logits.
    """
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    # A cotangent on the lse adds d_lse * p to dS: the same as shifting delta by -d_lse.
    delta = delta - jnp.where(jnp.isfinite(lse), d_lse.astype(jnp.float32).transpose(0, 2, 1), 0.0)
    real = jnp.arange(p.q_len_pad, dtype=jnp.int32) < p.q_len
    lse2 = recompute_lse(jnp.where(real, lse * LOG2E, -jnp.inf))
    return lse2, delta


def backward_call(p: Plan, c: BackwardBlocks, residuals, cotangents):
    """``(dq, dk, dv)`` of the padded ``q, k, v``.

    ``residuals = (q, k, v, ops, out, lse)``: the forward's padded operands and packing arrays, output and
    natural-log ``lse [B, Hq, Sq_pad]``; ``cotangents = (d_out, d_lse)`` of the padded output and of
    ``lse [B, Sq_pad, Hq]``.
    """
    q, k, v, ops, out, lse = residuals
    d_out, d_lse = cotangents
    d_out = d_out.astype(q.dtype)
    lse2, delta = _prepared(p, out, lse, d_out, d_lse)
    dk, dv = dkv_call(p, c, q, k, v, d_out, lse2, delta, ops)
    dq = dq_call(p, c, q, k, v, d_out, lse2, delta, ops)
    return dq, dk, dv
