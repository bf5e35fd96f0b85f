"""The forward kernel: online softmax over key blocks, float32 accumulators, per-row log-sum-exp.

Grid ``(batch, q_head, q_block, kv_block)``; the last axis is sequential ("arbitrary") and carries the
running max ``m``, denominator ``l`` and unnormalised output in VMEM scratch. Query head ``h`` reads kv
head ``h // group`` through the index maps, so K/V are never repeated. Pairs that causal/window rule out
are skipped (``blocks.block_visited``, i.e. ``masks.key_blocks``), and their K/V index maps are clamped to a
visited block so that the pipeline issues no DMA for them either. Sinks enter as the initial state:
``m = logsumexp(sinks)``, ``l = 1``. A row with no allowed key ends with ``l = 0``: ``merge.normalize_rows``
gives it output 0 and lse ``-inf`` (the one empty-row convention, ``docs/design.rst``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ejkernel.kernels.pallas_tpu import blocks as blk
from ejkernel.kernels.pallas_tpu.packing import block_specs, pop_blocks, scalar_operands, scalar_view
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.kernels.pallas_tpu.tiles import (
    MASK_VALUE,
    NN,
    block_logits,
    block_valid,
    dot,
    lanes,
    tile_predicates,
    when_visited,
)
from ejkernel.ops.attention.layouts import kv_head, operand_index
from ejkernel.ops.attention.merge import normalize_rows

__all__ = ["flash_forward"]

_COUNT_ROWS = 8  # the visit counter is one (8, 128) int32 tile per (batch, head, q block)


def _forward_kernel(sink_ref, *refs, plan: Plan, num_scalars: int):
    refs = list(refs)
    scalars = scalar_view(plan, tuple(refs[:num_scalars]))
    q_ref, k_ref, v_ref, *refs = refs[num_scalars:]
    bias_ref = refs.pop(0) if plan.bias_layout is not None else None
    mask_ref = refs.pop(0) if plan.mask_layout is not None else None
    pk = pop_blocks(plan, refs, scalars)
    o_ref, lse_ref = refs.pop(0), refs.pop(0)
    count_ref = refs.pop(0) if plan.count_visits else None
    m_ref, l_ref, acc_ref = refs
    bq, bk = plan.blocks.block_q, plan.blocks.block_k
    batch, head, q_block, kv_block = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)

    @pl.when(kv_block == 0)
    def _init():
        if plan.has_sinks:
            m_ref[...] = jnp.full(m_ref.shape, sink_ref[head], jnp.float32)
            l_ref[...] = jnp.ones(l_ref.shape, jnp.float32)
        else:
            m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
            l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        if count_ref is not None:
            count_ref[...] = jnp.zeros(count_ref.shape, jnp.int32)

    visit, needs_mask = tile_predicates(q_block, kv_block, bq, bk, plan, pk, batch)

    def step(masked: bool) -> None:
        k, v = k_ref[...], v_ref[...]
        if masked:  # keys no query may see (NaN-safe): only masked tiles hold them
            k, v = pk.clean_keys(batch, kv_block, bk, k, v)
        s, _ = block_logits(q_ref[...], k, bias_ref, plan)
        if masked:
            valid = block_valid(q_block, kv_block, s.shape, mask_ref, plan, bq, bk, pk, batch)
            s = jnp.where(valid, s, MASK_VALUE)
        m_prev = m_ref[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        p = jnp.exp(s - lanes(m_next, bk))
        if masked:
            p = jnp.where(valid, p, 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=-1, keepdims=True)
        m_ref[...] = m_next
        pv = dot(p.astype(v.dtype), v, NN, plan)
        acc_ref[...] = acc_ref[...] * lanes(alpha, acc_ref.shape[-1]) + pv
        if count_ref is not None:
            count_ref[...] += 1

    when_visited(visit, needs_mask, step)

    @pl.when(kv_block == pl.num_programs(3) - 1)
    def _finish():
        # The statistics are lane-replicated [rows, 128]: normalize_rows takes one value per row.
        out, lse = normalize_rows(acc_ref[...], m_ref[...][:, 0], l_ref[...][:, 0])
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = jnp.broadcast_to(lse[:, None], lse_ref.shape)


def kv_index(plan: Plan, block_q: int, block_k: int, q_block: Any, kv_block: Any, kv_length: Any = None) -> Any:
    """``kv_block`` clamped into the visited range of ``q_block`` (ending at the row's ``kv_length``): skipped
    steps re-use a resident block."""
    lo, _, _, hi = blk.kv_block_range(q_block, block_q, block_k, plan.q_len, plan.kv_len, plan.causal, plan.window,
                                      kv_length=kv_length)
    return blk.clamp_to_visited(kv_block, lo, hi, -(-plan.kv_len // block_k))


def flash_forward(
    plan: Plan, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
    mask: jax.Array | None, sink_lse: jax.Array, packing: tuple[Any, Any, Any] = (None, None, None),
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
    """Runs the forward kernel on padded ``[B, H, S, D]`` arrays.

    Args:
      q: ``[B, Hq, Sq_pad, D]``; k: ``[B, Hkv, Skv_pad, D]``; v: ``[B, Hkv, Skv_pad, Dv]`` (compute dtype).
      bias: ``[B|1, Hq|Hkv|1, Sq_pad, Skv_pad]`` or ``None``; mask: the same shape in int8 (1 = attend).
      sink_lse: ``[Hq]`` float32, log-sum-exp of each head's sinks (ignored without sinks).
      packing: ``(q_ids [B, Sq_pad], kv_ids [B, Skv_pad], lengths [B])`` int32, ``None`` where absent
        (``packing``: the key ids are the visible ones, the padding ``-1``).

    Returns:
      ``out [B, Hq, Sq_pad, Dv]`` in the compute dtype, ``lse [B, Hq, Sq_pad]`` float32 (``-inf`` for
      rows with no allowed key and no sink), and with ``plan.count_visits`` the visited-pair counts
      ``[B, Hq, num_q_blocks]``.
    """
    batch, num_q_heads, q_pad, head_dim = q.shape
    kv_pad, v_head_dim = k.shape[2], v.shape[3]
    bq, bk = plan.blocks.block_q, plan.blocks.block_k
    num_q, num_kv = q_pad // bq, kv_pad // bk
    group = plan.group_size
    scalars = scalar_operands(plan, bq, bk, packing)

    def kv_block(b, h, i, j, sinks, *pack):
        return kv_index(plan, bq, bk, i, j, scalar_view(plan, pack).length(b))

    def q_map(b, h, i, j, *prefetch):
        return b, h, i, 0

    def kv_map(b, h, i, j, *prefetch):
        return b, kv_head(h, group), kv_block(b, h, i, j, *prefetch), 0

    def operand_map(layout):
        def index(b, h, i, j, *prefetch):
            ob, oh = operand_index(layout, b, h, group)
            return ob, oh, i, kv_block(b, h, i, j, *prefetch)

        return index

    in_specs = [
        pl.BlockSpec((None, None, bq, head_dim), q_map),
        pl.BlockSpec((None, None, bk, head_dim), kv_map),
        pl.BlockSpec((None, None, bk, v_head_dim), kv_map),
    ]
    inputs = [q, k, v]
    if bias is not None:
        in_specs.append(pl.BlockSpec((None, None, bq, bk), operand_map(plan.bias_layout)))
        inputs.append(bias)
    if mask is not None:
        in_specs.append(pl.BlockSpec((None, None, bq, bk), operand_map(plan.mask_layout)))
        inputs.append(mask)
    id_specs, id_inputs = block_specs(plan, packing, bq, bk, lambda b, h, i, j, *_: i, kv_block, lambda b, *_: b)
    in_specs += id_specs
    inputs += id_inputs

    out_specs = [
        pl.BlockSpec((None, None, bq, v_head_dim), q_map),
        pl.BlockSpec((None, None, bq, blk.LANES), q_map),
    ]
    out_shape = [
        jax.ShapeDtypeStruct((batch, num_q_heads, q_pad, v_head_dim), q.dtype),
        jax.ShapeDtypeStruct((batch, num_q_heads, q_pad, blk.LANES), jnp.float32),
    ]
    if plan.count_visits:
        out_specs.append(pl.BlockSpec((None, None, _COUNT_ROWS, blk.LANES), q_map))
        out_shape.append(jax.ShapeDtypeStruct((batch, num_q_heads, num_q * _COUNT_ROWS, blk.LANES), jnp.int32))

    results = pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan, num_scalars=len(scalars)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1 + len(scalars),
            grid=(batch, num_q_heads, num_q, num_kv),
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=[
                pltpu.VMEM((bq, blk.LANES), jnp.float32),
                pltpu.VMEM((bq, blk.LANES), jnp.float32),
                pltpu.VMEM((bq, v_head_dim), jnp.float32),
            ],
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=plan.interpret,
        name="ejkernel_flash_forward",
    )(sink_lse, *scalars, *inputs)
    out, lse = results[0], results[1][..., 0]
    if plan.count_visits:
        counts = results[2].reshape(batch, num_q_heads, num_q, _COUNT_ROWS, blk.LANES)[..., 0, 0]
        return out, lse, counts
    return out, lse
