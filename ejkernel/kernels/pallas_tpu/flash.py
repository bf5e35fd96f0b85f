"""Flash attention on TPU: layout, padding, the ``custom_vjp`` tying the forward and backward kernels.

The kernels work on ``[B, H, S, D]`` arrays padded to whole blocks (``blocks`` explains why and how);
this module transposes from the library's ``[B, S, H, D]``, pads, and slices the padding away again, so
padding never reaches the caller and its gradients are dropped by autodiff of the pad itself.

The ``custom_vjp`` saves the output and the per-row log-sum-exp; its backward runs the dq and dk/dv
kernels (and the dbias kernel for a broadcast bias), and computes the sink gradient in XLA from the lse alone
(``sinks.sink_gradient``, with ``di = rowsum(o * do) - dlse``). Padded query rows are given ``lse = -inf``
there, the empty-row form: the backward kernels recompute ``p`` from ``merge.recompute_lse`` of it (0 for
those rows) and the sink gradient leaves them out.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import Array

from ejkernel.kernels.pallas_tpu.backward import flash_backward_dbias, flash_backward_dkv, flash_backward_dq
from ejkernel.kernels.pallas_tpu.blocks import LANES, round_up
from ejkernel.kernels.pallas_tpu.forward import flash_forward
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.ops.attention.merge import recompute_lse
from ejkernel.ops.attention.segments import PADDING_ID
from ejkernel.ops.attention.sinks import sink_gradient, sinks_lse

__all__ = ["flash_core", "flash_with_lse", "visit_counts", "to_kernel_layout", "from_kernel_layout"]


def to_kernel_layout(x: Array, seq_multiple: int) -> Array:
    """``[B, S, H, D]`` as ``[B, H, S_pad, D]``, zero padded along the sequence.

    Head dims are not padded: a block spans the whole head dim, which Mosaic tiles for any size
    (``compile_check`` compiles 8, 17, 33, 64, 80, 96, 100, 128, 192, 256 and 320).
    """
    x = jnp.swapaxes(x, 1, 2)
    pad_s = round_up(x.shape[2], seq_multiple) - x.shape[2]
    if pad_s:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, pad_s), (0, 0)))
    return x


def from_kernel_layout(x: Array, seq_len: int) -> Array:
    """``[B, H, S_pad, D]`` back to ``[B, S, H, D]``."""
    return jnp.swapaxes(x[:, :, :seq_len], 1, 2)


def _sink_lse(plan: Plan, sinks: Array | None) -> Array:
    """``[Hq]`` float32 for the forward's scalar prefetch: the sinks' log-sum-exp, zeros (unread) without."""
    if sinks is None:
        return jnp.zeros((plan.num_q_heads,), jnp.float32)
    return sinks_lse(sinks, plan.num_q_heads)


def _row_stat(plan: Plan, x: Array) -> Array:
    """``[B, H, S_pad]`` float32 as the kernels' lane-replicated ``[B, H, S_pad, 128]``."""
    return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


_NO_PACKING = (None, None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def flash_core(plan: Plan, q: Array, k: Array, v: Array, bias: Array | None, mask: Array | None,
               sinks: Array | None, packing: tuple = _NO_PACKING) -> tuple[Array, Array]:
    """``(out [B, Hq, Sq_pad, Dv_pad], lse [B, Hq, Sq_pad])`` of padded kernel-layout inputs.

    ``sinks`` is ``[Hq, n]`` float32 or ``None``; ``mask`` is int8 (1 = may attend) and gets no gradient;
    ``packing`` is ``(q_ids [B, Sq_pad], kv_ids [B, Skv_pad], lengths [B])`` int32 (``None`` where absent).
    """
    out, lse = flash_forward(plan, q, k, v, bias, mask, _sink_lse(plan, sinks), packing)[:2]
    return out, lse


def _core_fwd(plan, q, k, v, bias, mask, sinks, packing=_NO_PACKING):
    out, lse = flash_core(plan, q, k, v, bias, mask, sinks, packing)
    return (out, lse), (q, k, v, bias, mask, sinks, packing, out, lse)


def _core_bwd(plan: Plan, residuals, cotangents):
    q, k, v, bias, mask, sinks, packing, out, lse = residuals
    d_out, d_lse = cotangents
    di = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1) - d_lse.astype(jnp.float32)
    # Padded rows count as empty (lse = -inf), like rows that saw no key, so that neither the kernels nor the
    # sink gradient count them (a stand-in lse of 0 made exp(sink - 0) overflow for a sink above ~88.7).
    rows = jnp.arange(q.shape[2]) < plan.q_len
    lse = jnp.where(rows, lse, -jnp.inf)
    di = jnp.where(rows, di, 0.0)
    lse_tiles, di_tiles = _row_stat(plan, recompute_lse(lse)), _row_stat(plan, di)
    d_out = d_out.astype(v.dtype)
    dq, ds = flash_backward_dq(plan, q, k, v, bias, mask, d_out, lse_tiles, di_tiles, packing)
    dk, dv = flash_backward_dkv(plan, q, k, v, bias, mask, d_out, lse_tiles, di_tiles, packing)
    d_bias = ds
    if bias is not None and d_bias is None:
        d_bias = flash_backward_dbias(plan, q, k, v, bias, mask, d_out, lse_tiles, di_tiles, packing)
    d_sinks = None if sinks is None else sink_gradient(sinks, lse, di)
    return dq, dk, dv, d_bias, None, d_sinks, tuple(None for _ in packing)


