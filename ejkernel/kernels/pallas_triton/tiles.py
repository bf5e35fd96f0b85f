"""What the three kernels share: block ranges to visit, and the logit transform.

Logits are kept in base 2 (``s2 = s * log2(e)``) so the softmax uses ``exp2``; ``log2(e)`` is folded into
the scale. Masked entries are ``-inf`` and the running max starts at a finite ``NEG_INIT``, so a row that has
seen no allowed key keeps ``p = exp2(-inf - NEG_INIT) = 0`` with no extra select on the fast path.

Block ranges: for a query block, the key blocks that hold an allowed pair form ``[lo, hi)``; inside it the
blocks where *every* pair is allowed (and no key is padding) form ``[interior_lo, interior_hi)``, visited
without per-element masks. The same for the key blocks' view of query blocks (the dK/dV kernel). Ranges
come from ``ejkernel.ops.attention.masks`` semantics and are checked against ``masks.allowed`` in tests.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jax import lax

from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.ops.attention.masks import allowed, key_range, query_range

__all__ = ["dot", "LOG2E", "NEG_INIT", "key_blocks", "query_blocks", "operand_index", "logits", "valid_tile", "split_refs"]

LOG2E = math.log2(math.e)
NEG_INIT = -1e30  # initial running max: below every finite logit, above -inf


def dot(a: Any, b: Any, transpose_b: bool = False) -> Any:
    """``a @ b`` (``a @ b.T`` with ``transpose_b``) accumulated in float32.

    float32 operands ask for HIGHEST precision: Triton's default for them is TF32 (~1e-3 error).
    """
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _i32(x: Any) -> Any:
    return jnp.asarray(x, jnp.int32)


def _floor_div(x: Any, b: int) -> Any:
    """``floor(x / b)`` for ``x >= -b`` (clamped at 0 first: callers clip to non-negative ranges)."""
    return lax.div(jnp.maximum(_i32(x), 0), _i32(b))


def _ceil_div(x: Any, b: int) -> Any:
    return lax.div(jnp.maximum(_i32(x), 0) + (b - 1), _i32(b))


def _clip_ranges(lo, interior_lo, interior_hi, hi):
    hi = jnp.maximum(hi, lo)
    interior_lo = jnp.clip(interior_lo, lo, hi)
    interior_hi = jnp.clip(interior_hi, interior_lo, hi)
    return lo, interior_lo, interior_hi, hi


def key_blocks(p: Plan, q_first: Any, block_q: int, block_k: int, dense: bool) -> tuple[Any, Any, Any, Any]:
    """Key blocks ``(lo, interior_lo, interior_hi, hi)`` for queries ``[q_first, q_first + block_q)``.

    ``dense`` (a boolean mask is present): no block is interior, every visited block is masked.
    """
    q_last = q_first + block_q - 1
    if p.pack > 1:  # rows -> query positions
        q_first, q_last = lax.div(_i32(q_first), _i32(p.pack)), lax.div(_i32(q_last), _i32(p.pack))
    k_lo, k_hi = key_range(q_first, q_last, p.q_len, p.kv_len, p.causal, p.window)
    k_hi = jnp.minimum(k_hi, p.kv_len - 1)
    lo = _floor_div(k_lo, block_k)
    hi = jnp.where(k_hi < 0, 0, _floor_div(k_hi, block_k) + 1)
    if dense:
        return lo, hi, hi, hi
    # Interior: (kb + 1) * bk - 1 <= upper and kb * bk >= lower, and no padded key in the block.
    upper = None
    if p.causal:
        upper = q_first + p.offset
    if p.window is not None:
        w_up = q_first + p.offset + p.window[1]
        upper = w_up if upper is None else jnp.minimum(upper, w_up)
    interior_hi = _i32(p.kv_len // block_k)
    if upper is not None:
        interior_hi = jnp.minimum(interior_hi, jnp.where(upper + 1 < 0, 0, _floor_div(upper + 1, block_k)))
    interior_lo = _i32(0)
    if p.window is not None:
        interior_lo = _ceil_div(q_last + p.offset - p.window[0], block_k)
    return _clip_ranges(lo, interior_lo, interior_hi, hi)


def query_blocks(p: Plan, k_first: Any, block_k: int, block_q: int, dense: bool) -> tuple[Any, Any, Any, Any]:
    """Query blocks ``(lo, interior_lo, interior_hi, hi)`` that see keys ``[k_first, k_first + block_k)``.

    Only real queries (``< q_len``) are visited: padded rows carry a zero cotangent.
    """
    k_last = k_first + block_k - 1
    q_lo, q_hi = query_range(k_first, k_last, p.q_len, p.kv_len, p.causal, p.window)
    q_lo = jnp.maximum(q_lo, 0)
    q_hi = jnp.minimum(q_hi, p.q_len - 1)
    lo = _floor_div(q_lo, block_q)
    hi = jnp.where(q_hi < q_lo, lo, _floor_div(q_hi, block_q) + 1)
    if dense:
        return lo, hi, hi, hi
    edge = k_last >= p.kv_len  # the block holds padded keys: masked for every query block
    lower = None  # interior: q_first >= lower and q_last <= upper
    if p.causal:
        lower = k_last - p.offset
    if p.window is not None:
        w_lo = k_last - p.offset - p.window[1]
        lower = w_lo if lower is None else jnp.maximum(lower, w_lo)
    interior_lo = _i32(0) if lower is None else _ceil_div(lower, block_q)
    interior_hi = _i32(p.q_len_pad // block_q)
    if p.window is not None:
        upper = k_first - p.offset + p.window[0]
        interior_hi = jnp.where(upper + 1 < 0, 0, _floor_div(upper + 1, block_q))
    interior_hi = jnp.where(edge, interior_lo, interior_hi)
    return _clip_ranges(lo, interior_lo, interior_hi, hi)


def operand_index(layout: tuple[str, str], b: Any, h: Any, group: int) -> tuple[Any, Any]:
    """Batch and head index into a ``[B|1, Hq|Hkv|1, ...]`` bias or mask for query head ``h``."""
    bi = b if layout[0] == "B" else 0
    hi = {"q": h, "kv": h // group if group > 1 else h, "1": 0}[layout[1]]
    return bi, hi


def logits(p: Plan, s: Any, bias: Any | None) -> tuple[Any, Any]:
    """Base-2 logits from ``q·k`` (float32), and ``tanh`` of the capped logits (``None`` without a cap)."""
    t = None
    if p.logits_soft_cap is None:
        s2 = s * (p.softmax_scale * LOG2E)
    else:
        t = jnp.tanh(s * (p.softmax_scale / p.logits_soft_cap))
        s2 = t * (p.logits_soft_cap * LOG2E)
    if bias is not None:
        s2 = s2 + bias.astype(jnp.float32) * LOG2E
    return s2, t


def valid_tile(p: Plan, q_idx: Any, k_idx: Any, mask: Any | None) -> Any:
    """Which pairs of a tile are allowed: causal/window, real keys, and the boolean mask."""
    ok = k_idx < p.kv_len
    rule = allowed(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window)
    if rule is not True:
        ok = ok & rule
    if mask is not None:
        ok = ok & mask
    return ok


def split_refs(p: Plan, refs):
    """The kernel refs as ``(q, k, v, bias, mask, sinks, rest)``; absent operands are ``None``."""
    q_ref, k_ref, v_ref, *rest = refs
    bias_ref = rest.pop(0) if p.bias_layout is not None else None
    mask_ref = rest.pop(0) if p.mask_layout is not None else None
    sinks_ref = rest.pop(0) if p.num_sinks else None
    return q_ref, k_ref, v_ref, bias_ref, mask_ref, sinks_ref, rest
