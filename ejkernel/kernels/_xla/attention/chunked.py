"""Memory-efficient XLA attention: kv chunks with an online softmax, O(S) memory in both passes.

Same semantics as the dense reference (``_interface.attention``, DESIGN §1), computed one
``[block_q, block_kv]`` tile of the score matrix at a time:

* forward: for each q chunk, a loop over the kv chunks that causal/window leave some allowed pair in
  (``masks.block_has_allowed``; the loop range is restricted per q chunk, so skipped chunks cost nothing),
  with a float32 running max and sum; sinks are folded in once per row afterwards (``merge.add_sinks``);
* backward: a ``custom_vjp`` that recomputes each tile from the saved per-row log-sum-exp; an outer scan
  over kv chunks accumulates dK/dV per chunk and dQ (and dBias) into one O(S) buffer.

Bias and mask are sliced per tile, never broadcast whole. K/V are not repeated per query head: query heads
are laid out as ``[B, Hkv, G, Sq, D]`` and each tile's ``G * block_q`` rows meet one kv head.
Ragged lengths need no padding: the last chunk starts at ``length - block`` (so every slice is in range)
and the rows/keys it shares with the chunk before it are masked out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import DTypeLike
from jaxtyping import Bool, Float, Key, UInt32

from ejkernel.kernels._xla.attention.chunk_policy import default_blocks, policy_for
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.masks import allowed, block_has_allowed
from ejkernel.ops.attention.merge import add_sinks, sink_logits
from ejkernel.ops.attention.signature import with_reference_signature
from ejkernel.ops.attention.validation import resolve_bias, validate_attention
from ejkernel.registry import current_platform

__all__ = ["attention", "chunked_attention", "attention_from_features"]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one chunked call (hashable: it keys the custom_vjp cache)."""

    batch: int
    num_kv_heads: int
    group: int
    q_len: int
    kv_len: int
    block_q: int
    block_kv: int
    scale: float
    cap: float | None
    causal: bool
    window: tuple[int, int] | None
    dtype: str
    dropout_prob: float  # 0.0 when dropout is off

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.block_q)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_kv)

    @property
    def ragged_q(self) -> bool:
        return self.q_len % self.block_q != 0

    @property
    def ragged_kv(self) -> bool:
        return self.kv_len % self.block_kv != 0

    @property
    def restricted(self) -> bool:
        """Whether causal/window can rule out whole tiles."""
        return self.causal or self.window is not None


def _block_start(index: Array, block: int, length: int) -> Array:
    """First position of chunk ``index``, clamped so the chunk stays in range (the last may overlap)."""
    return jnp.minimum(index * block, length - block)


