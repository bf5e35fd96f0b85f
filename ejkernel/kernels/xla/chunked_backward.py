"""Backward pass of the chunked XLA attention: recompute each tile from the saved log-sum-exp.

An outer scan over kv chunks carries dQ (and dBias) whole, O(S); for each kv chunk an inner loop over
the q chunks that causal/window leave an allowed pair in accumulates that chunk's dK and dV. Per tile,
with ``P = exp(logits - lse)`` (dropout factor ``Z``, zero when dropped, ``1/(1-p)`` when kept):

    dV += (P*Z)^T dO        dLogits = P * (Z * (dO V^T) - delta),   delta = rowsum(dO * O) - dlse
    dQ += dS K,  dK += dS^T Q    with dS = dLogits * scale (* (1 - tanh^2) under the soft cap)

and a sink logit ``a`` gets ``-sum over rows of exp(a - lse) * delta``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import Array, lax

from ejkernel.kernels.xla.chunked_tiles import (
    Plan,
    block_start,
    chunk_slice,
    dropout_scale,
    operand_tile,
    packing_of,
    q_chunk_range,
    skip_unless,
    tile_has_pairs,
    tile_logits,
    tile_valid,
    unchunk,
    varying_zero,
)
from ejkernel.ops.attention.layouts import reduce_to_layout
from ejkernel.ops.attention.logits import cap_gradient
from ejkernel.ops.attention.precision import matmul_precision, score_gradient_dtype
from ejkernel.ops.attention.sinks import sink_gradient

__all__ = ["backward"]


def _matmul(a: Array, b: Array, spec: str, dtype: Any, compute_dtype: Any = None) -> Array:
    """``einsum(spec)`` of ``a`` and ``b`` cast to ``dtype``, float32 accumulation, at the precision of the
    call's ``compute_dtype`` (``dtype`` when not given)."""
    precision = matmul_precision(dtype if compute_dtype is None else compute_dtype)
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32, precision=precision)


def _add_at(x: Array, update: Array, starts: tuple[Any, ...]) -> Array:
    """``x[starts : starts + update.shape] += update``."""
    starts = tuple(jnp.asarray(start, jnp.int32) for start in starts)  # one index type, also under x64
    current = lax.dynamic_slice(x, starts, update.shape)
    return lax.dynamic_update_slice(x, current + update, starts)


