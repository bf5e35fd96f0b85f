"""The tile arithmetic both passes of the chunked XLA attention share: the call's plan, chunk starts and
slices, a tile's logits and valid pairs, its dropout factors, the chunk ranges causal/window leave, and
the form in which the core holds each row's log-sum-exp.

Ragged lengths need no padding: the last chunk starts at ``length - block`` (so every slice is in range)
and the rows/keys it shares with the chunk before it are masked out. The rules themselves (logits, valid
pairs, visited blocks, sinks, the empty-row convention) are the shared ones of ``ejkernel/ops/attention``
(``docs/design.rst``); only the ownership of a clamped last chunk is local.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ejkernel.ops.attention import segments, sinks
from ejkernel.ops.attention.logits import transform_logits
from ejkernel.ops.attention.masks import key_blocks, query_blocks, valid_pairs
from ejkernel.ops.attention.merge import recompute_lse
from ejkernel.ops.attention.precision import matmul_precision

__all__ = [
    "Plan", "block_start", "chunk_slice", "operand_tile", "tile_valid", "tile_logits", "dropout_scale", "pv",
    "kv_chunk_range", "q_chunk_range", "unchunk", "sinks_lse", "LOWEST", "EMPTY_ROW_LSE", "held_lse",
    "public_lse", "varying_zero", "Packing", "packing_of", "tile_has_pairs", "skip_unless",
]


#: The stand-in for a masked logit in the running max: finite, so that no intermediate of a call whose
#: result is finite is infinite (``jax.debug_infs``); masked weights are zeroed explicitly all the same.
LOWEST = float(np.finfo(np.float32).min)

#: An empty row's log-sum-exp as the core holds it between its passes: a finite stand-in for the ``+inf``
#: of ``merge.recompute_lse``, so ``p = exp(s - lse)`` is 0 for every logit and nothing is infinite.
#: ``public_lse`` turns it into the convention's ``-inf``.
EMPTY_ROW_LSE = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Plan:
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
    segments: bool = False  # q_segment_ids/kv_segment_ids given
    lengths: bool = False  # kv_lengths given

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


def block_start(index: Array, block: int, length: int) -> Array:
    """First position of chunk ``index``, clamped so the chunk stays in range (the last may overlap); int32
    whatever the index's type (loop indices are int64 under ``jax_enable_x64``, block ranges int32)."""
    return jnp.minimum(index * block, length - block).astype(jnp.int32)


