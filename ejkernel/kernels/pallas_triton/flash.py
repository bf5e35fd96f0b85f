"""The differentiable flash attention on padded operands: ``custom_vjp`` around the three kernels.

``flash_with_lse(problem, config, q, k, v, bias, mask, sinks)`` takes operands already cast to the compute
dtype and padded (sequences to block multiples, head dims to powers of 2; the interface does that) and
returns the padded output and the natural-log log-sum-exp ``[B, Sq, Hq]`` (``-inf`` for an empty row:
``merge``'s convention). Gradients flow to q, k, v, bias and sinks; the sinks' gradient needs no kernel
(``sinks.sink_gradient``) and the bias gradient is summed to its layout by ``layouts.reduce_to_layout``.

``decode_with_lse`` is the same function for few query rows (decoding): its forward folds the GQA group
into the query rows (each K/V block is read once per kv head, not once per query head) and splits the
keys over several programs whose float32 partials are merged here (``merge.merge_many``, then
``merge.add_sinks``); its backward is ``flash_with_lse``'s.
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
from ejkernel.ops.attention.layouts import reduce_to_layout
from ejkernel.ops.attention.logits import LOG2E
from ejkernel.ops.attention.merge import add_sinks, merge_many, recompute_lse
from ejkernel.ops.attention.sinks import sink_gradient, sinks_lse

__all__ = ["flash_with_lse", "decode_with_lse", "flash_backward", "pad_axis"]


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
    """The kernels' base-2 ``lse2 [B, Hq, Sq]`` as the natural-log ``lse [B, Sq, Hq]`` (``-inf`` stays)."""
    return (lse2 / LOG2E).transpose(0, 2, 1)


def _kernel_lse(lse2, p: Plan):
    """The ``lse2`` the backward kernels recompute ``p = exp2(s2 - lse2)`` from (``merge.recompute_lse``).

    Padded rows count as empty too: the forward visits keys for real rows only, so a padded row may hold
    nothing but the sinks, whose lse can sit so far below ``s2 = 0`` that ``p`` overflows (``inf * 0``).
    """
    real = jnp.arange(p.q_len_pad, dtype=jnp.int32) < p.q_len
    return recompute_lse(jnp.where(real, lse2, -jnp.inf))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def flash_with_lse(p: Plan, c: BlockSizes, q, k, v, bias, mask, sinks, packing=(None, None, None)):
    """``packing``: ``(q_ids, kv_ids, lengths)`` padded int32 (``interface``), ``None`` where absent."""
    out, lse2 = forward_call(p, c.forward, q, k, v, bias, mask, None if sinks is None else _sinks2(sinks, p), *packing)
    return out, _natural_lse(lse2)


def _forward(p, c, q, k, v, bias, mask, sinks, packing=(None, None, None)):
    out, lse2 = forward_call(p, c.forward, q, k, v, bias, mask, None if sinks is None else _sinks2(sinks, p), *packing)
    return (out, _natural_lse(lse2)), (q, k, v, bias, mask, sinks, packing, out, lse2)


def flash_backward(p: Plan, c: BlockSizes, residuals, cotangents):
    """The cotangents ``(dq, dk, dv, dbias, None, dsinks, packing's)`` of ``flash_with_lse``'s padded operands.

    ``residuals = (q, k, v, bias, mask, sinks, packing, out, lse2)``: the forward's padded operands, its
    padded output and base-2 ``lse2 [B, Hq, Sq_pad]``; ``cotangents = (d_out, d_lse)`` of the padded
    output and natural-log ``lse [B, Sq_pad, Hq]``. Any forward that produces those (this backend's, or
    another one's, e.g. ``pallas_mosaic_gpu``) can take its gradients here; only ``c.dkv`` and ``c.dq`` are used.
    """
    q, k, v, bias, mask, sinks, packing, out, lse2 = residuals
    d_out, d_lse = cotangents
    d_out = d_out.astype(q.dtype)
    # delta = rowsum(dO * O) (FlashAttention-2's preprocessing), [B, Hq, Sq] float32, fused by XLA.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    # A cotangent on the lse adds d_lse * p to dS: the same as shifting delta by -d_lse.
    delta = delta - jnp.where(jnp.isfinite(lse2), d_lse.astype(jnp.float32).transpose(0, 2, 1), 0.0)
    pk = dataclasses.replace(p, num_sinks=0)
    lse2_kernel = _kernel_lse(lse2, p)
    dk, dv = dkv_call(pk, c.dkv, q, k, v, bias, mask, d_out, lse2_kernel, delta, *packing)
    dq, dbias_full = dq_call(pk, c.dq, q, k, v, bias, mask, d_out, lse2_kernel, delta, *packing)
    dbias = None if bias is None else reduce_to_layout(dbias_full, bias.shape, p.num_q_heads).astype(bias.dtype)
    dsinks = None
    if sinks is not None:  # real rows only, lse in natural log
        dsinks = sink_gradient(sinks, lse2[:, :, : p.q_len] / LOG2E, delta[:, :, : p.q_len])
    return dq, dk, dv, dbias, None, dsinks, _no_cotangent(packing)