def backward(p: Plan, residuals: tuple, cotangents: tuple[Array, Array]) -> tuple:
    """Cotangents of ``(qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths)`` for the chunked core."""
    qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths, out, lse = residuals
    pk = packing_of(q_ids, kv_ids, lengths, p)
    d_out, d_lse = cotangents
    # A cotangent wider than its output (a float64 one under x64 for a float32 call) is taken at the output's
    # dtype, so that every accumulator keeps one dtype.
    d_out, d_lse = d_out.astype(out.dtype), d_lse.astype(lse.dtype)
    dtype = jnp.dtype(p.dtype)
    ds_dtype = score_gradient_dtype(dtype)
    b, hkv, g = p.batch, p.num_kv_heads, p.group
    d, dv = qh.shape[-1], vh.shape[-1]
    # d lse / d logit = P, so an lse cotangent only shifts delta.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - d_lse
    # lse is held as held_lse: p = exp(s - lse) is 0 on a row that saw no key (and no sink).
    zero = varying_zero(qh, kh, vh, bias, mask, rng, out, lse, d_out, d_lse)  # the carries' type under shard_map

    def kv_chunk(carry: tuple[Array, Array | None], c: Array):
        k_start = block_start(c, p.block_kv, p.kv_len)
        k_tile = chunk_slice(kh, k_start, p.block_kv, 2)
        v_tile = chunk_slice(vh, k_start, p.block_kv, 2)

        def q_step(i: Array, inner: tuple) -> tuple:
            dk, dv_acc, dq, dbias = inner
            q_start = block_start(i, p.block_q, p.q_len)
            q_tile = chunk_slice(qh, q_start, p.block_q, 3)
            do_tile = chunk_slice(d_out, q_start, p.block_q, 3)
            s, th = tile_logits(q_tile, k_tile, operand_tile(bias, q_start, k_start, p), p)
            valid = tile_valid(i, c, q_start, k_start, operand_tile(mask, q_start, k_start, p), p, pk)
            probs = jnp.exp(s - chunk_slice(lse, q_start, p.block_q, 3)[..., None])
            if valid is not None:
                probs = jnp.where(valid, probs, 0.0)
            dp = _matmul(do_tile.reshape(b, hkv, g * p.block_q, -1), v_tile, "bhqd,bhkd->bhqk", dtype)
            dp = dp.reshape(b, hkv, g, p.block_q, -1)
            kept = probs
            if p.dropout_prob:
                z = dropout_scale(rng, i, c, p)
                dp, kept = dp * z, probs * z
            dlogits = probs * (dp - chunk_slice(delta, q_start, p.block_q, 3)[..., None])
            if bias is not None:
                full = dlogits.reshape(b, hkv * g, p.block_q, -1)
                dbias = _add_at(dbias, reduce_to_layout(full, bias.shape, hkv * g), (0, 0, q_start, k_start))
            ds = cap_gradient(dlogits, th)
            ds = (ds * jnp.float32(p.scale)).reshape(b, hkv, g * p.block_q, -1)
            dq_tile = _matmul(ds, k_tile, "bhqk,bhkd->bhqd", ds_dtype, dtype).reshape(b, hkv, g, p.block_q, d)
            dq = _add_at(dq, dq_tile, (0, 0, 0, q_start, 0))
            # Transposed explicitly: XLA's CPU dot runs several times slower contracting the rows of both.
            ds_t = jnp.swapaxes(ds.astype(ds_dtype), -1, -2)
            dk = dk + _matmul(ds_t, q_tile.reshape(b, hkv, g * p.block_q, d), "bhkq,bhqd->bhkd", ds_dtype, dtype)
            kept_t = jnp.swapaxes(kept.reshape(b, hkv, g * p.block_q, -1).astype(dtype), -1, -2)
            dv_acc = dv_acc + _matmul(kept_t, do_tile.reshape(b, hkv, g * p.block_q, dv), "bhkq,bhqd->bhkd", dtype)
            return dk, dv_acc, dq, dbias

        first, stop = q_chunk_range(c, p, pk)
        dq, dbias = carry
        init = (
            jnp.zeros((b, hkv, p.block_kv, d), jnp.float32) + zero,
            jnp.zeros((b, hkv, p.block_kv, dv), jnp.float32) + zero,
            dq,
            dbias,
        )
        step = skip_unless(lambda i: tile_has_pairs(i, c, pk), q_step)
        dk, dv_acc, dq, dbias = lax.fori_loop(first, stop, step, init)
        return (dq, dbias), (dk, dv_acc)

    init = (
        jnp.zeros(qh.shape, jnp.float32) + zero,
        None if bias is None else jnp.zeros(bias.shape, jnp.float32) + zero,
    )
    (dq, dbias), (dk, dv_out) = lax.scan(kv_chunk, init, jnp.arange(p.num_kv_blocks))
    dk = unchunk(dk, p.kv_len, 2)
    dv_out = unchunk(dv_out, p.kv_len, 2)

    daux = None
    if aux is not None:
        hq = hkv * g
        daux = sink_gradient(aux, lse.reshape(b, hq, p.q_len), delta.reshape(b, hq, p.q_len))

    return (
        dq.astype(qh.dtype),
        dk.astype(kh.dtype),
        dv_out.astype(vh.dtype),
        None if bias is None else dbias.astype(bias.dtype),
        None,
        daux,
        None,
        None,
        None,
        None,
    )
