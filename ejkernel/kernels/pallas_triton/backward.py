"""The backward kernels (FlashAttention-2 style, no atomics).

- ``dkv_call``: one program per (key block, batch x kv head). It keeps its K/V block and the dK/dV
  accumulators in registers and walks every query head of its group and every query block that sees the
  keys, recomputing ``p = exp2(s2 - lse2)`` in transposed form (``[block_k, block_q]``): dV += p^T dO,
  dS = p (dO V^T - delta), dK += dS^T Q. GQA/MQA sum over the group here, so K/V are never repeated.
- ``dq_call``: one program per (query block, batch x query head), walking key blocks: dQ += dS K. With a
  bias it also writes each visited dS tile into a zero-initialised ``[B, Hq, Sq, Skv]`` float32 buffer
  (the bias gradient before it is summed to the bias's layout).

``delta = rowsum(dO * O)`` is precomputed and ``lse2`` is in ``merge.recompute_lse``'s form (``+inf`` for an
empty or padded row, so ``p`` is 0 there with no extra select; ``flash.flash_backward``). Skipped blocks and the
masked/interior split come from the shared ``masks.key_blocks``/``query_blocks`` (through ``tiles``), so
both passes visit exactly the pairs the forward visits.
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
from ejkernel.kernels.pallas_triton.tiles import dot, ds_dot, i32, index32, key_blocks, query_blocks, split_refs
from ejkernel.ops.attention.layouts import kv_head, operand_index
from ejkernel.ops.attention.logits import cap_gradient, transform_logits
from ejkernel.ops.attention.masks import valid_pairs

__all__ = ["dkv_call", "dq_call"]


def _dkv_kernel(*refs, p: Plan, c: PassBlocks):
    q_ref, k_ref, v_ref, bias_ref, mask_ref, _, pk, rest = split_refs(p, refs, loop="queries")
    do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest
    bq, bk = c.block_q, c.block_k
    kj = pl.program_id(0)
    bh = pl.program_id(1)
    b, hkv = lax.div(bh, i32(p.num_kv_heads)), lax.rem(bh, i32(p.num_kv_heads))
    k_first = kj * bk
    k = k_ref[b, pl.ds(k_first, bk), hkv, :]
    v = v_ref[b, pl.ds(k_first, bk), hkv, :]
    k_idx = k_first + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
    bounds, whole = pk.queries_of(b, kj, query_blocks(p, k_first, bk, bq, dense=mask_ref is not None,
                                                      kv_length=pk.length(b)))

    def head(g, carry):
        h = hkv * p.group + g
        bias_idx = index32(operand_index(p.bias_layout, b, h, p.group)) if bias_ref is not None else None
        mask_idx = index32(operand_index(p.mask_layout, b, h, p.group)) if mask_ref is not None else None

        def body(qb, carry, masked: bool):
            dk, dv = carry
            q_first = qb * bq
            q = q_ref[b, pl.ds(q_first, bq), h, :]
            do = do_ref[b, pl.ds(q_first, bq), h, :]
            lse = lse_ref[b, h, pl.ds(q_first, bq)]
            delta = delta_ref[b, h, pl.ds(q_first, bq)]
            st = dot(k, q, transpose_b=True)
            bias = None
            if bias_ref is not None:
                bias = bias_ref[bias_idx[0], bias_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)].T
            s2, t = transform_logits(st, p.softmax_scale, p.logits_soft_cap, bias, base2=True)
            if masked:
                mask = None
                if mask_ref is not None:
                    mask = mask_ref[mask_idx[0], mask_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)].T
                q_idx = q_first + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
                ok = valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, mask,
                                 **pk.pair_args(b, q_first, bq, k_first, bk, transposed=True))
                s2 = jnp.where(ok, s2, -jnp.inf)
            pt = jnp.exp2(s2 - lse[None, :])
            dv = dv + dot(pt.astype(do.dtype), do)
            dpt = dot(v, do, transpose_b=True)
            dst = cap_gradient(pt * (dpt - delta[None, :]), t)
            dk = dk + ds_dot(dst, q)
            return dk, dv

        return walk_blocks(bounds, body, carry, whole)

    carry = (jnp.zeros((bk, p.head_dim), jnp.float32), jnp.zeros((bk, p.v_head_dim), jnp.float32))
    if p.group == 1:
        dk, dv = head(0, carry)
    else:
        dk, dv = lax.fori_loop(i32(0), i32(p.group), head, carry)
    # Keys no query may see (NaN-safe): a NaN in their K or V reaches only their own rows of dK and dV
    # (each row of dS^T Q and P^T dO is one key's), whose true gradient is 0. Zeroing the two
    # accumulators once here, not K and V before the loop, ran this kernel 14% faster on a packed row
    # on an H200 (benchmarks/NOTES-triton.md).
    dk, dv = clean_keys(pk.key_ok(b, k_first, bk), dk, dv)
    dk_ref[b, pl.ds(k_first, bk), hkv, :] = (dk * p.softmax_scale).astype(dk_ref.dtype)
    dv_ref[b, pl.ds(k_first, bk), hkv, :] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, p: Plan, c: PassBlocks):
    q_ref, k_ref, v_ref, bias_ref, mask_ref, _, pk, rest = split_refs(p, refs)
    if bias_ref is not None:
        do_ref, lse_ref, delta_ref, _, dq_ref, dbias_ref = rest
    else:
        (do_ref, lse_ref, delta_ref, dq_ref), dbias_ref = rest, None
    bq, bk = c.block_q, c.block_k
    qi = p.q_len_pad // bq - 1 - pl.program_id(0)
    bh = pl.program_id(1)
    b, h = lax.div(bh, i32(p.num_q_heads)), lax.rem(bh, i32(p.num_q_heads))
    hkv = kv_head(h, p.group)
    q_first = qi * bq
    q = q_ref[b, pl.ds(q_first, bq), h, :]
    do = do_ref[b, pl.ds(q_first, bq), h, :]
    lse = lse_ref[b, h, pl.ds(q_first, bq)]
    delta = delta_ref[b, h, pl.ds(q_first, bq)]
    q_idx = q_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    bias_idx = index32(operand_index(p.bias_layout, b, h, p.group)) if bias_ref is not None else None
    mask_idx = index32(operand_index(p.mask_layout, b, h, p.group)) if mask_ref is not None else None

    def body(kb, dq, masked: bool):
        k_first = kb * bk
        k = k_ref[b, pl.ds(k_first, bk), hkv, :]
        v = v_ref[b, pl.ds(k_first, bk), hkv, :]
        if masked:  # keys no query may see (NaN-safe): only masked tiles hold them
            k, v = clean_keys(pk.key_ok(b, k_first, bk), k, v)
        s = dot(q, k, transpose_b=True)
        bias = None
        if bias_ref is not None:
            bias = bias_ref[bias_idx[0], bias_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)]
        s2, t = transform_logits(s, p.softmax_scale, p.logits_soft_cap, bias, base2=True)
        if masked:
            mask = None
            if mask_ref is not None:
                mask = mask_ref[mask_idx[0], mask_idx[1], pl.ds(q_first, bq), pl.ds(k_first, bk)]
            k_idx = k_first + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            ok = valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, mask,
                             **pk.pair_args(b, q_first, bq, k_first, bk))
            s2 = jnp.where(ok, s2, -jnp.inf)
        prob = jnp.exp2(s2 - lse[:, None])
        dp = dot(do, v, transpose_b=True)
        ds = prob * (dp - delta[:, None])
        if dbias_ref is not None:
            dbias_ref[b, h, pl.ds(q_first, bq), pl.ds(k_first, bk)] = ds
        ds = cap_gradient(ds, t)
        return dq + ds_dot(ds, k)

    bounds, whole = pk.keys_of(b, qi, key_blocks(p, q_first, bq, bk, dense=mask_ref is not None, kv_length=pk.length(b)))
    dq = walk_blocks(bounds, body, jnp.zeros((bq, p.head_dim), jnp.float32), whole)
    dq_ref[b, pl.ds(q_first, bq), h, :] = (dq * p.softmax_scale).astype(dq_ref.dtype)


def _params(c: PassBlocks):
    return plgpu.CompilerParams(num_warps=c.num_warps, num_stages=c.num_stages)


def dkv_call(p: Plan, c: PassBlocks, q, k, v, bias, mask, do, lse2, delta, q_ids=None, kv_ids=None, lengths=None):
    """``(dk, dv)`` for padded operands; ``lse2`` (``recompute_lse``'s form) and ``delta`` are ``[B, Hq, Sq]``
    float32; the segment ids and key lengths are ``packing.packing_operands``'."""
    operands = [x for x in (q, k, v, bias, mask) if x is not None]
    operands += [*packing_operands(p, c, q_ids, kv_ids, lengths, loop="queries"), do, lse2, delta]
    return pl.pallas_call(
        functools.partial(_dkv_kernel, p=p, c=c),
        grid=(p.kv_len_pad // c.block_k, p.batch * p.num_kv_heads),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        compiler_params=_params(c),
        interpret=p.interpret,
        name="ejk_flash_dkv",
    )(*operands)


def dq_call(p: Plan, c: PassBlocks, q, k, v, bias, mask, do, lse2, delta, q_ids=None, kv_ids=None, lengths=None):
    """``(dq, dbias_full)``; ``dbias_full [B, Hq, Sq, Skv]`` float32 is ``None`` without a bias."""
    operands = [x for x in (q, k, v, bias, mask) if x is not None]
    operands += [*packing_operands(p, c, q_ids, kv_ids, lengths), do, lse2, delta]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    aliases = {}
    if bias is not None:
        full = (p.batch, p.num_q_heads, p.q_len_pad, p.kv_len_pad)
        aliases = {len(operands): 1}
        operands.append(jnp.zeros(full, jnp.float32))
        out_shape.append(jax.ShapeDtypeStruct(full, jnp.float32))
    outs = pl.pallas_call(
        functools.partial(_dq_kernel, p=p, c=c),
        grid=(p.q_len_pad // c.block_q, p.batch * p.num_q_heads),
        out_shape=tuple(out_shape),
        input_output_aliases=aliases,
        compiler_params=_params(c),
        interpret=p.interpret,
        name="ejk_flash_dq",
    )(*operands)
    return outs[0], (outs[1] if bias is not None else None)
