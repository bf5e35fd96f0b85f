"""Tile helpers shared by the forward and backward kernels; each calls the shared rule it applies.

All of it runs inside a Mosaic kernel on values already loaded from VMEM refs: the logits of a tile
(``logits.transform_logits``), which of its pairs count (``masks.valid_pairs``), whether a tile is visited
and needs a mask (``blocks``, built on ``masks.key_blocks``), and the two branches a visited tile runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ejkernel.kernels.pallas_tpu import blocks as blk
from ejkernel.kernels.pallas_tpu.blocks import LANES
from ejkernel.kernels.pallas_tpu.packing import NO_PACKING, Packing
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.ops.attention.logits import transform_logits
from ejkernel.ops.attention.masks import valid_pairs

__all__ = [
    "MASK_VALUE", "NT", "TN", "NN", "block_logits", "block_valid", "tile_predicates", "when_visited", "lanes", "dot",
]

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
    bias = None if bias_ref is None else bias_ref[...]
    return transform_logits(dot(q, k, NT, plan), plan.softmax_scale, plan.logits_soft_cap, bias)


def block_valid(q_block: Any, kv_block: Any, shape: tuple[int, int], mask_ref: Any, plan: Plan,
                block_q: int, block_k: int, pk: Packing = NO_PACKING, b: Any = None) -> jax.Array:
    """Which pairs of the ``[block_q, block_k]`` tile count: real keys, causal/window, the mask, and the
    segment ids and key length of batch row ``b`` (``pk``)."""
    q_idx = q_block * block_q + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    k_idx = kv_block * block_k + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    # The int8 mask is widened first: an int8 compare yields a packed boolean layout Mosaic cannot combine
    # with the int32 iota compares (an "invalid relayout" at compile time).
    mask = None if mask_ref is None else mask_ref[...].astype(jnp.int32) != 0
    return valid_pairs(q_idx, k_idx, plan.q_len, plan.kv_len, plan.causal, plan.window, mask, **pk.pair_args(b))


def tile_predicates(q_block: Any, kv_block: Any, block_q: int, block_k: int, plan: Plan,
                    pk: Packing = NO_PACKING, b: Any = None) -> tuple[Any, Any]:
    """``(visited, needs a mask)`` of one ``[block_q, block_k]`` tile; the second is a Python bool when it
    is the same for every visited tile of the grid (``blocks.uniform_mask_need``). With segment ids or key
    lengths (``pk``, batch row ``b``) both are traced: the length ends the visited blocks and cuts the
    interior, and the ids' ranges skip tiles and leave unmasked only those they fully allow."""
    args = (block_q, block_k, plan.q_len, plan.kv_len, plan.causal, plan.window)
    has_mask = plan.mask_layout is not None
    length = pk.scalars.length(b)
    visit = blk.block_visited(q_block, kv_block, *args, kv_length=length)
    needs_mask = None if (plan.segments or plan.lengths) else blk.uniform_mask_need(*args, has_mask)
    if needs_mask is None:
        needs_mask = blk.block_needs_mask(q_block, kv_block, *args, has_mask, kv_length=length)
    relation = pk.scalars.relation(b, q_block, kv_block)
    if relation is not None:
        some, every = relation
        visit, needs_mask = visit & some, needs_mask | jnp.logical_not(every)
    return visit, needs_mask


def when_visited(visit: Any, needs_mask: Any, step) -> None:
    """Runs ``step(masked)`` on a visited tile: one branch when ``needs_mask`` is static, else two."""
    if needs_mask is True or needs_mask is False:
        pl.when(visit)(lambda: step(needs_mask))
    else:
        pl.when(visit & needs_mask)(lambda: step(True))
        pl.when(visit & jnp.logical_not(needs_mask))(lambda: step(False))
