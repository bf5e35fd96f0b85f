"""The differentiable flash attention on padded operands: ``custom_vjp`` around the three kernels.

``flash_with_lse(problem, config, q, k, v, bias, mask, sinks)`` takes operands already cast to the compute
dtype and padded (sequences to block multiples, head dims to powers of 2; the interface does that) and
returns the padded output and the natural-log log-sum-exp ``[B, Sq, Hq]``. Gradients flow to q, k, v,
bias and sinks; the sinks' gradient needs no kernel: ``d sink_j = -sum_rows exp(sink_j - lse) * delta``.

``decode_with_lse`` is the same function for few query rows (decoding): its forward folds the GQA group
into the query rows (each K/V block is read once per kv head, not once per query head) and splits the
keys over several programs whose float32 partials are merged here; its backward is ``flash_with_lse``'s.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ejkernel.kernels.pallas_triton.backward import dkv_call, dq_call
from ejkernel.kernels.pallas_triton.blocks import BlockSizes
from ejkernel.kernels.pallas_triton.forward import forward_call
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.kernels.pallas_triton.tiles import LOG2E
from ejkernel.ops.attention.merge import add_sinks

__all__ = ["flash_with_lse", "decode_with_lse", "pad_axis"]


def pad_axis(x, axis: int, size: int, value=0):
    """``x`` padded with ``value`` at the end of ``axis`` up to ``size`` (unchanged when already there)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _sinks2(sinks, p: Plan):
    """``[Hq, n]`` float32 sinks in base 2, padded with ``-inf`` to the kernel's power-of-2 width."""
    return pad_axis(sinks.astype(jnp.float32) * LOG2E, 1, p.num_sinks, -jnp.inf)


