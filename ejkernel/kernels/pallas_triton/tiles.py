"""What the three kernels share beyond the shared rules: the plan's view of the block ranges, and dots.

Logits are kept in base 2 (``logits.transform_logits(..., base2=True)``) so the softmax uses ``exp2``.
Masked entries are ``-inf`` and the running max starts at a finite ``NEG_INIT``, so a row that has seen no
allowed key keeps ``p = exp2(-inf - NEG_INIT) = 0`` with no extra select on the fast path.

Block ranges are ``masks.key_blocks``/``query_blocks`` on the plan's sizes (``docs/design.rst``, Kernels);
the one local adaptation is the decoding layout, which packs ``p.pack`` query rows per position: rows map
to positions by ``row // pack`` before the shared rule sees them. Every index is int32, also under
``jax_enable_x64`` (a Python int beside a traced int32 in ``lax.div`` would be int64 there).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from ejkernel.kernels.pallas_triton.packing import pop_packing_refs
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.ops.attention import masks
from ejkernel.ops.attention.precision import matmul_precision, score_gradient_dtype

__all__ = ["dot", "ds_dot", "NEG_INIT", "i32", "index32", "positions", "key_blocks", "query_blocks", "split_refs"]

NEG_INIT = -1e30  # initial running max: below every finite logit, above -inf


def dot(a: Any, b: Any, transpose_b: bool = False, compute_dtype: Any = None) -> Any:
    """``a @ b`` (``a @ b.T`` with ``transpose_b``) accumulated in float32, at ``precision.matmul_precision``
    of ``compute_dtype`` (the operands' dtype when not given): IEEE float32 for a float32 call (Triton's own
    default would be TF32, ~1e-3 error) unless the user asked for TF32 with ``jax.default_matmul_precision``;
    TF32 for the float32 operands of a float16 call's score-gradient products."""
    precision = matmul_precision(a.dtype if compute_dtype is None else compute_dtype)
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def ds_dot(ds: Any, x: Any) -> Any:
    """``ds @ x`` for a float32 score-gradient tile ``ds`` and a tile ``x`` of the call's dtype, with the
    operands ``precision.score_gradient_dtype`` gives (float32 for float16)."""
    dtype = score_gradient_dtype(x.dtype)
    return dot(ds.astype(dtype), x.astype(dtype), compute_dtype=x.dtype)


def i32(x: Any) -> Any:
    """``x`` as an int32 scalar or array (a Python int would become int64 under ``jax_enable_x64``)."""
    return jnp.asarray(x, jnp.int32)


def index32(index: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each entry of an index tuple as int32 (``layouts.operand_index`` gives a Python 0 for a broadcast axis)."""
    return tuple(i32(i) for i in index)


def positions(rows: Any, pack: int) -> Any:
    """The query positions of (non-negative, int32) rows of the decoding layout: ``rows // pack``."""
    return rows if pack == 1 else lax.div(i32(rows), i32(pack))


def key_blocks(p: Plan, q_first: Any, block_q: int, block_k: int, dense: bool,
               kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """``masks.key_blocks`` for the query rows ``[q_first, q_first + block_q)`` of the plan.

    ``dense`` (a boolean mask is present): no block is interior, every visited block is masked.
    ``kv_length``: the row's ``kv_lengths`` entry (the blocks past it are not visited).
    """
    q_first = i32(q_first)
    q_last = positions(q_first + (block_q - 1), p.pack)
    return masks.key_blocks(positions(q_first, p.pack), q_last, block_k, p.q_len, p.kv_len, p.causal, p.window,
                            dense, kv_length)


def query_blocks(p: Plan, k_first: Any, block_k: int, block_q: int, dense: bool,
                 kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """``masks.query_blocks`` for the keys ``[k_first, k_first + block_k)`` (standard layout: ``p.pack == 1``).

    Only real queries (``< q_len``) are visited: padded rows carry a zero cotangent.
    """
    k_first = i32(k_first)
    return masks.query_blocks(k_first, k_first + (block_k - 1), block_q, p.q_len, p.kv_len, p.causal, p.window,
                              dense, kv_length)


def split_refs(p: Plan, refs, loop: str = "keys"):
    """The kernel refs as ``(q, k, v, bias, mask, sinks, packing, rest)``; absent operands are ``None``,
    ``packing`` a ``packing.PackingRefs`` (``loop``: ``packing.packing_operands``')."""
    q_ref, k_ref, v_ref, *rest = refs
    bias_ref = rest.pop(0) if p.bias_layout is not None else None
    mask_ref = rest.pop(0) if p.mask_layout is not None else None
    sinks_ref = rest.pop(0) if p.num_sinks else None
    packing = pop_packing_refs(p, rest, loop)
    return q_ref, k_ref, v_ref, bias_ref, mask_ref, sinks_ref, packing, rest