def chunk_slice(x: Array, start: Array, size: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def both(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def operand_tile(x: Array | None, q_start: Array, k_start: Array, p: Plan) -> Array | None:
    """The ``[bq, bk]`` tile of a ``[B|1, Hq|Hkv|1, Sq, Skv]`` bias/mask as ``[B|1, Hkv|1, G|1, bq, bk]``."""
    if x is None:
        return None
    b, h = x.shape[:2]
    tile = chunk_slice(chunk_slice(x, q_start, p.block_q, 2), k_start, p.block_kv, 3)
    if h == p.num_kv_heads * p.group and p.group > 1:
        return tile.reshape(b, p.num_kv_heads, p.group, p.block_q, p.block_kv)
    return tile[:, :, None]


@dataclasses.dataclass(frozen=True)
class Packing:
    """A call's segment ids and key lengths as the chunks read them (``None`` when absent): ``q_ids [B, Sq]``
    and ``kv_ids [B, Skv]`` (``segments.visible_kv_ids``) int32, their per-chunk ``block_ranges``, and
    ``lengths [B]`` int32 with ``max_length``, the longest (the key chunks past it are never visited)."""

    q_ids: Array | None = None
    kv_ids: Array | None = None
    q_ranges: tuple[Array, Array, Array] | None = None
    kv_ranges: tuple[Array, Array, Array] | None = None
    lengths: Array | None = None
    max_length: Array | None = None


def packing_of(q_ids: Array | None, kv_ids: Array | None, lengths: Array | None, p: Plan) -> Packing:
    """The ``Packing`` of the core's id operands (O(S) summaries, computed once per pass)."""
    if not (p.segments or p.lengths):
        return Packing()
    ranges = {}
    if p.segments:
        ranges = dict(q_ranges=segments.block_ranges(q_ids, p.block_q), kv_ranges=segments.block_ranges(kv_ids, p.block_kv))
    max_length = None if lengths is None else jnp.max(lengths)
    return Packing(q_ids, kv_ids, lengths=lengths, max_length=max_length, **ranges)


def tile_has_pairs(i: Array, c: Array, pk: Packing) -> Array | bool:
    """Whether the segment ids may allow some pair of tile (i, c) in some batch row (``segments.block_relation``
    of the chunks' id ranges): where they cannot, the tile is skipped. ``True`` without segment ids."""
    if pk.q_ranges is None:
        return True
    q_lo, q_hi, q_one = (x[:, i] for x in pk.q_ranges)
    kv_lo, kv_hi, kv_one = (x[:, c] for x in pk.kv_ranges)
    some, _ = segments.block_relation(q_lo, q_hi, q_one, kv_lo, kv_hi, kv_one)
    return jnp.any(some)


def skip_unless(has_pairs, step):
    """``step(c, carry)`` as a loop body that leaves the carry as it is where ``has_pairs(c)`` is False (a
    ``lax.cond``: a skipped chunk costs the check); ``step`` itself when ``has_pairs`` is statically True."""
    def body(c, carry):
        visit = has_pairs(c)
        if visit is True:
            return step(c, carry)
        return lax.cond(visit, step, lambda c, carry: carry, c, carry)

    return body


def tile_valid(i: Array, c: Array, q_start: Array, k_start: Array, mask_tile: Array | None, p: Plan,
               pk: Packing | None = None) -> Array | None:
    """Which pairs of tile (i, c) count: ``masks.valid_pairs`` (causal/window, the user mask, segment ids and
    key lengths), and not owned by a neighbour chunk. ``None`` when every pair counts.
    """
    pk = pk or Packing()
    if not (p.restricted or p.ragged_q or p.ragged_kv or p.segments or p.lengths):
        return mask_tile  # every pair of the tile is a real key that causal/window allow
    q_idx = q_start + lax.broadcasted_iota(jnp.int32, (p.block_q, p.block_kv), 0)
    k_idx = k_start + lax.broadcasted_iota(jnp.int32, (p.block_q, p.block_kv), 1)
    packed = {}
    if p.segments:  # [B, 1, 1, bq, 1] against [B, 1, 1, 1, bk]
        packed["q_segment"] = chunk_slice(pk.q_ids, q_start, p.block_q, 1)[:, None, None, :, None]
        packed["kv_segment"] = chunk_slice(pk.kv_ids, k_start, p.block_kv, 1)[:, None, None, None, :]
    if p.lengths:
        packed["kv_length"] = pk.lengths[:, None, None, None, None]
    valid = valid_pairs(q_idx, k_idx, p.q_len, p.kv_len, p.causal, p.window, **packed)
    if p.ragged_q:  # rows of a clamped last chunk that the previous chunk owns
        valid = valid & (q_idx >= i * p.block_q)
    if p.ragged_kv:
        valid = valid & (k_idx >= c * p.block_kv)
    return both(valid, mask_tile)


def tile_logits(q_tile: Array, k_tile: Array, bias_tile: Array | None, p: Plan) -> tuple[Array, Array | None]:
    """Float32 logits ``[B, Hkv, G, bq, bk]`` (``logits.transform_logits``); also ``tanh`` of the cap."""
    b, hkv, g, bq, d = q_tile.shape
    s = jnp.einsum("bhqd,bhkd->bhqk", q_tile.reshape(b, hkv, g * bq, d), k_tile, preferred_element_type=jnp.float32,
                   precision=matmul_precision(q_tile.dtype))
    return transform_logits(s.reshape(b, hkv, g, bq, -1), p.scale, p.cap, bias_tile)


def dropout_scale(rng: Any, i: Array, c: Array, p: Plan) -> Array:
    """Per-pair factor ``keep / (1 - p)`` of tile (i, c); the same bits in the forward and backward pass.

    Each tile draws from ``rng`` folded with its index, so masks are independent across batch, heads,
    queries and keys (not bit-identical to the dense reference's, which draws the whole matrix at once).
    """
    key = jax.random.fold_in(rng, i * p.num_kv_blocks + c)
    shape = (p.batch, p.num_kv_heads, p.group, p.block_q, p.block_kv)
    keep = jax.random.bernoulli(key, 1.0 - p.dropout_prob, shape)
    return jnp.where(keep, jnp.float32(1.0 / (1.0 - p.dropout_prob)), jnp.float32(0.0))


def pv(weights: Array, v_tile: Array, dtype: Any) -> Array:
    """``[B, Hkv, G, bq, bk] @ [B, Hkv, bk, Dv]`` with weights cast to ``dtype``, float32 accumulation."""
    b, hkv, g, bq, bk = weights.shape
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype).reshape(b, hkv, g * bq, bk), v_tile,
                     preferred_element_type=jnp.float32, precision=matmul_precision(dtype))
    return out.reshape(b, hkv, g, bq, -1)


