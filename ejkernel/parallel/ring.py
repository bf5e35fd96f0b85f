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
travel with it, one step behind, and reach their home shard after a last ``ppermute``. A step sums its
own dK/dV apart and adds the received ones after its pairs, so that their transfer overlaps its compute
too. Memory is O(local S) in both passes: the residuals are the local q, k, v, bias, output and lse.
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
from ejkernel.ops.attention.validation import resolve_bias
from ejkernel.parallel.ring_layout import chunks_per_shard, shard_chunks
from ejkernel.parallel.ring_schedule import PairClass, step_classes
from ejkernel.parallel.ring_steps import Packing, PairCall, pair_backward, pair_forward, pair_lengths, varying_zero
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
        raise ValueError(
            f"ring_attention: axis_name {axis_name!r} is not a mesh axis of the enclosing shard_map ({e})"
        ) from None


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


def _rows(x: Array, start: Array, size: int, axis: int = 1) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _add_rows(x: Array, start: Array, part: Array, axis: int = 1) -> Array:
    return lax.dynamic_update_slice_in_dim(x, _rows(x, start, part.shape[axis], axis) + part, start, axis)


def _operand_pair(x: Array | None, row: Array, col: Array, size: int) -> Array | None:
    """The ``[.., size, size]`` block of a per-shard ``[.., S_local, S]`` bias or mask."""
    return None if x is None else _rows(_rows(x, row, size, 2), col, size, 3)


def _ids_rows(x: Array | None, start: Array, size: int) -> Array | None:
    """The ``[B, size]`` rows of ``[B, S_local]`` segment ids from ``start`` (``None`` stays ``None``)."""
    return None if x is None else _rows(x, start, size)


