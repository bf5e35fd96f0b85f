"""Tile math shared by the forward and backward kernels: logits of one block and which of its pairs count.

All of it runs inside a Mosaic kernel on values already loaded from VMEM refs. The logits follow DESIGN
§1 exactly: ``s = (q·k) * scale`` in float32, then ``cap * tanh(s / cap)``, then ``+ bias``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.kernels.pallas_tpu.blocks import LANES
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.ops.attention.masks import allowed

__all__ = ["MASK_VALUE", "NT", "TN", "NN", "block_logits", "block_valid", "lanes", "dot"]

# Masked logits take this finite value (never -inf, so max/exp stay NaN-free); their probabilities are
# then zeroed explicitly, so a row with no allowed key gets no weight at all.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

NN = (((1,), (0,)), ((), ()))  # a @ b
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


def dot(a: jax.Array, b: jax.Array, dims: Any, plan: Plan) -> jax.Array:
    """A float32-accumulated product of two tiles at the call's precision."""
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, precision=plan.precision)


def lanes(x: jax.Array, width: int) -> jax.Array:
    """A lane-replicated ``[rows, 128]`` statistic as ``[rows, width]``."""
    if width == LANES:
        return x
    if width < LANES:
        return x[:, :width]
    reps = -(-width // LANES)
    y = jnp.tile(x, (1, reps))
    return y if reps * LANES == width else y[:, :width]


def block_logits(q: jax.Array, k: jax.Array, bias_ref: Any, plan: Plan) -> tuple[jax.Array, jax.Array | None]:
    """Float32 logits ``[block_q, block_k]`` of one tile, and ``tanh`` of the capped ones (for the backward).

    ``bias_ref`` is the bias tile's ref, or ``None``.
    """
    s = dot(q, k, NT, plan) * jnp.float32(plan.softmax_scale)
    t = None
    if plan.logits_soft_cap is not None:
        cap = jnp.float32(plan.logits_soft_cap)
        t = jnp.tanh(s / cap)
        s = cap * t
    if bias_ref is not None:
        s = s + bias_ref[...].astype(jnp.float32)
    return s, t


def block_valid(q_block: Any, kv_block: Any, shape: tuple[int, int], mask_ref: Any, plan: Plan,
                block_q: int, block_k: int) -> jax.Array:
    """Which pairs of the ``[block_q, block_k]`` tile may attend: causal/window, real keys, and the mask."""
    q_idx = q_block * block_q + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    k_idx = kv_block * block_k + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    ok = k_idx < plan.kv_len
    rule = allowed(q_idx, k_idx, plan.q_len, plan.kv_len, plan.causal, plan.window)
    if rule is not True:
        ok = ok & rule
    if mask_ref is not None:
        # Widened first: an int8 compare yields a packed boolean layout Mosaic cannot combine with the
        # int32 iota compares (an "invalid relayout" at compile time).
        ok = ok & (mask_ref[...].astype(jnp.int32) != 0)
    return ok
