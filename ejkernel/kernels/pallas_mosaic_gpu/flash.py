"""The differentiable flash attention on padded operands: the Mosaic-GPU forward, a choice of backward.

``flash_with_lse(p, c, q, k, v, packing)`` takes operands already cast to the compute dtype and padded
(sequences to block multiples, head dims to ``blocks.HEAD_DIMS``; the interface does that), the packing
arrays ``(q_ids, kv_ids, lengths)`` (``packing.Operands``' fields, ``None`` where absent) and returns the padded
output and the natural-log log-sum-exp ``[B, Sq, Hq]`` (``-inf`` for an empty row: ``merge``'s
convention), differentiable in both.

The type of ``c.backward`` says which backward runs on this forward's output and lse:

- ``blocks.BackwardBlocks``: the native Mosaic-GPU kernels (``backward.backward_call``), the default at
  head dims up to 128 (``interface.default_backward``);
- ``pallas_triton.blocks.BlockSizes``: the Triton backend's kernels, ``pallas_triton.flash.flash_backward``
  (dK/dV and dQ, deterministic, the same causal/window skipping), the default above (D256).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from ejkernel.kernels.pallas_mosaic_gpu.backward import backward_call
from ejkernel.kernels.pallas_mosaic_gpu.blocks import BackwardBlocks, ForwardBlocks
from ejkernel.kernels.pallas_mosaic_gpu.forward import forward_call
from ejkernel.kernels.pallas_mosaic_gpu.packing import Operands
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.kernels.pallas_triton import plan as triton_plan
from ejkernel.kernels.pallas_triton.blocks import BlockSizes
from ejkernel.kernels.pallas_triton.flash import flash_backward
from ejkernel.ops.attention.logits import LOG2E

__all__ = ["Blocks", "BACKWARDS", "flash_with_lse", "triton_plan_of"]

#: The backward kernels one can choose: the Triton backend's and the native ones.
BACKWARDS = ("triton", "mosaic")


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The forward's blocks and the backward's: Triton ``BlockSizes`` or native ``BackwardBlocks``."""

    forward: ForwardBlocks
    backward: BlockSizes | BackwardBlocks

    @property
    def backward_kernels(self) -> str:
        """Which backward runs: one of ``BACKWARDS``."""
        return "mosaic" if isinstance(self.backward, BackwardBlocks) else "triton"


def triton_plan_of(p: Plan) -> triton_plan.Plan:
    """The Triton backward's plan of the same padded problem (``Dv == D``)."""
    return triton_plan.Plan(
        batch=p.batch,
        q_len=p.q_len,
        kv_len=p.kv_len,
        q_len_pad=p.q_len_pad,
        kv_len_pad=p.kv_len_pad,
        num_q_heads=p.num_q_heads,
        num_kv_heads=p.num_kv_heads,
        head_dim=p.head_dim,
        v_head_dim=p.head_dim,
        softmax_scale=p.softmax_scale,
        causal=p.causal,
        window=p.window,
        logits_soft_cap=p.logits_soft_cap,
        segments=p.segments,
        lengths=p.lengths,
        interpret=p.interpret,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def flash_with_lse(p: Plan, c: Blocks, q, k, v, ids=(None, None, None)):
    out, lse = forward_call(p, c.forward, q, k, v, Operands(*ids))
    return out, lse.transpose(0, 2, 1)


def _forward(p: Plan, c: Blocks, q, k, v, ids=(None, None, None)):
    out, lse = forward_call(p, c.forward, q, k, v, Operands(*ids))
    return (out, lse.transpose(0, 2, 1)), (q, k, v, ids, out, lse)


def _backward(p: Plan, c: Blocks, residuals, cotangents):
    q, k, v, ids, out, lse = residuals
    no_ids = tuple(None for _ in ids)  # integer operands: no cotangent
    if c.backward_kernels == "mosaic":
        return (*backward_call(p, c.backward, (q, k, v, Operands(*ids), out, lse), cotangents), no_ids)
    triton_residuals = (q, k, v, None, None, None, tuple(ids), out, lse * LOG2E)
    dq, dk, dv, *_ = flash_backward(triton_plan_of(p), c.backward, triton_residuals, cotangents)
    return dq, dk, dv, no_ids


flash_with_lse.defvjp(_forward, _backward)