def _ring_core(pair: PairCall, axis_name: Any, num_shards: int, load_balance: bool):
    """The custom_vjp ``(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths) -> (out float32 [B, S, Hq, Dv], lse
    [B, S, Hq])`` without sinks; ``q_ids``/``kv_ids`` are the local segment ids (the key ids travel with
    K/V), ``kv_lengths`` the global lengths ``[B]``; each may be ``None``.

    Each step loops over its ``k * k`` chunk pairs (``k`` chunks per shard) with ``fori_loop``, so one pair's
    computation is traced once per pass whatever the layout.
    """
    n, c = num_shards, pair.chunk_len
    k_per = chunks_per_shard(load_balance)
    local_len = c * k_per
    table = step_classes(n, load_balance, c, pair.causal, pair.window)
    classes = tuple(PairClass(x) for x in np.unique(table))  # only these are traced
    branch_of = np.searchsorted(np.asarray(classes), table).astype(np.int32).reshape(n, n, k_per * k_per)
    starts = shard_chunks(n, load_balance) * c  # global start of every local chunk
    perm = [(i, (i + 1) % n) for i in range(n)]

    def pair_at(t: Array, i: Array):
        """Step ``t``, pair ``i``: (query row, key row within the held block, branch, global q start, global k
        start, key column in the per-shard bias/mask)."""
        t, i = jnp.asarray(t, jnp.int32), jnp.asarray(i, jnp.int32)  # loop indices are int64 under x64
        r = lax.axis_index(axis_name).astype(jnp.int32)
        src = (r - t) % n
        a, b = i // k_per, i % k_per
        global_starts = jnp.asarray(starts, jnp.int32)
        branch = jnp.asarray(branch_of)[r, t, i]
        return a * c, b * c, branch, global_starts[r, a], global_starts[src, b], src * local_len + b * c

    def packing_at(q_ids, ids_blk, kv_lengths, row, key_row, k_start) -> Packing:
        return Packing(_ids_rows(q_ids, row, c), _ids_rows(ids_blk, key_row, c), pair_lengths(kv_lengths, k_start, c))

    def forward(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths):
        b_, s_, hq, _ = q.shape
        zero = varying_zero(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths)
        out = jnp.zeros((b_, s_, hq, v.shape[-1]), jnp.float32) + zero
        lse = jnp.full((b_, s_, hq), -jnp.inf, jnp.float32) + zero

        def step(t, carry):
            k_blk, v_blk, ids_blk, out, lse = carry
            next_kv = lax.ppermute((k_blk, v_blk, ids_blk), axis_name, perm)  # issued before this step's compute

            def one_pair(i, acc):
                out, lse = acc
                row, key_row, branch, q_start, k_start, col = pair_at(t, i)
                o, part_lse = pair_forward(
                    pair, classes, branch, _rows(q, row, c), _rows(k_blk, key_row, c), _rows(v_blk, key_row, c),
                    _operand_pair(bias, row, col, c), _operand_pair(mask, row, col, c),
                    packing_at(q_ids, ids_blk, kv_lengths, row, key_row, k_start), q_start, k_start,
                )
                o, part_lse = merge_partials(_rows(out, row, c), _rows(lse, row, c), o, part_lse)
                return (lax.dynamic_update_slice_in_dim(out, o, row, 1),
                        lax.dynamic_update_slice_in_dim(lse, part_lse, row, 1))

            out, lse = lax.fori_loop(0, k_per * k_per, one_pair, (out, lse))
            return (*next_kv, out, lse)

        _, _, _, out, lse = lax.fori_loop(0, n, step, (k, v, kv_ids, out, lse))
        return out, lse

    @jax.custom_vjp
    def core(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths):
        return forward(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths)

    def core_fwd(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths):
        out, lse = forward(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths)
        return (out, lse), (q, k, v, bias, mask, q_ids, kv_ids, kv_lengths, out, lse)

    def core_bwd(residuals, cotangents):
        q, k, v, bias, mask, q_ids, kv_ids, kv_lengths, out, lse = residuals
        g_out, g_lse = cotangents
        g_out = g_out.astype(jnp.float32)
        delta = jnp.sum(g_out * out, axis=-1) - g_lse.astype(jnp.float32)
        zero = varying_zero(q, k, v, bias, mask, q_ids, kv_ids, kv_lengths, g_out, g_lse)
        f32 = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32) + zero  # noqa: E731

        def step(t, carry):
            k_blk, v_blk, ids_blk, dk_out, dv_out, dq, dbias = carry
            next_kv = lax.ppermute((k_blk, v_blk, ids_blk), axis_name, perm)
            # The accumulators of the block held now, from the shard that held it last step; this step's
            # contribution is summed apart and added to them last, so their transfer overlaps the compute.
            dk_in, dv_in = lax.ppermute((dk_out, dv_out), axis_name, perm)
            dk_blk, dv_blk = jnp.zeros_like(dk_in) + zero, jnp.zeros_like(dv_in) + zero

            def one_pair(i, acc):
                dq, dk_blk, dv_blk, dbias = acc
                row, key_row, branch, q_start, k_start, col = pair_at(t, i)
                dq_p, dk_p, dv_p, db_p = pair_backward(
                    pair, classes, branch, _rows(q, row, c), _rows(k_blk, key_row, c), _rows(v_blk, key_row, c),
                    _operand_pair(bias, row, col, c), _operand_pair(mask, row, col, c),
                    packing_at(q_ids, ids_blk, kv_lengths, row, key_row, k_start), q_start, k_start,
                    _rows(g_out, row, c), _rows(lse, row, c), _rows(delta, row, c),
                )
                if dbias is not None:
                    columns = _add_rows(_rows(dbias, col, c, 3), row, db_p, 2)  # this pair's key columns, updated
                    dbias = lax.dynamic_update_slice_in_dim(dbias, columns, col, 3)
                return _add_rows(dq, row, dq_p), _add_rows(dk_blk, key_row, dk_p), _add_rows(dv_blk, key_row, dv_p), dbias

            dq, dk_blk, dv_blk, dbias = lax.fori_loop(0, k_per * k_per, one_pair, (dq, dk_blk, dv_blk, dbias))
            return (*next_kv, dk_in + dk_blk, dv_in + dv_blk, dq, dbias)

        init = (k, v, kv_ids, f32(k), f32(v), f32(q), f32(bias))
        _, _, _, dk, dv, dq, dbias = lax.fori_loop(0, n, step, init)
        dk, dv = lax.ppermute((dk, dv), axis_name, perm)  # home: each block's gradient to its own shard
        return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
                None if bias is None else dbias.astype(bias.dtype), None, None, None, None)

    core.defvjp(core_fwd, core_bwd)
    return core


