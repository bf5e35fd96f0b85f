"""The differentiable flash attention on padded operands: the Mosaic-GPU forward, the Triton backward.

``flash_with_lse(p, c, q, k, v)`` takes operands already cast to the compute dtype and padded (sequences
to block multiples, head dims to ``blocks.HEAD_DIMS``; the interface does that) and returns the padded
output and the natural-log log-sum-exp ``[B, Sq, Hq]`` (``-inf`` for an empty row: ``merge``'s
convention), differentiable in both.

**The backward is the Triton backend's for now**: ``pallas_triton.flash.flash_backward`` (its dK/dV and dQ
kernels, deterministic, with the same causal/window block skipping) runs on this forward's output and
lse. A Hopper-native backward is a later step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from ejkernel.kernels.pallas_mosaic_gpu.blocks import ForwardBlocks
from ejkernel.kernels.pallas_mosaic_gpu.forward import forward_call
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.kernels.pallas_triton import plan as triton_plan
from ejkernel.kernels.pallas_triton.blocks import BlockSizes
from ejkernel.kernels.pallas_triton.flash import flash_backward
from ejkernel.ops.attention.logits import LOG2E

__all__ = ["Blocks", "flash_with_lse", "triton_plan_of"]


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The forward's blocks and the (Triton) backward's."""

    forward: ForwardBlocks
    backward: BlockSizes


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
        interpret=p.interpret,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def flash_with_lse(p: Plan, c: Blocks, q, k, v):
    out, lse = forward_call(p, c.forward, q, k, v)
    return out, lse.transpose(0, 2, 1)


def _forward(p: Plan, c: Blocks, q, k, v):
    out, lse = forward_call(p, c.forward, q, k, v)
    residuals = (q, k, v, None, None, None, (None, None, None), out, lse * LOG2E)
    return (out, lse.transpose(0, 2, 1)), residuals


def _backward(p: Plan, c: Blocks, residuals, cotangents):
    dq, dk, dv, *_ = flash_backward(triton_plan_of(p), c.backward, residuals, cotangents)
    return dq, dk, dv


flash_with_lse.defvjp(_forward, _backward)
