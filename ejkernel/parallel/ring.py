"""Ring attention: attention over a sequence sharded along a ``shard_map`` axis (context parallelism).

Called inside ``shard_map`` on the local shards. Each shard keeps its queries; the key/value blocks travel
around the ring with ``ppermute`` (shard ``i`` sends to ``i + 1``), and at step ``t`` every (local query
chunk, held key chunk) pair is computed by the registry's best ``attention_with_lse`` (``ring_steps``)
unless causality or the window exclude it (``ring_schedule``; skipped in compute, by ``lax.switch``). The
partials merge with ``merge.merge_partials``; sinks are added once, to the merged result
(``merge.add_sinks``). The next block's ``ppermute`` is issued at the top of each step, before that step's
compute, which does not depend on it, so the scheduler can overlap the two.

The backward pass is a ``custom_vjp`` and a second ring: K/V rotate again and each pair's gradient is
recomputed from the saved merged ``(out, lse)`` (``ring_steps.pair_backward``); the dK/dV of a block
travel with it, one step behind, and reach their home shard after a last ``ppermute``. Memory is
O(local S) in both passes: the residuals are the local q, k, v, bias, output and lse.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.masks import clamp_window, normalize_window
from ejkernel.ops.attention.merge import add_sinks, merge_partials
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.ops.attention.sinks import sinks_lse
from ejkernel.parallel.ring_layout import chunks_per_shard, shard_chunks
from ejkernel.parallel.ring_schedule import PairClass, step_classes
from ejkernel.parallel.ring_steps import PairCall, pair_backward, pair_forward, varying_zero
from ejkernel.registry import get_kernel

__all__ = ["ring_attention"]

_EXTRAS = {"axis_name": inspect.Parameter.empty, "load_balance": False, "platform": "auto", "interpret": False}
_SIGNATURE = SIGNATURE.replace(
    parameters=[*SIGNATURE.parameters.values()]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in _EXTRAS.items()]
)


def _num_shards(axis_name: Any) -> int:
    try:
        return int(lax.axis_size(axis_name))
    except NameError as e:
        raise ValueError(f"ring_attention: axis_name {axis_name!r} is not a mesh axis of the enclosing shard_map ({e})") from None


def _local_stand_in(name: str, x: Any, local_len: int, num_shards: int) -> Any:
    """A ``[.., S_local, S_local]`` stand-in of a per-shard ``[.., S_local, S_global]`` bias/mask, for validation."""
    if x is None:
        return None
    if len(x.shape) != 4 or x.shape[-1] != local_len * num_shards:
        raise ValueError(
            f"ring_attention: {name} must be [B|1, Hq|Hkv|1, S_local, S_local * num_shards] = [.., {local_len}, "
            f"{local_len * num_shards}] (this shard's query rows, every key in the sharded order), got {tuple(x.shape)}"
        )
    return jax.ShapeDtypeStruct((*x.shape[:-1], local_len), x.dtype)


def _slice_pair(x: Array | None, row: int, col: Array, size: int) -> Array | None:
    if x is None:
        return None
    return lax.dynamic_slice_in_dim(lax.slice_in_dim(x, row, row + size, axis=2), col, size, axis=3)


def _ring_core(pair: PairCall, axis_name: Any, num_shards: int, load_balance: bool):
    """The custom_vjp ``(q, k, v, bias, mask) -> (out float32 [B, S, Hq, Dv], lse [B, S, Hq])`` without sinks."""
    n, c = num_shards, pair.chunk_len
    k_per = chunks_per_shard(load_balance)
    local_len = c * k_per
    table = step_classes(n, load_balance, c, pair.causal, pair.window)
    classes = tuple(PairClass(x) for x in np.unique(table))  # only these are traced
    branch_of = np.searchsorted(np.asarray(classes), table).astype(np.int32)
    chunks = shard_chunks(n, load_balance) * c  # global start of every local chunk
    perm = [(i, (i + 1) % n) for i in range(n)]

    def pairs(t: Array):
        """(local q chunk, held k chunk, class, q start, k start, held shard) of step ``t``."""
        r = lax.axis_index(axis_name)
        src = (r - t) % n
        cls = jnp.asarray(branch_of)[r, t]
        starts = jnp.asarray(chunks, jnp.int32)
        for a in range(k_per):
            for b in range(k_per):
                yield a, b, cls[a, b], starts[r, a], starts[src, b], src

    def forward(q, k, v, bias, mask):
        b_, _, hq, _ = q.shape
        zero = varying_zero(q, k, v, bias, mask)
        outs = tuple(jnp.zeros((b_, c, hq, v.shape[-1]), jnp.float32) + zero for _ in range(k_per))
        lses = tuple(jnp.full((b_, c, hq), -jnp.inf, jnp.float32) + zero for _ in range(k_per))
        q_chunks = [lax.slice_in_dim(q, a * c, (a + 1) * c, axis=1) for a in range(k_per)]

        def step(t, carry):
            k_blk, v_blk, outs, lses = carry
            next_kv = lax.ppermute((k_blk, v_blk), axis_name, perm)  # issued before this step's compute
            outs, lses = list(outs), list(lses)
            for a, b, cls, q_start, k_start, src in pairs(t):
                col = src * local_len + b * c
                o, part_lse = pair_forward(
                    pair, classes, cls, q_chunks[a], lax.slice_in_dim(k_blk, b * c, (b + 1) * c, axis=1),
                    lax.slice_in_dim(v_blk, b * c, (b + 1) * c, axis=1), _slice_pair(bias, a * c, col, c),
                    _slice_pair(mask, a * c, col, c), q_start, k_start,
                )
                outs[a], lses[a] = merge_partials(outs[a], lses[a], o, part_lse)
            return (*next_kv, tuple(outs), tuple(lses))

        _, _, outs, lses = lax.fori_loop(0, n, step, (k, v, outs, lses))
        return jnp.concatenate(outs, axis=1), jnp.concatenate(lses, axis=1)

    @jax.custom_vjp
    def core(q, k, v, bias, mask):
        return forward(q, k, v, bias, mask)

    def core_fwd(q, k, v, bias, mask):
        out, lse = forward(q, k, v, bias, mask)
        return (out, lse), (q, k, v, bias, mask, out, lse)

    def core_bwd(residuals, cotangents):
        q, k, v, bias, mask, out, lse = residuals
        g_out, g_lse = cotangents
        g_out = g_out.astype(jnp.float32)
        delta = jnp.sum(g_out * out, axis=-1) - g_lse.astype(jnp.float32)
        zero = varying_zero(q, k, v, bias, mask, g_out, g_lse)
        rows = lambda x, a: lax.slice_in_dim(x, a * c, (a + 1) * c, axis=1)  # noqa: E731
        f32 = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32) + zero  # noqa: E731

        def step(t, carry):
            k_blk, v_blk, dk_out, dv_out, dq, dbias = carry
            next_kv = lax.ppermute((k_blk, v_blk), axis_name, perm)
            # The accumulators of the block held now, from the shard that held it last step.
            dk_blk, dv_blk = lax.ppermute((dk_out, dv_out), axis_name, perm)
            dq_parts = [lax.slice_in_dim(dq, a * c, (a + 1) * c, axis=1) for a in range(k_per)]
            dk_parts = [lax.slice_in_dim(dk_blk, b * c, (b + 1) * c, axis=1) for b in range(k_per)]
            dv_parts = [lax.slice_in_dim(dv_blk, b * c, (b + 1) * c, axis=1) for b in range(k_per)]
            for a, b, cls, q_start, k_start, src in pairs(t):
                col = src * local_len + b * c
                dq_p, dk_p, dv_p, db_p = pair_backward(
                    pair, classes, cls, rows(q, a), rows(k_blk, b), rows(v_blk, b), _slice_pair(bias, a * c, col, c),
                    _slice_pair(mask, a * c, col, c), q_start, k_start, rows(g_out, a), rows(lse, a), rows(delta, a),
                )
                dq_parts[a] = dq_parts[a] + dq_p
                dk_parts[b] = dk_parts[b] + dk_p
                dv_parts[b] = dv_parts[b] + dv_p
                if dbias is not None:
                    start = (0, 0, a * c, col)
                    dbias = lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, start, db_p.shape) + db_p, start)
            cat = lambda xs: jnp.concatenate(xs, axis=1)  # noqa: E731
            return (*next_kv, cat(dk_parts), cat(dv_parts), cat(dq_parts), dbias)

        init = (k, v, f32(k), f32(v), f32(q), f32(bias))
        _, _, dk, dv, dq, dbias = lax.fori_loop(0, n, step, init)
        dk, dv = lax.ppermute((dk, dv), axis_name, perm)  # home: each block's gradient to its own shard
        return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
                None if bias is None else dbias.astype(bias.dtype), None)

    core.defvjp(core_fwd, core_bwd)
    return core


def ring_attention(*args: Any, **kwargs: Any) -> tuple[Array, None]:
    return _ring_attention(*args, **kwargs)


def _ring_attention(*args: Any, **kwargs: Any) -> tuple[Array, None]:
    try:
        bound = _SIGNATURE.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"ring_attention(): {e}") from None
    bound.apply_defaults()
    a = dict(bound.arguments)
    axis_name, load_balance = a.pop("axis_name"), a.pop("load_balance")
    platform, interpret = a.pop("platform"), a.pop("interpret")
    if not isinstance(load_balance, bool):
        raise TypeError(f"ring_attention: load_balance must be a bool, got {load_balance!r}")
    n = _num_shards(axis_name)
    query, key, value = a["query"], a["key"], a["value"]
    local_len = query.shape[1] if len(getattr(query, "shape", ())) == 4 else None
    bias = a["bias"] if a["bias"] is not None or a["attention_mask"] is not None or a["init_bias"] is None else a["init_bias"]()
    mask = a["attention_mask"]
    stand_ins = dict(a, bias=_local_stand_in("bias", bias, local_len, n), init_bias=None,
                     attention_mask=_local_stand_in("attention_mask", mask, local_len, n))
    f = bind_call(stand_ins).features
    if f.kv_len != f.q_len:
        raise ValueError(f"ring_attention: key and query must have the same local length (both sharded alike), "
                         f"got {f.kv_len} and {f.q_len}")
    if f.dropout:
        raise NotImplementedError("ring_attention: dropout is not supported (deterministic=False with dropout_prob > 0)")
    k_per = chunks_per_shard(load_balance)
    if local_len % k_per:
        raise ValueError(f"ring_attention: with load_balance=True the local length must be even, got {local_len}")
    seq_len = local_len * n
    pair = PairCall(
        kernel=get_kernel("attention_with_lse", platform, interpret=interpret), seq_len=seq_len,
        chunk_len=local_len // k_per, causal=f.causal,
        window=clamp_window(normalize_window(a["sliding_window"]), seq_len, seq_len),
        softmax_scale=f.softmax_scale, logits_soft_cap=f.logits_soft_cap, dtype=jnp.dtype(f.dtype),
        softmax_dtype=jnp.dtype(f.softmax_dtype),
    )
    dtype = jnp.dtype(f.dtype)
    core = _ring_core(pair, axis_name, n, load_balance)
    out, lse = core(jnp.asarray(query).astype(dtype), jnp.asarray(key).astype(dtype), jnp.asarray(value).astype(dtype),
                    bias, mask)
    if a["softmax_aux"] is not None:
        out, lse = add_sinks(out, lse, sinks_lse(jnp.asarray(a["softmax_aux"]), f.num_q_heads))
    return out.astype(dtype), None
