"""The backward kernels: one for dq (and the bias gradient), one for dk/dv.

Both recompute the probabilities of a tile from the saved log-sum-exp, ``p = exp(s - lse)``, and use
``ds = p * (dp - di)`` with ``dp = do @ v.T`` and ``di = rowsum(o * do) - dlse`` (the lse cotangent enters
there). With a soft cap, ``ds`` is multiplied by ``1 - tanh²`` (``logits.cap_gradient``) before the products
with k or q. Rows that must get no gradient (padding, rows with no allowed key) carry ``lse = +inf``
(``merge.recompute_lse``), so their ``p`` is 0.

- dq: grid ``(batch, q_head, q_block, kv_block)``, sequential over key blocks, ``dq`` accumulated in
  float32 scratch. It also writes ``ds`` per tile (zeros for skipped tiles) when there is a bias: the bias
  gradient, summed over broadcast axes by the caller.
- dbias (a bias broadcast over batch or heads only): grid ``(bias batch, bias head, q_block, kv_block,
  reduced)``, the last axis walking the (batch, query head) pairs that share the bias tile, summing ``ds``
  in float32 scratch: the gradient costs the bias's own size, not ``[B, Hq, Sq, Skv]``.
- dk/dv: grid ``(batch, kv_head, kv_block, group, q_block)``, sequential over the query heads of the group
  and the query blocks, so each kv head's gradients are accumulated in scratch and written once: K/V are
  never repeated and no per-query-head dk/dv is materialised.

Skipped tiles are those the forward skips (``blocks.block_visited``); their index maps are clamped to a
visited block (``blocks.clamp_to_visited``) so that they cost no DMA.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ejkernel.kernels.pallas_tpu import blocks as blk
from ejkernel.kernels.pallas_tpu.forward import kv_index
from ejkernel.kernels.pallas_tpu.packing import Packing, block_specs, pop_blocks, scalar_operands, scalar_view
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.kernels.pallas_tpu.tiles import (
    NN,
    NT,
    TN,
    block_logits,
    block_valid,
    dot,
    lanes,
    tile_predicates,
    when_visited,
)
from ejkernel.ops.attention.layouts import kv_head, operand_index
from ejkernel.ops.attention.logits import cap_gradient

__all__ = ["flash_backward_dq", "flash_backward_dkv", "flash_backward_dbias"]


def _tile_grads(q, k, v, do, lse, di, bias_ref, mask_ref, q_block, kv_block, masked: bool, plan: Plan,
                pk: Packing, b: Any):
    """``p`` and the logits gradient ``ds`` (w.r.t. the capped, biased logits) and the raw one of a tile.

    A masked tile zeroes the K/V rows of keys no query may see first (NaN-safe products)."""
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    if masked:
        k, v = pk.clean_keys(b, kv_block, bk, k, v)
    s, t = block_logits(q, k, bias_ref, plan)
    p = jnp.exp(s - lanes(lse, bk))
    if masked:
        valid = block_valid(q_block, kv_block, s.shape, mask_ref, plan, bq, bk, pk, b)
        p = jnp.where(valid, p, 0.0)
    dp = dot(do, v, NT, plan)
    ds = p * (dp - lanes(di, bk))
    ds_raw = cap_gradient(ds, t)
    return p, ds, ds_raw


def _split_refs(refs: tuple, plan: Plan, num_scalars: int) -> tuple[Any, list, Any, Any, Packing, list]:
    """``(scalars, [q, k, v, do, lse, di], bias, mask, packing, rest)`` of a backward kernel's refs."""
    refs = list(refs)
    scalars = scalar_view(plan, tuple(refs[:num_scalars]))
    refs = refs[num_scalars:]
    tiles, refs = refs[:6], refs[6:]
    bias_ref = refs.pop(0) if plan.bias_layout is not None else None
    mask_ref = refs.pop(0) if plan.mask_layout is not None else None
    return scalars, tiles, bias_ref, mask_ref, pop_blocks(plan, refs, scalars), refs