def ring_attention(*args: Any, **kwargs: Any) -> tuple[Array, None]:
    """Attention over a sequence sharded along the ``shard_map`` axis ``axis_name``; call it inside ``shard_map``.

    The semantic parameters are ``ejkernel.attention``'s (``docs/semantics.rst``), applied to the *global*
    sequence whose local shards are passed; the result equals single-device ``attention`` on the whole
    sequence, shard for shard (``docs/ring.rst``). Queries and keys are sharded alike (one global length
    ``S = n * S_local``; causal and windows are aligned on it).

    Args:
      query: ``[B, S_local, Hq, D]``, this shard's queries; key ``[B, S_local, Hkv, D]``, value
        ``[B, S_local, Hkv, Dv]``: this shard's keys and values (they travel round the ring).
      attention_mask, bias: ``[B|1, Hq|Hkv|1, S_local, S]``: this shard's query rows against *every* key,
        the key axis in the sharded order (column ``c`` is local key ``c % S_local`` of shard ``c // S_local``;
        with ``load_balance`` that is the zigzag order of ``ring_layout.to_ring_layout``).
      softmax_aux: sinks, ``[Hq, n]`` or ``[n]``, the same on every shard; counted once per row.
      q_segment_ids, kv_segment_ids: this shard's segment ids, integer ``[B, S_local]`` each (the key ids
        travel round the ring with their keys); both or neither, as in ``attention``.
      kv_lengths: integer ``[B]``, the same on every shard: keys at *global* positions ``>= length`` are
        excluded (natural positions: with ``load_balance``, the position before the zigzag placement).
      axis_name: the mesh axis the sequence is sharded over (keyword-only, required).
      load_balance: ``True`` when the sequence was placed in zigzag order (``to_ring_layout``): every shard
        then does the same causal work (``ring_schedule.work_per_shard``).
      platform, interpret: which ``attention_with_lse`` implementation serves the ring's steps, as in
        ``ejkernel.get_kernel`` (fallback to XLA with a ``FallbackWarning``).

    Returns:
      ``(output [B, S_local, Hq, Dv], None)`` in ``dtype``: this shard's rows of the global result.

    Raises:
      ValueError, TypeError: bad input, naming the argument; ``axis_name`` not an axis of the enclosing
        ``shard_map``; key and query local lengths that differ; an odd local length with ``load_balance``.
      NotImplementedError: dropout.
    """
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
    bias, mask = resolve_bias(a["bias"], a["attention_mask"], a["init_bias"]), a["attention_mask"]
    local_len = query.shape[1] if len(getattr(query, "shape", ())) == 4 else None
    stand_ins = dict(a, bias=bias, init_bias=None)
    if local_len is not None:  # else bind_call names the query's rank
        stand_ins.update(bias=_local_stand_in("bias", bias, local_len, n),
                         attention_mask=_local_stand_in("attention_mask", mask, local_len, n))
    kv_lengths = a["kv_lengths"]
    if kv_lengths is not None and hasattr(kv_lengths, "shape"):  # global lengths: no local range to check
        stand_ins["kv_lengths"] = jax.ShapeDtypeStruct(kv_lengths.shape, kv_lengths.dtype)
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
    ids = [None if a[name] is None else jnp.asarray(a[name])
           for name in ("q_segment_ids", "kv_segment_ids", "kv_lengths")]
    out, lse = core(jnp.asarray(query).astype(dtype), jnp.asarray(key).astype(dtype), jnp.asarray(value).astype(dtype),
                    bias, mask, *ids)
    if a["softmax_aux"] is not None:
        out, lse = add_sinks(out, lse, sinks_lse(jnp.asarray(a["softmax_aux"]), f.num_q_heads))
    return out.astype(dtype), None


ring_attention.__signature__ = _SIGNATURE
