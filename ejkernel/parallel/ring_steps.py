"""One (query chunk, key chunk) pair of a ring step, computed by the registry's ``attention_with_lse``.

``pair_forward`` returns the pair's partial result ``(out [B, C, Hq, Dv], lse [B, C, Hq])`` (merge's
convention: an empty row has out 0 and lse ``-inf``); ``pair_backward`` the pair's share of the gradients
given the cotangents of the merged result. Both switch on the pair's ``PairClass`` (a traced index), so a
skipped pair computes nothing in either pass.

The backward recomputes the pair with ``jax.vjp`` of the same kernel call (its forward, then its own VJP,
which takes an lse cotangent), so any implementation with a correct ``attention_with_lse`` gradient serves.
The merged result is ``O = sum_p w_p o_p`` with ``w_p = exp(l_p - lse)``, so the pair's cotangents are
``g_o = w g_O`` and ``g_l = w (rowsum(g_O * o) - delta)`` with ``delta = rowsum(g_O * O) - g_lse``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from ejkernel.ops.attention.masks import allowed
from ejkernel.parallel.ring_schedule import PairClass

__all__ = ["PairCall", "Packing", "pair_lengths", "pair_forward", "pair_backward", "empty_partial", "varying_zero"]


@dataclasses.dataclass(frozen=True)
class PairCall:
    """The static arguments every pair call of one ring shares (the call's semantics, made global)."""

    kernel: Any  # a registry Kernel of "attention_with_lse"
    seq_len: int  # the global sequence length (queries and keys alike)
    chunk_len: int
    causal: bool
    window: tuple[int, int] | None  # clamped to the global lengths
    softmax_scale: float
    logits_soft_cap: float | None
    dtype: Any
    softmax_dtype: Any

    def run(self, q: Array, k: Array, v: Array, bias: Array | None, mask: Array | None, packing: Packing, *,
            causal: bool, window: tuple[int, int] | None) -> tuple[Array, Array]:
        call = self.kernel.bind(
            q, k, v, attention_mask=mask, bias=bias, softmax_scale=self.softmax_scale,
            logits_soft_cap=self.logits_soft_cap, dtype=self.dtype, softmax_dtype=self.softmax_dtype,
            causal=causal, sliding_window=window, q_segment_ids=packing.q_segment_ids,
            kv_segment_ids=packing.kv_segment_ids, kv_lengths=packing.kv_lengths,
        )
        return self.kernel.run(call)


class Packing(NamedTuple):
    """One pair's packing arguments (each ``None`` when the call has none): the query chunk's segment ids
    ``[B, C]``, the key chunk's ``[B, C]``, and the key chunk's own lengths ``[B]`` in ``[0, C]``
    (``pair_lengths``)."""

    q_segment_ids: Array | None = None
    kv_segment_ids: Array | None = None
    kv_lengths: Array | None = None


def pair_lengths(kv_lengths: Array | None, k_start: Array, chunk_len: int) -> Array | None:
    """The global ``kv_lengths [B]`` as lengths of the key chunk starting at global position ``k_start``: a
    chunk's keys are contiguous global positions, so key ``j`` of it is kept iff ``j < length - k_start``."""
    if kv_lengths is None:
        return None
    return jnp.clip(kv_lengths.astype(jnp.int32) - k_start, 0, chunk_len).astype(jnp.int32)


def varying_zero(*arrays: Array | None) -> Array:
    """A float32 0 that depends on every array, so a loop's initial carry varies over the mesh axes its
    body's result varies over (``shard_map``'s ``check_vma``); it is the sum of an empty slice of each."""
    zero = jnp.zeros((), jnp.float32)
    for x in arrays:
        if x is not None:
            zero = zero + jnp.sum(x.reshape(-1)[:0].astype(jnp.float32))
    return zero


def empty_partial(q: Array, k: Array, v: Array, bias: Array | None) -> tuple[Array, Array]:
    """The partial of a pair with no allowed key: out 0 (``v``'s dtype), lse ``-inf``, varying as its inputs."""
    b, c, hq, _ = q.shape
    zero = varying_zero(q, k, v, bias)
    return ((jnp.zeros((b, c, hq, v.shape[-1]), jnp.float32) + zero).astype(v.dtype),
            jnp.full((b, c, hq), -jnp.inf, jnp.float32) + zero)


def _band_mask(p: PairCall, q_start: Array, k_start: Array, mask: Array | None) -> Array:
    """The pair's allowed set from global positions (``masks.allowed``) as ``[1, 1, C, C]``, and the user's mask."""
    idx = lax.broadcasted_iota(jnp.int32, (p.chunk_len, p.chunk_len), 0)
    jdx = lax.broadcasted_iota(jnp.int32, (p.chunk_len, p.chunk_len), 1)
    band = allowed(q_start + idx, k_start + jdx, p.seq_len, p.seq_len, p.causal, p.window)
    band = jnp.broadcast_to(jnp.asarray(band), idx.shape)[None, None]
    return band if mask is None else band & mask


def _branches(p: PairCall, q_start: Array, k_start: Array, mask: Array | None, packing: Packing):
    """The computation of each ``PairClass`` (skip excluded) as ``f(q, k, v, bias) -> (out, lse)``."""
    def full(q, k, v, bias):
        return p.run(q, k, v, bias, mask, packing, causal=False, window=None)

    def diagonal(q, k, v, bias):
        return p.run(q, k, v, bias, mask, packing, causal=p.causal, window=p.window)

    def band(q, k, v, bias):
        return p.run(q, k, v, bias, _band_mask(p, q_start, k_start, mask), packing, causal=False, window=None)

    return {PairClass.FULL: full, PairClass.DIAGONAL: diagonal, PairClass.BAND: band}


def pair_forward(p: PairCall, classes: tuple[PairClass, ...], branch: Array, q: Array, k: Array, v: Array,
                 bias: Array | None, mask: Array | None, packing: Packing, q_start: Array,
                 k_start: Array) -> tuple[Array, Array]:
    """The partial result of one pair of class ``classes[branch]`` (``branch`` traced int32; ``classes`` the
    classes the ring's table holds, so that no other is traced); ``q_start``/``k_start`` are global."""
    fns = _branches(p, q_start, k_start, mask, packing) | {PairClass.SKIP: empty_partial}
    branches = [fns[c] for c in classes]
    if len(branches) == 1:
        return branches[0](q, k, v, bias)
    return lax.switch(branch, branches, q, k, v, bias)


def pair_backward(p: PairCall, classes: tuple[PairClass, ...], branch: Array, q: Array, k: Array, v: Array,
                  bias: Array | None, mask: Array | None, packing: Packing, q_start: Array, k_start: Array,
                  g_out: Array, lse: Array, delta: Array) -> tuple[Array, ...]:
    """``(dq, dk, dv, dbias)`` of one pair (``dbias`` ``None`` without a bias), float32.

    ``g_out [B, C, Hq, Dv]`` is the cotangent of the merged output, ``lse [B, C, Hq]`` the merged lse (sinks
    excluded), ``delta = rowsum(g_out * out) - g_lse`` of the merged result. ``classes``/``branch`` as in
    ``pair_forward``.
    """
    fns = _branches(p, q_start, k_start, mask, packing)
    primals = (q, k, v) if bias is None else (q, k, v, bias)

    def zeros(*_):
        zero = varying_zero(*primals, mask, *packing, g_out, lse, delta)
        return tuple(jnp.zeros(x.shape, jnp.float32) + zero for x in primals)

    def gradients(fn):
        def grads(*_):
            # The pair recomputed, then its VJP with the merge's cotangents (module docstring).
            (o, part_lse), vjp = jax.vjp(lambda *a: fn(*a, *([None] if bias is None else [])), *primals)
            seen = jnp.isfinite(part_lse)
            w = jnp.where(seen, jnp.exp(jnp.where(seen, part_lse, 0.0) - jnp.where(seen, lse, 0.0)), 0.0)
            own = jnp.sum(g_out * o.astype(jnp.float32), axis=-1)
            g_o = (w[..., None] * g_out).astype(o.dtype)
            g_l = jnp.where(seen, w * (own - delta), 0.0)
            return tuple(g.astype(jnp.float32) for g in vjp((g_o, g_l)))
        return grads

    branches = [zeros if c == PairClass.SKIP else gradients(fns[c]) for c in classes]
    grads = branches[0]() if len(branches) == 1 else lax.switch(branch, branches, 0)
    return (*grads, None) if bias is None else grads
