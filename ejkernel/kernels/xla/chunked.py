"""Memory-efficient XLA attention: kv chunks with an online softmax, O(S) memory in both passes.

Same semantics as the dense reference (``reference.attention``), computed one
``[block_q, block_kv]`` tile of the score matrix at a time:

* forward: for each q chunk, a loop over the kv chunks that causal/window and the longest ``kv_lengths``
  entry leave some allowed pair in (``masks.key_blocks``; the loop range is restricted per q chunk, so
  skipped chunks cost nothing; a chunk whose segment ids match in no batch row is skipped inside the loop
  by a ``lax.cond``, at the cost of that check), with a
  float32 running max and sum, ended by ``merge.normalize_rows``; sinks are folded in once per row
  afterwards (``merge.add_sinks``);
* backward: a ``custom_vjp`` that recomputes each tile from the saved per-row log-sum-exp; an outer scan
  over kv chunks accumulates dK/dV per chunk and dQ (and dBias) into one O(S) buffer.

Bias and mask are sliced per tile, never broadcast whole. K/V are not repeated per query head: query heads
are laid out as ``[B, Hkv, G, Sq, D]`` and each tile's ``G * block_q`` rows meet one kv head. The tile
arithmetic both passes share is ``chunked_tiles``; the backward pass is ``chunked_backward``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array, lax

from ejkernel.kernels.xla.chunk_policy import default_blocks, policy_for
from ejkernel.kernels.xla.chunked_backward import backward
from ejkernel.kernels.xla.chunked_tiles import (
    LOWEST,
    Plan,
    block_start,
    chunk_slice,
    dropout_scale,
    held_lse,
    kv_chunk_range,
    operand_tile,
    packing_of,
    public_lse,
    pv,
    sinks_lse,
    skip_unless,
    tile_has_pairs,
    tile_logits,
    tile_valid,
    unchunk,
    varying_zero,
)
from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.derivatives import reverse_mode_only
from ejkernel.ops.attention.merge import add_sinks, normalize_rows
from ejkernel.ops.attention.segments import as_ids, visible_kv_ids, zero_invisible
from ejkernel.ops.attention.signature import entry_point
from ejkernel.platform import current_platform

__all__ = ["attention", "chunked_attention", "chunked_with_lse", "chunked_without_lse", "chunked_with_row_lse"]


def _forward(p: Plan, qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths) -> tuple[Array, Array]:
    """``(out [B, Hkv, G, Sq, Dv] in dtype, lse [B, Hkv, G, Sq] float32)``; lse includes the sinks and is held
    as ``held_lse``."""
    dtype = jnp.dtype(p.dtype)
    pk = packing_of(q_ids, kv_ids, lengths, p)
    b, hkv, g = p.batch, p.num_kv_heads, p.group
    dv = vh.shape[-1]
    sink_lse = sinks_lse(aux, p)
    zero = varying_zero(qh, kh, vh, bias, mask, rng)  # the loop carries' type under shard_map

    def q_chunk(i: Array) -> tuple[Array, Array]:
        q_start = block_start(i, p.block_q, p.q_len)
        q_tile = chunk_slice(qh, q_start, p.block_q, 3)

        def kv_step(c: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
            row_max, row_sum, acc = carry
            k_start = block_start(c, p.block_kv, p.kv_len)
            s, _ = tile_logits(q_tile, chunk_slice(kh, k_start, p.block_kv, 2), operand_tile(bias, q_start, k_start, p), p)
            valid = tile_valid(i, c, q_start, k_start, operand_tile(mask, q_start, k_start, p), p, pk)
            tile_max = jnp.max(s if valid is None else jnp.where(valid, s, LOWEST), axis=-1)
            new_max = jnp.maximum(row_max, tile_max)  # LOWEST while nothing was allowed yet
            e = jnp.exp(s - new_max[..., None])
            if valid is not None:
                e = jnp.where(valid, e, 0.0)
            alpha = jnp.exp(row_max - new_max)
            row_sum = alpha * row_sum + jnp.sum(e, axis=-1)
            if p.dropout_prob:
                e = e * dropout_scale(rng, i, c, p)
            acc = alpha[..., None] * acc + pv(e, chunk_slice(vh, k_start, p.block_kv, 2), dtype)
            return new_max, row_sum, acc

        init = (
            jnp.full((b, hkv, g, p.block_q), LOWEST, jnp.float32) + zero,
            jnp.zeros((b, hkv, g, p.block_q), jnp.float32) + zero,
            jnp.zeros((b, hkv, g, p.block_q, dv), jnp.float32) + zero,
        )
        first, stop = kv_chunk_range(i, p, pk)
        step = skip_unless(lambda c: tile_has_pairs(i, c, pk), kv_step)
        row_max, row_sum, acc = lax.fori_loop(first, stop, step, init)
        out, lse = normalize_rows(acc, row_max, row_sum)
        if sink_lse is not None:
            out, lse = add_sinks(out, lse, sink_lse)
        return out.astype(dtype), held_lse(lse)

    out, lse = lax.map(q_chunk, jnp.arange(p.num_q_blocks))
    return unchunk(out, p.q_len, 3), unchunk(lse, p.q_len, 3)


@functools.lru_cache(maxsize=256)
def _core(p: Plan) -> Callable[..., tuple[Array, Array]]:
    """The custom_vjp of one plan: ``(qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths) -> (out, lse)``."""
    @jax.custom_vjp
    def core(qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths):
        return _forward(p, qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths)

    def core_fwd(qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths):
        out, lse = _forward(p, qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths)
        return (out, lse), (qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths, out, lse)

    def core_bwd(residuals, cotangents):
        return backward(p, residuals, cotangents)

    core.defvjp(core_fwd, core_bwd)
    return core


#: Forward-over-reverse works here (the backward is plain XLA), unlike the Pallas kernels (``docs/chunked.rst``).
_FORWARD_OVER_REVERSE = ", and forward-over-reverse such as jax.hessian"


def _run(call: AttentionCall, block_q: int | None, block_kv: int | None) -> tuple[Array, Array]:
    """``(out [B, Sq, Hq, Dv] in dtype, lse [B, Hq, Sq] float32 as held_lse)`` of a validated call."""
    f = call.features
    if f.softmax_dtype != "float32":
        raise ValueError(f"the chunked path computes the softmax in float32, got softmax_dtype {f.softmax_dtype}")
    default_q, default_kv = default_blocks(f, policy_for(current_platform()))
    block_kv = min(block_kv or default_kv, f.kv_len)
    block_q = min(block_q or default_q, f.q_len)
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_kv={block_kv}")
    b, sq, hq, d = call.query.shape
    hkv, g = f.num_kv_heads, f.group_size
    p = Plan(
        batch=b, num_kv_heads=hkv, group=g, q_len=sq, kv_len=f.kv_len, block_q=block_q, block_kv=block_kv,
        scale=f.softmax_scale, cap=f.logits_soft_cap, causal=f.causal, window=f.window, dtype=f.dtype,
        dropout_prob=f.dropout_prob, segments=f.segment_ids, lengths=f.kv_lengths,
    )
    dtype = jnp.dtype(f.dtype)
    # Head-major layouts: each tile is then a plain batched matmul over (batch, kv head).
    qh = call.query.astype(dtype).reshape(b, sq, hkv, g, d).transpose(0, 2, 3, 1, 4)
    kh = call.key.astype(dtype).transpose(0, 2, 1, 3)
    vh = call.value.astype(dtype).transpose(0, 2, 1, 3)
    # Bias and sinks join the float32 (float64 for a float64 call) logits: taken at that dtype here, so that
    # a wider one (float64 under x64) leaves every accumulator of the backward at one dtype.
    logits_dtype = jnp.promote_types(dtype, jnp.float32)
    bias, aux = (None if x is None else x.astype(logits_dtype) for x in (call.bias, call.softmax_aux))
    mask, rng = call.attention_mask, call.dropout_rng
    q_ids = kv_ids = lengths = None
    if f.segment_ids or f.kv_lengths:  # keys no query may see are zeroed: a NaN there reaches nothing
        visible = visible_kv_ids(call.q_segment_ids, call.kv_segment_ids, call.kv_lengths, f.kv_len)
        kh, vh = zero_invisible(kh, visible, 2), zero_invisible(vh, visible, 2)
        if f.segment_ids:
            q_ids, kv_ids = as_ids(call.q_segment_ids), visible
        if f.kv_lengths:
            lengths = as_ids(call.kv_lengths)
    # Under shard_map a custom_vjp's cotangents must vary over the mesh axes of their inputs; the backward's
    # vary over those of every operand. Giving the differentiable operands those axes here lets autodiff
    # sum each cotangent back to its input's axes (as it does for any implicitly broadcast value).
    zero = varying_zero(qh, kh, vh, bias, mask, aux, rng)
    qh, kh, vh, bias, aux = (None if x is None else x + zero.astype(x.dtype) for x in (qh, kh, vh, bias, aux))
    with reverse_mode_only("the chunked XLA attention", _FORWARD_OVER_REVERSE):
        out, lse = _core(p)(qh, kh, vh, bias, mask, aux, rng, q_ids, kv_ids, lengths)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, sq, hq, -1)
    return out, lse.reshape(b, hq, sq)


def chunked_with_lse(call: AttentionCall, *, block_q: int | None = None, block_kv: int | None = None) -> tuple[Array, Array]:
    """The computation of a validated call: ``(out [B, Sq, Hq, Dv], lse [B, Hq, Sq] float32)``."""
    out, lse = _run(call, block_q, block_kv)
    return out, public_lse(lse)


def chunked_without_lse(call: AttentionCall) -> tuple[Array, None]:
    """The registered implementation: ``(output, None)`` with the device's default chunk sizes."""
    return _run(call, None, None)[0], None