def _dq_kernel(*refs, plan: Plan, num_scalars: int):
    _, (q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref), bias_ref, mask_ref, pk, refs = _split_refs(refs, plan, num_scalars)
    dq_ref = refs.pop(0)
    dbias_ref = refs.pop(0) if _bias_grad_in_dq(plan) else None
    (dq_acc,) = refs
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    batch, q_block, kv_block = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(kv_block == 0)
    def _init():
        dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

    visit, needs_mask = tile_predicates(q_block, kv_block, bq, bk, plan, pk, batch)

    def step(masked: bool) -> None:
        k = k_ref[...]
        if masked:
            (k,) = pk.clean_keys(batch, kv_block, bk, k)
        _, ds, ds_raw = _tile_grads(
            q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], di_ref[...], bias_ref, mask_ref,
            q_block, kv_block, masked, plan, pk, batch,
        )
        if dbias_ref is not None:
            dbias_ref[...] = ds.astype(dbias_ref.dtype)
        dq_acc[...] += dot(ds_raw.astype(k.dtype), k, NN, plan)

    if dbias_ref is not None:
        @pl.when(jnp.logical_not(visit))
        def _skipped():
            dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

    when_visited(visit, needs_mask, step)

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_acc[...] * jnp.float32(plan.softmax_scale)).astype(dq_ref.dtype)


def _dkv_kernel(*refs, plan: Plan, num_scalars: int):
    _, (q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref), bias_ref, mask_ref, pk, refs = _split_refs(refs, plan, num_scalars)
    dk_ref, dv_ref, dk_acc, dv_acc = refs
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    batch, kv_block, member, q_block = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    first_step = (member == 0) & (q_block == 0)
    last_step = (member == pl.num_programs(3) - 1) & (q_block == pl.num_programs(4) - 1)

    @pl.when(first_step)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    visit, needs_mask = tile_predicates(q_block, kv_block, bq, bk, plan, pk, batch)

    def step(masked: bool) -> None:
        q, do = q_ref[...], do_ref[...]
        p, _, ds_raw = _tile_grads(
            q, k_ref[...], v_ref[...], do, lse_ref[...], di_ref[...], bias_ref, mask_ref,
            q_block, kv_block, masked, plan, pk, batch,
        )
        dv_acc[...] += dot(p.astype(do.dtype), do, TN, plan)
        dk_acc[...] += dot(ds_raw.astype(q.dtype), q, TN, plan)

    when_visited(visit, needs_mask, step)

    @pl.when(last_step)
    def _finish():
        dk_ref[...] = (dk_acc[...] * jnp.float32(plan.softmax_scale)).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _operand_specs(plan: Plan, bias, mask, index) -> tuple[list, list]:
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    specs, inputs = [], []
    for x, layout in ((bias, plan.bias_layout), (mask, plan.mask_layout)):
        if x is not None:
            specs.append(pl.BlockSpec((None, None, bq, bk), index(layout)))
            inputs.append(x)
    return specs, inputs


def _bias_grad_in_dq(plan: Plan) -> bool:
    """A ``[B, Hq, ...]`` bias gets its gradient tile by tile from the dq kernel; a broadcast one from
    ``flash_backward_dbias``, which sums over the broadcast axes in VMEM."""
    return plan.bias_layout is not None and plan.bias_full


def _grid_spec(scalars: list, grid: tuple[int, ...], in_specs: list, out_specs: list, scratch: list):
    return pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=len(scalars), grid=grid, in_specs=in_specs,
                                        out_specs=out_specs, scratch_shapes=scratch)