def _slice(x: Array, start: Array, size: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _and(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _operand_tile(x: Array | None, q_start: Array, k_start: Array, p: _Plan) -> Array | None:
    """The ``[bq, bk]`` tile of a ``[B|1, Hq|Hkv|1, Sq, Skv]`` bias/mask as ``[B|1, Hkv|1, G|1, bq, bk]``."""
    if x is None:
        return None
    b, h = x.shape[:2]
    tile = lax.dynamic_slice(x, (0, 0, q_start, k_start), (b, h, p.block_q, p.block_kv))
    if h == p.num_kv_heads * p.group and p.group > 1:
        return tile.reshape(b, p.num_kv_heads, p.group, p.block_q, p.block_kv)
    return tile[:, :, None]


def _tile_valid(i: Array, c: Array, q_start: Array, k_start: Array, mask_tile: Array | None, p: _Plan) -> Array | None:
    """Which pairs of tile (i, c) count: causal/window, the user mask, and not owned by a neighbour chunk.

    ``None`` when every pair counts.
    """
    q_idx = q_start + lax.broadcasted_iota(jnp.int32, (p.block_q, p.block_kv), 0)
    k_idx = k_start + lax.broadcasted_iota(jnp.int32, (p.block_q, p.block_kv), 1)
    valid = None
    if p.restricted:
        valid = allowed(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window)
    if p.ragged_q:  # rows of a clamped last chunk that the previous chunk owns
        valid = _and(valid, q_idx >= i * p.block_q)
    if p.ragged_kv:
        valid = _and(valid, k_idx >= c * p.block_kv)
    return _and(valid, mask_tile)


def _tile_logits(q_tile: Array, k_tile: Array, bias_tile: Array | None, p: _Plan) -> tuple[Array, Array | None]:
    """Float32 logits ``[B, Hkv, G, bq, bk]`` after scale, soft cap and bias; also ``tanh`` of the cap."""
    b, hkv, g, bq, d = q_tile.shape
    s = jnp.einsum("bhqd,bhkd->bhqk", q_tile.reshape(b, hkv, g * bq, d), k_tile, preferred_element_type=jnp.float32)
    s = s.reshape(b, hkv, g, bq, -1) * jnp.float32(p.scale)
    th = None
    if p.cap is not None:
        cap = jnp.float32(p.cap)
        th = jnp.tanh(s / cap)
        s = cap * th
    if bias_tile is not None:
        s = s + bias_tile.astype(jnp.float32)
    return s, th


def _dropout_scale(rng: Any, i: Array, c: Array, p: _Plan) -> Array:
    """Per-pair factor ``keep / (1 - p)`` of tile (i, c); the same bits in the forward and backward pass.

    Each tile draws from ``rng`` folded with its index, so masks are independent across batch, heads,
    queries and keys (not bit-identical to the dense reference's, which draws the whole matrix at once).
    """
    key = jax.random.fold_in(rng, i * p.num_kv_blocks + c)
    shape = (p.batch, p.num_kv_heads, p.group, p.block_q, p.block_kv)
    keep = jax.random.bernoulli(key, 1.0 - p.dropout_prob, shape)
    return jnp.where(keep, jnp.float32(1.0 / (1.0 - p.dropout_prob)), jnp.float32(0.0))


def _pv(weights: Array, v_tile: Array, dtype: Any) -> Array:
    """``[B, Hkv, G, bq, bk] @ [B, Hkv, bk, Dv]`` with weights cast to ``dtype``, float32 accumulation."""
    b, hkv, g, bq, bk = weights.shape
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype).reshape(b, hkv, g * bq, bk), v_tile,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, hkv, g, bq, -1)


def _kv_chunk_range(i: Array, p: _Plan) -> tuple[Array | int, Array | int]:
    """``(first, stop)`` of the kv chunks that q chunk ``i`` has an allowed pair in (contiguous)."""
    if not p.restricted:
        return 0, p.num_kv_blocks
    c = jnp.arange(p.num_kv_blocks)
    has = block_has_allowed(
        i * p.block_q, jnp.minimum((i + 1) * p.block_q, p.q_len) - 1,
        c * p.block_kv, jnp.minimum((c + 1) * p.block_kv, p.kv_len) - 1,
        p.q_len, p.kv_len, p.causal, p.window,
    )
    first = jnp.argmax(has)
    return first, first + jnp.sum(has)


def _q_chunk_range(c: Array, p: _Plan) -> tuple[Array | int, Array | int]:
    """``(first, stop)`` of the q chunks with an allowed pair in kv chunk ``c`` (contiguous)."""
    if not p.restricted:
        return 0, p.num_q_blocks
    i = jnp.arange(p.num_q_blocks)
    has = block_has_allowed(
        i * p.block_q, jnp.minimum((i + 1) * p.block_q, p.q_len) - 1,
        c * p.block_kv, jnp.minimum((c + 1) * p.block_kv, p.kv_len) - 1,
        p.q_len, p.kv_len, p.causal, p.window,
    )
    first = jnp.argmax(has)
    return first, first + jnp.sum(has)


def _unchunk(stacked: Array, length: int, axis: int) -> Array:
    """``[n, ...blk at axis...]`` per-chunk results as one array of ``length`` along ``axis``.

    The last chunk was computed at a clamped start, so only its last ``length - (n-1)*blk`` rows are new.
    """
    n, blk = stacked.shape[0], stacked.shape[axis + 1]

    def merge(x: Array) -> Array:
        x = jnp.moveaxis(x, 0, axis)
        return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])

    if n * blk == length:
        return merge(stacked)
    tail = lax.slice_in_dim(stacked[-1], blk - (length - (n - 1) * blk), blk, axis=axis)
    return jnp.concatenate([merge(stacked[:-1]), tail], axis=axis)


