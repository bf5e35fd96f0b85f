"""The forward kernel: one program per (query block, batch x query head), online softmax over key blocks.

Operands are whole arrays (padded to block multiples by ``flash``) indexed by program ids: ``q [B, Sq, Hq,
D]``, ``k [B, Skv, Hkv, D]``, ``v [B, Skv, Hkv, Dv]``, optional ``bias``/``mask [B|1, H|1, Sq, Skv]`` and
``sinks [Hq, n]`` (base-2, padded with ``-inf``). Outputs: ``out [B, Sq, Hq, Dv]`` and ``lse2 [B, Hq, Sq]``,
the base-2 log-sum-exp, both from ``merge.normalize_rows`` (the one empty-row convention: a row with nothing
in its denominator has ``out = 0`` and ``lse2 = -inf``). Query blocks run last-first: under causal masks
they hold the most work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ejkernel.kernels.pallas_triton.blocks import PassBlocks
from ejkernel.kernels.pallas_triton.packing import clean_keys, packing_operands, walk_blocks
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.kernels.pallas_triton.tiles import NEG_INIT, dot, i32, index32, key_blocks, positions, split_refs
from ejkernel.ops.attention.layouts import kv_head, operand_index
from ejkernel.ops.attention.logits import transform_logits
from ejkernel.ops.attention.masks import valid_pairs
from ejkernel.ops.attention.merge import normalize_rows

__all__ = ["forward_call"]


def _forward_kernel(*refs, p: Plan, c: PassBlocks):
    q_ref, k_ref, v_ref, bias_ref, mask_ref, sinks_ref, pk, (o_ref, lse_ref) = split_refs(p, refs)
    bq, bk = c.block_q, c.block_k
    qi = p.q_len_pad // bq - 1 - pl.program_id(0)
    bh = pl.program_id(1)
    b, h = lax.div(bh, i32(p.num_q_heads)), lax.rem(bh, i32(p.num_q_heads))
    hkv = kv_head(h, p.group)
    q_first = qi * bq
    q = q_ref[b, pl.ds(q_first, bq), h, :]

    m = jnp.full((bq,), NEG_INIT, jnp.float32)
    denom = jnp.zeros((bq,), jnp.float32)
    if sinks_ref is not None:
        sinks = sinks_ref[h, :]  # base 2, -inf padded
        m0 = jnp.maximum(jnp.max(sinks), NEG_INIT)
        m = jnp.broadcast_to(m0, (bq,))
        denom = jnp.broadcast_to(jnp.sum(jnp.exp2(sinks - m0)), (bq,))
    acc = jnp.zeros((bq, p.v_head_dim), jnp.float32)
    bias_idx = index32(operand_index(p.bias_layout, b, h, p.group)) if bias_ref is not None else None
    mask_idx = index32(operand_index(p.mask_layout, b, h, p.group)) if mask_ref is not None else None
    q_idx = positions(q_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 0), p.pack)

    def body(kb, carry, masked: bool):
        acc, m, denom = carry
        k_first = kb * bk
        k = k_ref[b, pl.ds(k_first, bk), hkv, :]
        v = v_ref[b, pl.ds(k_first, bk), hkv, :]
        if masked:  # keys no query may see (NaN-safe): only masked tiles hold them. Their K rows need no
            # zeroing: the logits they give are replaced by -inf below; their V rows would meet p = 0.
            (v,) = clean_keys(pk.key_ok(b, k_first, bk), v)
        s = dot(q, k, transpose_b=True)
        bias = None
        if bias_ref is not None:
            bias = bias_ref[bias_idx[0], bias_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)]
        s2, _ = transform_logits(s, p.softmax_scale, p.logits_soft_cap, bias, base2=True)
        if masked:
            mask = None
            if mask_ref is not None:
                mask = mask_ref[mask_idx[0], mask_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)]
            k_idx = k_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            ok = valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, mask,
                             **pk.pair_args(b, q_first, bq, k_first, bk))
            s2 = jnp.where(ok, s2, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s2, axis=1))
        alpha = jnp.exp2(m - m_new)
        prob = jnp.exp2(s2 - m_new[:, None])
        denom = denom * alpha + jnp.sum(prob, axis=1)
        acc = acc * alpha[:, None] + dot(prob.astype(v.dtype), v)
        return acc, m_new, denom

    (lo, interior_lo, interior_hi, hi), whole = pk.keys_of(
        b, qi, key_blocks(p, q_first, bq, bk, dense=mask_ref is not None, kv_length=pk.length(b)))
    split = None
    if p.kv_splits > 1:  # this program's share of the key blocks
        split = pl.program_id(2)
        per_split = i32(-(-(p.kv_len_pad // bk) // p.kv_splits))
        lo = jnp.maximum(lo, split * per_split)
        hi = jnp.maximum(jnp.minimum(hi, (split + 1) * per_split), lo)
        interior_lo = jnp.clip(interior_lo, lo, hi)
        interior_hi = jnp.clip(interior_hi, interior_lo, hi)
    acc, m, denom = walk_blocks((lo, interior_lo, interior_hi, hi), body, (acc, m, denom), whole)

    out, lse2 = normalize_rows(acc, m, denom, base2=True)
    out = out.astype(o_ref.dtype)
    if split is None:
        o_ref[b, pl.ds(q_first, bq), h, :] = out
        lse_ref[b, h, pl.ds(q_first, bq)] = lse2
    else:
        o_ref[split, b, pl.ds(q_first, bq), h, :] = out
        lse_ref[split, b, h, pl.ds(q_first, bq)] = lse2


def forward_call(p: Plan, c: PassBlocks, q, k, v, bias, mask, sinks, q_ids=None, kv_ids=None, lengths=None):
    """``(out, lse2)`` for padded operands (``bias``/``mask``/``sinks`` may be ``None``; the segment ids and
    key lengths are ``packing.packing_operands``').

    With ``p.kv_splits > 1`` both gain a leading split axis and ``out`` is float32: per-split partials,
    each normalised over its own keys, for ``flash.decode_with_lse`` to merge.
    """
    operands = [x for x in (q, k, v, bias, mask, sinks) if x is not None]
    operands += packing_operands(p, c, q_ids, kv_ids, lengths)
    splits = (p.kv_splits,) if p.kv_splits > 1 else ()
    out_shape = (
        jax.ShapeDtypeStruct((*splits, p.batch, p.q_len_pad, p.num_q_heads, p.v_head_dim),
                             jnp.float32 if splits else q.dtype),
        jax.ShapeDtypeStruct((*splits, p.batch, p.num_q_heads, p.q_len_pad), jnp.float32),
    )
    return pl.pallas_call(
        functools.partial(_forward_kernel, p=p, c=c),
        grid=(p.q_len_pad // c.block_q, p.batch * p.num_q_heads, *splits),
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=c.num_warps, num_stages=c.num_stages),
        interpret=p.interpret,
        name="ejk_flash_fwd",
    )(*operands)