def flash_backward_dq(
    plan: Plan, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, mask: jax.Array | None,
    do: jax.Array, lse: jax.Array, di: jax.Array, packing: tuple[Any, Any, Any] = (None, None, None),
) -> tuple[jax.Array, jax.Array | None]:
    """``dq [B, Hq, Sq_pad, D]`` and, for a ``[B, Hq, ...]`` bias, its gradient (in the bias dtype).

    ``lse`` and ``di`` are ``[B, Hq, Sq_pad, 128]`` float32 (lane-replicated); ``lse`` is ``+inf`` on rows
    that must get no gradient (padding, rows with no allowed key). ``packing`` as ``forward.flash_forward``'s.
    """
    batch, num_q_heads, q_pad, head_dim = q.shape
    kv_pad, v_head_dim = k.shape[2], v.shape[3]
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    group = plan.group_size
    scalars = scalar_operands(plan, bq, bk, packing)

    def kv_block(b, h, i, j, *pack):
        return kv_index(plan, bq, bk, i, j, scalar_view(plan, pack).length(b))

    def q_map(b, h, i, j, *pack):
        return b, h, i, 0

    def kv_map(b, h, i, j, *pack):
        return b, kv_head(h, group), kv_block(b, h, i, j, *pack), 0

    def operand_map(layout):
        def index(b, h, i, j, *pack):
            ob, oh = operand_index(layout, b, h, group)
            return ob, oh, i, kv_block(b, h, i, j, *pack)

        return index

    extra_specs, extra_inputs = _operand_specs(plan, bias, mask, operand_map)
    id_specs, id_inputs = block_specs(plan, packing, bq, bk, lambda b, h, i, *_: i, kv_block, lambda b, *_: b)
    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), q_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, v_head_dim), kv_map),
        pl.BlockSpec((None, None, bq, v_head_dim), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        *extra_specs,
        *id_specs,
    ]
    out_specs = [pl.BlockSpec((None, None, bq, head_dim), q_map)]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if _bias_grad_in_dq(plan):
        out_specs.append(pl.BlockSpec((None, None, bq, bk), lambda b, h, i, j, *pack: (b, h, i, j)))
        out_shape.append(jax.ShapeDtypeStruct(bias.shape, bias.dtype))
    results = pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan, num_scalars=len(scalars)),
        grid_spec=_grid_spec(scalars, (batch, num_q_heads, q_pad // bq, kv_pad // bk), in_specs, out_specs,
                             [pltpu.VMEM((bq, head_dim), jnp.float32)]),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=plan.interpret,
        name="ejkernel_flash_backward_dq",
    )(*scalars, q, k, v, do, lse, di, *extra_inputs, *id_inputs)
    return results[0], (results[1] if _bias_grad_in_dq(plan) else None)


def flash_backward_dkv(
    plan: Plan, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, mask: jax.Array | None,
    do: jax.Array, lse: jax.Array, di: jax.Array, packing: tuple[Any, Any, Any] = (None, None, None),
) -> tuple[jax.Array, jax.Array]:
    """``dk [B, Hkv, Skv_pad, D]`` and ``dv [B, Hkv, Skv_pad, Dv]``, summed over each kv head's group."""
    batch, num_q_heads, q_pad, head_dim = q.shape
    num_kv_heads, kv_pad, v_head_dim = k.shape[1], k.shape[2], v.shape[3]
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    group = plan.group_size
    num_q = q_pad // bq
    scalars = scalar_operands(plan, bq, bk, packing)

    def q_block(b, h, j, g, i, *pack):
        lo, _, _, hi = blk.q_block_range(j, bq, bk, plan.q_len, plan.kv_len, plan.causal, plan.window,
                                         kv_length=scalar_view(plan, pack).length(b))
        return blk.clamp_to_visited(i, lo, hi, -(-plan.q_len // bq))

    def q_map(b, h, j, g, i, *pack):
        return b, h * group + g, q_block(b, h, j, g, i, *pack), 0

    def kv_map(b, h, j, g, i, *pack):
        return b, h, j, 0

    def operand_map(layout):
        def index(b, h, j, g, i, *pack):
            ob, oh = operand_index(layout, b, h * group + g, group)
            return ob, oh, q_block(b, h, j, g, i, *pack), j

        return index

    extra_specs, extra_inputs = _operand_specs(plan, bias, mask, operand_map)
    id_specs, id_inputs = block_specs(plan, packing, bq, bk, q_block, lambda b, h, j, *_: j, lambda b, *_: b)
    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), q_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, v_head_dim), kv_map),
        pl.BlockSpec((None, None, bq, v_head_dim), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        *extra_specs,
        *id_specs,
    ]
    out_specs = [
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, v_head_dim), kv_map),
    ]
    out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan, num_scalars=len(scalars)),
        grid_spec=_grid_spec(scalars, (batch, num_kv_heads, kv_pad // bk, group, num_q), in_specs, out_specs,
                             [pltpu.VMEM((bk, head_dim), jnp.float32), pltpu.VMEM((bk, v_head_dim), jnp.float32)]),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")
        ),
        interpret=plan.interpret,
        name="ejkernel_flash_backward_dkv",
    )(*scalars, q, k, v, do, lse, di, *extra_inputs, *id_inputs)
    return dk, dv