def _sinks_lse(aux: Array | None, p: _Plan) -> Array | None:
    """Log-sum-exp of each query head's sinks as ``[1, Hkv, G, 1]``."""
    if aux is None:
        return None
    logits = sink_logits(aux, p.num_kv_heads * p.group)
    return jax.nn.logsumexp(logits, axis=-1).reshape(1, p.num_kv_heads, p.group, 1)


def _forward(p: _Plan, qh, kh, vh, bias, mask, aux, rng) -> tuple[Array, Array]:
    """``(out [B, Hkv, G, Sq, Dv] in dtype, lse [B, Hkv, G, Sq] float32)``; lse includes the sinks."""
    dtype = jnp.dtype(p.dtype)
    b, hkv, g = p.batch, p.num_kv_heads, p.group
    dv = vh.shape[-1]
    sinks_lse = _sinks_lse(aux, p)

    def q_chunk(i: Array) -> tuple[Array, Array]:
        q_start = _block_start(i, p.block_q, p.q_len)
        q_tile = _slice(qh, q_start, p.block_q, 3)

        def kv_step(c: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
            row_max, row_sum, acc = carry
            k_start = _block_start(c, p.block_kv, p.kv_len)
            s, _ = _tile_logits(q_tile, _slice(kh, k_start, p.block_kv, 2), _operand_tile(bias, q_start, k_start, p), p)
            valid = _tile_valid(i, c, q_start, k_start, _operand_tile(mask, q_start, k_start, p), p)
            tile_max = jnp.max(s if valid is None else jnp.where(valid, s, -jnp.inf), axis=-1)
            new_max = jnp.maximum(row_max, tile_max)
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # -inf while nothing was allowed yet
            e = jnp.exp(s - shift[..., None])
            if valid is not None:
                e = jnp.where(valid, e, 0.0)
            alpha = jnp.exp(row_max - shift)
            row_sum = alpha * row_sum + jnp.sum(e, axis=-1)
            if p.dropout_prob:
                e = e * _dropout_scale(rng, i, c, p)
            acc = alpha[..., None] * acc + _pv(e, _slice(vh, k_start, p.block_kv, 2), dtype)
            return new_max, row_sum, acc

        init = (
            jnp.full((b, hkv, g, p.block_q), -jnp.inf, jnp.float32),
            jnp.zeros((b, hkv, g, p.block_q), jnp.float32),
            jnp.zeros((b, hkv, g, p.block_q, dv), jnp.float32),
        )
        first, stop = _kv_chunk_range(i, p)
        row_max, row_sum, acc = lax.fori_loop(first, stop, kv_step, init)
        seen = row_sum > 0
        lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
        out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
        if sinks_lse is not None:
            out, lse = add_sinks(out, lse, sinks_lse)
        return out.astype(dtype), lse

    out, lse = lax.map(q_chunk, jnp.arange(p.num_q_blocks))
    return _unchunk(out, p.q_len, 3), _unchunk(lse, p.q_len, 3)


@functools.lru_cache(maxsize=256)
def _core(p: _Plan) -> Callable[..., tuple[Array, Array]]:
    """The custom_vjp of one plan: ``(qh, kh, vh, bias, mask, aux, rng) -> (out, lse)``."""
    from ejkernel.kernels._xla.attention.chunked_backward import backward

    @jax.custom_vjp
    def core(qh, kh, vh, bias, mask, aux, rng):
        return _forward(p, qh, kh, vh, bias, mask, aux, rng)

    def core_fwd(qh, kh, vh, bias, mask, aux, rng):
        out, lse = _forward(p, qh, kh, vh, bias, mask, aux, rng)
        return (out, lse), (qh, kh, vh, bias, mask, aux, rng, out, lse)

    def core_bwd(residuals, cotangents):
        return backward(p, residuals, cotangents)

    core.defvjp(core_fwd, core_bwd)
    return core


def attention_from_features(
    f: AttentionFeatures,
    query: Array,
    key: Array,
    value: Array,
    attention_mask: Array | None,
    bias: Array | None,
    dropout_rng: Any,
    softmax_aux: Array | None,
    dropout_prob: float,
    *,
    block_q: int | None = None,
    block_kv: int | None = None,
) -> tuple[Array, Array]:
    """The computation on validated arguments: ``(out [B, Sq, Hq, Dv], lse [B, Hq, Sq] float32)``."""
    if f.softmax_dtype != "float32":
        raise ValueError(f"the chunked path computes the softmax in float32, got softmax_dtype {f.softmax_dtype}")
    default_q, default_kv = default_blocks(f, policy_for(current_platform()))
    block_kv = min(block_kv or default_kv, f.kv_len)
    block_q = min(block_q or default_q, f.q_len)
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_kv={block_kv}")
    b, sq, hq, d = query.shape
    hkv, g = f.num_kv_heads, f.group_size
    p = _Plan(
        batch=b, num_kv_heads=hkv, group=g, q_len=sq, kv_len=f.kv_len, block_q=block_q, block_kv=block_kv,
        scale=f.softmax_scale, cap=f.logits_soft_cap, causal=f.causal, window=f.window, dtype=f.dtype,
        dropout_prob=float(dropout_prob) if f.dropout else 0.0,
    )
    dtype = jnp.dtype(f.dtype)
    # Head-major layouts: each tile is then a plain batched matmul over (batch, kv head).
    qh = query.astype(dtype).reshape(b, sq, hkv, g, d).transpose(0, 2, 3, 1, 4)
    kh = key.astype(dtype).transpose(0, 2, 1, 3)
    vh = value.astype(dtype).transpose(0, 2, 1, 3)
    rng = dropout_rng if f.dropout else None
    out, lse = _core(p)(qh, kh, vh, bias, attention_mask, softmax_aux, rng)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, sq, hq, -1)
    return out, lse.reshape(b, hq, sq)