def kv_chunk_range(i: Array, p: Plan, pk: Packing | None = None) -> tuple[Array | int, Array | int]:
    """``(first, stop)`` of the kv chunks that q chunk ``i`` has an allowed pair in (``masks.key_blocks``,
    ending at the longest ``kv_lengths`` entry of the batch).

    Chunk ``c`` owns the keys ``[c * block_kv, (c + 1) * block_kv)`` (a clamped last chunk masks the rest),
    so the chunks are the blocks of a grid and the shared block rule applies as it is.
    """
    length = None if pk is None else pk.max_length
    if not p.restricted and length is None:
        return 0, p.num_kv_blocks
    lo, _, _, hi = key_blocks(i * p.block_q, (i + 1) * p.block_q - 1, p.block_kv, p.q_len, p.kv_len, p.causal, p.window,
                              kv_length=length)
    return lo, hi


def q_chunk_range(c: Array, p: Plan, pk: Packing | None = None) -> tuple[Array | int, Array | int]:
    """``(first, stop)`` of the q chunks with an allowed pair in kv chunk ``c`` (``masks.query_blocks``)."""
    length = None if pk is None else pk.max_length
    if not p.restricted and length is None:
        return 0, p.num_q_blocks
    lo, _, _, hi = query_blocks(c * p.block_kv, (c + 1) * p.block_kv - 1, p.block_q, p.q_len, p.kv_len, p.causal,
                                p.window, kv_length=length)
    return lo, hi


def unchunk(stacked: Array, length: int, axis: int) -> Array:
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


def sinks_lse(aux: Array | None, p: Plan) -> Array | None:
    """Log-sum-exp of each query head's sinks (``sinks.sinks_lse``) as ``[1, Hkv, G, 1]``."""
    if aux is None:
        return None
    return sinks.sinks_lse(aux, p.num_kv_heads * p.group).reshape(1, p.num_kv_heads, p.group, 1)


def held_lse(lse: Array) -> Array:
    """A row's log-sum-exp (``-inf`` when empty) in the form the core keeps: ``recompute_lse``'s, finite."""
    return jnp.minimum(recompute_lse(lse), EMPTY_ROW_LSE)


def public_lse(held: Array) -> Array:
    """The held log-sum-exp in the one convention every returned lse follows: ``-inf`` for an empty row."""
    return jnp.where(held == EMPTY_ROW_LSE, -jnp.inf, held)


def varying_zero(*arrays: Array | None) -> Array:
    """A float32 ``0`` that depends on every one of ``arrays`` (``None`` skipped).

    Inside ``shard_map`` (with its default ``check_vma``) a loop's initial carry must vary over the same
    mesh axes as the carry the body returns, which depends on the inputs; ``jnp.zeros`` varies over none.
    Adding this zero gives an initial value the inputs' varying axes, on any JAX version, at no cost: it is
    the sum of an empty slice of each input.
    """
    zero = jnp.zeros((), jnp.float32)
    for x in arrays:
        if x is None:
            continue
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        zero = zero + jnp.sum(x.reshape(-1)[:0].astype(jnp.float32))
    return zero