def _dbias_kernel(*refs, plan: Plan, num_scalars: int, pair_of):
    _, (q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref), bias_ref, mask_ref, pk, refs = _split_refs(refs, plan, num_scalars)
    dbias_ref, acc = refs[-2:]
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    q_block, kv_block, pair = pl.program_id(2), pl.program_id(3), pl.program_id(4)
    batch, _ = pair_of(pl.program_id(0), pl.program_id(1), pair)

    @pl.when(pair == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    visit, needs_mask = tile_predicates(q_block, kv_block, bq, bk, plan, pk, batch)

    def step(masked: bool) -> None:
        _, ds, _ = _tile_grads(
            q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...], di_ref[...], bias_ref, mask_ref,
            q_block, kv_block, masked, plan, pk, batch,
        )
        acc[...] += ds

    when_visited(visit, needs_mask, step)

    @pl.when(pair == pl.num_programs(4) - 1)
    def _finish():
        dbias_ref[...] = acc[...].astype(dbias_ref.dtype)


def flash_backward_dbias(
    plan: Plan, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, mask: jax.Array | None,
    do: jax.Array, lse: jax.Array, di: jax.Array, packing: tuple[Any, Any, Any] = (None, None, None),
) -> jax.Array:
    """The gradient of a bias broadcast over batch and/or heads, in its own shape and dtype."""
    batch, num_q_heads, q_pad, head_dim = q.shape
    kv_pad, v_head_dim = k.shape[2], v.shape[3]
    bias_batch, bias_heads = bias.shape[:2]
    bq, bk = plan.blocks.block_q_bwd, plan.blocks.block_k_bwd
    group = plan.group_size
    batches_per_tile = batch if bias_batch == 1 else 1
    heads_per_tile = num_q_heads // bias_heads
    scalars = scalar_operands(plan, bq, bk, packing)

    def pair_of(bb, hb, r):
        """The (batch, query head) that reduction step ``r`` of bias tile (bb, hb) reads."""
        if heads_per_tile == 1:
            r_b, r_h = r, 0
        else:
            r_b = jax.lax.div(r, jnp.int32(heads_per_tile))
            r_h = jax.lax.rem(r, jnp.int32(heads_per_tile))
        return bb + r_b, hb * heads_per_tile + r_h

    def kv_block(bb, hb, i, j, r, *pack):
        b, _ = pair_of(bb, hb, r)
        return kv_index(plan, bq, bk, i, j, scalar_view(plan, pack).length(b))

    def q_map(bb, hb, i, j, r, *pack):
        b, h = pair_of(bb, hb, r)
        return b, h, i, 0

    def kv_map(bb, hb, i, j, r, *pack):
        b, h = pair_of(bb, hb, r)
        return b, kv_head(h, group), kv_block(bb, hb, i, j, r, *pack), 0

    def bias_map(bb, hb, i, j, r, *pack):
        return bb, hb, i, j

    def mask_map(bb, hb, i, j, r, *pack):
        b, h = pair_of(bb, hb, r)
        mb, mh = operand_index(plan.mask_layout, b, h, group)
        return mb, mh, i, j

    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), q_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, v_head_dim), kv_map),
        pl.BlockSpec((None, None, bq, v_head_dim), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
        pl.BlockSpec((None, None, bq, bk), bias_map),
    ]
    inputs = [q, k, v, do, lse, di, bias]
    if mask is not None:
        in_specs.append(pl.BlockSpec((None, None, bq, bk), mask_map))
        inputs.append(mask)
    id_specs, id_inputs = block_specs(plan, packing, bq, bk, lambda bb, hb, i, *_: i, kv_block,
                                      lambda bb, hb, i, j, r, *_: pair_of(bb, hb, r)[0])
    in_specs += id_specs
    inputs += id_inputs
    grid = (bias_batch, bias_heads, q_pad // bq, kv_pad // bk, batches_per_tile * heads_per_tile)
    return pl.pallas_call(
        functools.partial(_dbias_kernel, plan=plan, num_scalars=len(scalars), pair_of=pair_of),
        grid_spec=_grid_spec(scalars, grid, in_specs, pl.BlockSpec((None, None, bq, bk), bias_map),
                             [pltpu.VMEM((bq, bk), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(bias.shape, bias.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=plan.interpret,
        name="ejkernel_flash_backward_dbias",
    )(*scalars, *inputs)