def chunked_attention(
    query: Float[Array, "batch q_len num_q_heads head_dim"],
    key: Float[Array, "batch kv_len num_kv_heads head_dim"],
    value: Float[Array, "batch kv_len num_kv_heads v_head_dim"],
    attention_mask: Bool[Array, "#batch mask_heads q_len kv_len"] | None = None,
    bias: Float[Array, "#batch bias_heads q_len kv_len"] | None = None,
    init_bias: Callable[[], Float[Array, "#batch bias_heads q_len kv_len"]] | None = None,
    deterministic: bool = True,
    dropout_rng: Key[Array, ""] | UInt32[Array, "2"] | None = None,
    softmax_aux: Float[Array, "num_q_heads num_sinks"] | Float[Array, "num_sinks"] | None = None,
    softmax_scale: float | None = None,
    logits_soft_cap: float | None = None,
    dtype: DTypeLike | None = jnp.bfloat16,
    softmax_dtype: DTypeLike | None = None,
    dropout_prob: float = 0.0,
    causal: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    *,
    block_q: int | None = None,
    block_kv: int | None = None,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch num_q_heads q_len"]]:
    """Chunked attention returning ``(output, lse)``: the per-row log-sum-exp of the logits, in float32.

    Parameters as the reference's, plus the chunk sizes (defaults: ``chunk_policy.default_blocks`` for the
    current device: 512 x 256 on a CPU, up to 2048 x 1024 on an accelerator, smaller with many heads). ``lse`` is
    ``-inf`` on rows with no allowed key (whose output is zero) and includes the sinks; results over
    disjoint key sets (computed without sinks) combine with ``ejkernel.ops.attention.merge.merge_partials``.
    The softmax is float32 (``softmax_dtype`` other than float32 is a ``ValueError``). Differentiable
    (reverse mode) in query, key, value, bias, softmax_aux and, through ``lse``, as well.
    """
    bias = resolve_bias(bias, attention_mask, init_bias)
    f = validate_attention(
        query, key, value, attention_mask, bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
    )
    return attention_from_features(
        f, query, key, value, attention_mask, bias, dropout_rng, softmax_aux, dropout_prob,
        block_q=block_q, block_kv=block_kv,
    )


def _attention_without_lse(*args: Any) -> tuple[Array, None]:
    out, _ = chunked_attention(*args)
    return out, None


attention = with_reference_signature(
    _attention_without_lse,
    doc="""Attention with the reference's semantics (DESIGN §1) in O(Sq + Skv) memory, forward and backward.

    Parameters are the reference's (``ejkernel.kernels._xla.attention._interface.attention``). Like a
    fused kernel it returns ``(output, None)``: the weights are never materialised. Dropout has the
    reference's semantics and statistics but its own random bits. ``softmax_dtype`` must be float32
    (``None``). For ``lse`` or chunk sizes, use ``chunked_attention``.
    """,
)