flash_core.defvjp(_core_fwd, _core_bwd)


def pad_packing(plan: Plan, packing: tuple, q_pad: int, kv_pad: int) -> tuple:
    """``(q_ids, kv_ids, lengths)`` with the ids padded with ``-1`` (padding) to the kernels' lengths."""
    q_ids, kv_ids, lengths = packing

    def pad(x, size):
        return None if x is None else jnp.pad(x, ((0, 0), (0, size - x.shape[1])), constant_values=PADDING_ID)

    return pad(q_ids, q_pad), pad(kv_ids, kv_pad), lengths


def flash_with_lse(plan: Plan, query: Array, key: Array, value: Array, bias: Array | None,
                   mask: Array | None, sinks: Array | None, packing: tuple = _NO_PACKING) -> tuple[Array, Array]:
    """Library layout in and out: ``(out [B, Sq, Hq, Dv], lse [B, Sq, Hq])``; inputs already in the compute dtype.

    ``bias``/``mask`` are ``[B|1, Hq|Hkv|1, Sq, Skv]`` (mask boolean), ``sinks`` ``[Hq, n]`` or ``None``,
    ``packing`` ``(q_ids [B, Sq], visible kv_ids [B, Skv], lengths [B])`` int32 (``None`` where absent).
    """
    qm, km = plan.blocks.q_multiple, plan.blocks.kv_multiple
    q, k, v = to_kernel_layout(query, qm), to_kernel_layout(key, km), to_kernel_layout(value, km)
    pad_q, pad_k = q.shape[2] - plan.q_len, k.shape[2] - plan.kv_len

    def pad_operand(x: Array | None) -> Array | None:
        if x is None or not (pad_q or pad_k):
            return x
        return jnp.pad(x, ((0, 0), (0, 0), (0, pad_q), (0, pad_k)))

    bias_p = pad_operand(bias)
    mask_p = pad_operand(None if mask is None else mask.astype(jnp.int8))
    packing = pad_packing(plan, packing, q.shape[2], k.shape[2])
    out, lse = flash_core(plan, q, k, v, bias_p, mask_p, sinks, packing)
    return from_kernel_layout(out, plan.q_len), jnp.swapaxes(lse[:, :, : plan.q_len], 1, 2)


def visit_counts(plan: Plan, query: Array, key: Array, value: Array, packing: tuple = _NO_PACKING) -> Array:
    """The forward kernel's own count of visited tiles, ``[B, Hq, num_q_blocks]`` (no bias, mask or sinks;
    ``packing`` as ``flash_with_lse``'s)."""
    plan = dataclasses.replace(plan, count_visits=True)
    q = to_kernel_layout(query, plan.blocks.q_multiple)
    k = to_kernel_layout(key, plan.blocks.kv_multiple)
    v = to_kernel_layout(value, plan.blocks.kv_multiple)
    packing = pad_packing(plan, packing, q.shape[2], k.shape[2])
    return flash_forward(plan, q, k, v, None, None, _sink_lse(plan, None), packing)[2]