def _natural_lse(lse2):
    return jnp.where(jnp.isposinf(lse2), -jnp.inf, lse2 / LOG2E).transpose(0, 2, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def flash_with_lse(p: Plan, c: BlockSizes, q, k, v, bias, mask, sinks):
    out, lse2 = forward_call(p, c.forward, q, k, v, bias, mask, None if sinks is None else _sinks2(sinks, p))
    return out, _natural_lse(lse2)


def _forward(p, c, q, k, v, bias, mask, sinks):
    out, lse2 = forward_call(p, c.forward, q, k, v, bias, mask, None if sinks is None else _sinks2(sinks, p))
    return (out, _natural_lse(lse2)), (q, k, v, bias, mask, sinks, out, lse2)


def _backward(p: Plan, c: BlockSizes, residuals, cotangents):
    q, k, v, bias, mask, sinks, out, lse2 = residuals
    d_out, d_lse = cotangents
    d_out = d_out.astype(q.dtype)
    # delta = rowsum(dO * O) (FlashAttention-2's preprocessing), [B, Hq, Sq] float32, fused by XLA.
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    # A cotangent on the lse adds d_lse * p to dS: the same as shifting delta by -d_lse.
    lse_used = jnp.isfinite(lse2)
    delta = delta - jnp.where(lse_used, d_lse.astype(jnp.float32).transpose(0, 2, 1), 0.0)
    pk = dataclasses.replace(p, num_sinks=0)
    dk, dv = dkv_call(pk, c.dkv, q, k, v, bias, mask, d_out, lse2, delta)
    dq, dbias_full = dq_call(pk, c.dq, q, k, v, bias, mask, d_out, lse2, delta)
    dbias = None if bias is None else _reduce_to(dbias_full, bias.shape, p).astype(bias.dtype)
    dsinks = None
    if sinks is not None:
        rows = lse_used[:, :, : p.q_len]  # [B, Hq, Sq]: real rows with a denominator
        lse = jnp.where(rows, lse2[:, :, : p.q_len] / LOG2E, 0.0)
        weight = jnp.where(rows, delta[:, :, : p.q_len], 0.0)
        prob = jnp.exp(sinks.astype(jnp.float32)[None, :, None, :] - lse[..., None])  # [B, Hq, Sq, n]
        dsinks = -jnp.einsum("bhqn,bhq->hn", prob, weight).astype(sinks.dtype)
    return dq, dk, dv, dbias, None, dsinks


def _merge_splits(out, lse2):
    """Merges ``[n, B, R, H, Dv]`` float32 partials with base-2 ``lse2 [n, B, H, R]`` (``+inf`` = empty)."""
    lse2 = jnp.where(jnp.isposinf(lse2), -jnp.inf, lse2)
    top = jnp.max(lse2, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weight = jnp.exp2(lse2 - top)  # 0 for an empty split
    total = jnp.sum(weight, axis=0)
    some = total > 0
    weight = weight / jnp.where(some, total, 1.0)
    out = jnp.einsum("nbrhd,nbhr->brhd", out, weight)
    return out, jnp.where(some, top + jnp.log2(jnp.where(some, total, 1.0)), jnp.inf)


def _pack_rows(x, p: Plan, pp: Plan, per_q_head: bool):
    """A ``[B|1, H|1, Sq_pad, Skv_pad]`` bias or mask in the packed row order ``(position, group member)``."""
    sq, g = p.q_len, p.group
    x = x[:, :, :sq]
    if per_q_head:  # [b, Hq, Sq, Skv] -> [b, Hkv, Sq, G, Skv]
        x = x.reshape(x.shape[0], p.num_kv_heads, g, sq, -1).transpose(0, 1, 3, 2, 4)
    else:  # one row per position, shared by the group
        x = jnp.broadcast_to(x[:, :, :, None, :], (*x.shape[:3], g, x.shape[-1]))
    x = x.reshape(x.shape[0], x.shape[1], sq * g, -1)
    return pad_axis(x, 2, pp.q_len_pad, False if x.dtype == jnp.bool_ else 0)


def _decode_forward(p: Plan, pp: Plan, c: BlockSizes, q, k, v, bias, mask, sinks):
    """Standard-layout ``(out [B, Sq_pad, Hq, Dv], lse2 [B, Hq, Sq_pad])`` through the packed problem ``pp``."""
    b, sq, g, hkv = p.batch, p.q_len, p.group, p.num_kv_heads
    rows = sq * g
    qp = q[:, :sq].reshape(b, sq, hkv, g, -1).transpose(0, 1, 3, 2, 4).reshape(b, rows, hkv, -1)
    if bias is not None:
        bias = _pack_rows(bias, p, pp, p.bias_layout[1] == "q")
    if mask is not None:
        mask = _pack_rows(mask, p, pp, p.mask_layout[1] == "q")
    out, lse2 = forward_call(pp, c.forward, pad_axis(qp, 1, pp.q_len_pad), k, v, bias, mask, None)
    if pp.kv_splits > 1:
        out, lse2 = _merge_splits(out, lse2)
    out = out[:, :rows].reshape(b, sq, g, hkv, -1).transpose(0, 1, 3, 2, 4).reshape(b, sq, p.num_q_heads, -1)
    lse2 = lse2[:, :, :rows].reshape(b, hkv, sq, g).transpose(0, 1, 3, 2).reshape(b, p.num_q_heads, sq)
    if sinks is not None:  # folded in once per row, after the keys (merge.add_sinks, in natural log)
        lse = jnp.where(jnp.isposinf(lse2), -jnp.inf, lse2 / LOG2E).transpose(0, 2, 1)
        sinks_lse = jax.nn.logsumexp(sinks.astype(jnp.float32), axis=-1)
        out, lse = add_sinks(out, lse, sinks_lse[None, None, :])
        lse2 = jnp.where(jnp.isneginf(lse), jnp.inf, lse * LOG2E).transpose(0, 2, 1)
    out = pad_axis(out.astype(q.dtype), 1, p.q_len_pad)
    return out, pad_axis(lse2, 2, p.q_len_pad, jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def decode_with_lse(p: Plan, pp: Plan, c: BlockSizes, q, k, v, bias, mask, sinks):
    """``flash_with_lse``, its forward computed through the packed, key-split problem ``pp``."""
    out, lse2 = _decode_forward(p, pp, c, q, k, v, bias, mask, sinks)
    return out, _natural_lse(lse2)


def _decode_fwd(p, pp, c, q, k, v, bias, mask, sinks):
    out, lse2 = _decode_forward(p, pp, c, q, k, v, bias, mask, sinks)
    return (out, _natural_lse(lse2)), (q, k, v, bias, mask, sinks, out, lse2)


def _decode_bwd(p, pp, c, residuals, cotangents):
    del pp
    return _backward(p, c, residuals, cotangents)


decode_with_lse.defvjp(_decode_fwd, _decode_bwd)


def _reduce_to(full, shape, p: Plan):
    """Sums ``[B, Hq, Sq', Skv']`` to a bias shape ``[B|1, Hq|Hkv|1, Sq', Skv']``."""
    if shape[0] == 1:
        full = full.sum(0, keepdims=True)
    if shape[1] == 1:
        full = full.sum(1, keepdims=True)
    elif shape[1] != p.num_q_heads:
        b = full.shape[0]
        full = full.reshape(b, p.num_kv_heads, p.group, *full.shape[2:]).sum(2)
    return full


flash_with_lse.defvjp(_forward, _backward)