def chunked_with_row_lse(call: AttentionCall) -> tuple[Array, Array]:
    """The registered ``attention_with_lse``: ``(out [B, Sq, Hq, Dv], lse [B, Sq, Hq])``, default chunk sizes."""
    out, lse = chunked_with_lse(call)
    return out, lse.transpose(0, 2, 1)


chunked_attention = entry_point(
    chunked_with_lse,
    name="ejkernel.kernels.xla.chunked.chunked_attention",
    extras={"block_q": None, "block_kv": None},
    doc="""Chunked attention returning ``(output, lse)``: the per-row log-sum-exp of the logits, in float32.

    Parameters as the reference's, plus the chunk sizes (defaults: ``chunk_policy.default_blocks`` for the
    current device: 512 x 256 on a CPU, up to 2048 x 1024 on an accelerator, smaller with many heads). ``lse`` is
    ``-inf`` on rows with no allowed key (whose output is zero) and includes the sinks; results over
    disjoint key sets (computed without sinks) combine with ``ejkernel.ops.attention.merge.merge_partials``.
    The softmax is float32 (``softmax_dtype`` other than float32 is a ``ValueError``). Differentiable
    (reverse mode) in query, key, value, bias, softmax_aux and, through ``lse``, as well.
    """,
)

attention = entry_point(
    chunked_without_lse,
    name="ejkernel.kernels.xla.chunked.attention",
    doc="""Attention with the reference's semantics in O(Sq + Skv) memory, forward and backward.

    Parameters are the reference's (``ejkernel.kernels.xla.reference.attention``). Like a fused kernel it
    returns ``(output, None)``: the weights are never materialised. Dropout has the reference's semantics
    and statistics but its own random bits. ``softmax_dtype`` must be float32 (``None``). Reverse-mode
    differentiable only (see ``chunked_attention``). For ``lse`` or chunk sizes, use ``chunked_attention``.
    """,
)