def _no_cotangent(packing):
    """The (absent) cotangents of the integer packing operands."""
    return tuple(None for _ in packing)


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


def _unpack_rows(x, p: Plan):
    """``[B, rows_pad, Hkv, ...]`` in the packed row order ``(position, group member)`` as ``[B, Sq, Hq, ...]``."""
    b, sq, g, hkv = p.batch, p.q_len, p.group, p.num_kv_heads
    x = x[:, : sq * g].reshape(b, sq, g, hkv, *x.shape[3:])
    return jnp.swapaxes(x, 2, 3).reshape(b, sq, p.num_q_heads, *x.shape[4:])


def _decode_forward(p: Plan, pp: Plan, c: BlockSizes, q, k, v, bias, mask, sinks, packing):
    """Standard-layout ``(out [B, Sq_pad, Hq, Dv], lse [B, Sq_pad, Hq])`` through the packed problem ``pp``;
    ``lse`` in natural log, padded rows empty. ``packing`` holds key lengths only (``interface.decode_plan``
    sends calls with segment ids to the ordinary kernels)."""
    b, sq, g, hkv = p.batch, p.q_len, p.group, p.num_kv_heads
    qp = q[:, :sq].reshape(b, sq, hkv, g, -1).transpose(0, 1, 3, 2, 4).reshape(b, sq * g, hkv, -1)
    if bias is not None:
        bias = _pack_rows(bias, p, pp, p.bias_layout[1] == "q")
    if mask is not None:
        mask = _pack_rows(mask, p, pp, p.mask_layout[1] == "q")
    out, lse2 = forward_call(pp, c.forward, pad_axis(qp, 1, pp.q_len_pad), k, v, bias, mask, None, *packing)
    lse = jnp.swapaxes(lse2 / LOG2E, -1, -2)  # [splits?, B, rows, Hkv], as out without Dv
    if pp.kv_splits > 1:
        out, lse = merge_many(out, lse)
    out, lse = _unpack_rows(out, p), _unpack_rows(lse, p)
    if sinks is not None:  # folded in once per row, after the keys
        out, lse = add_sinks(out, lse, sinks_lse(sinks, p.num_q_heads)[None, None, :])
    return pad_axis(out.astype(q.dtype), 1, p.q_len_pad), pad_axis(lse, 1, p.q_len_pad, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def decode_with_lse(p: Plan, pp: Plan, c: BlockSizes, q, k, v, bias, mask, sinks, packing=(None, None, None)):
    """``flash_with_lse``, its forward computed through the packed, key-split problem ``pp``."""
    return _decode_forward(p, pp, c, q, k, v, bias, mask, sinks, packing)


def _decode_fwd(p, pp, c, q, k, v, bias, mask, sinks, packing=(None, None, None)):
    out, lse = _decode_forward(p, pp, c, q, k, v, bias, mask, sinks, packing)
    return (out, lse), (q, k, v, bias, mask, sinks, packing, out, (lse * LOG2E).transpose(0, 2, 1))


def _decode_bwd(p, pp, c, residuals, cotangents):
    del pp
    return flash_backward(p, c, residuals, cotangents)


decode_with_lse.defvjp(_decode_fwd, _decode_bwd)


flash_with_lse.defvjp(_forward, flash_backward)
