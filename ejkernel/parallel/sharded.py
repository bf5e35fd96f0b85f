"""``sharded_ring_attention``: ring attention on global ``[B, S, H, D]`` arrays, the ``shard_map`` written for you.

The sequence axis is sharded over the mesh axis ``axis_name``; batch and heads may be sharded too
(``batch_axis``, ``head_axis``: a 2-D or 3-D mesh). With ``load_balance`` the arrays are placed in zigzag
order first (``ring_layout.to_ring_layout``; a bias or mask on both sequence axes) and the output is put
back in natural order, so the caller sees plain attention on the whole sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import PartitionSpec

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.parallel.ring import ring_attention
from ejkernel.parallel.ring_layout import from_ring_layout, to_ring_layout
from ejkernel.registry import get_kernel

__all__ = ["sharded_ring_attention"]

_EXTRAS = {
    "mesh": inspect.Parameter.empty, "axis_name": inspect.Parameter.empty, "load_balance": False,
    "batch_axis": None, "head_axis": None, "platform": "auto", "interpret": False,
}
_SIGNATURE = SIGNATURE.replace(
    parameters=[*SIGNATURE.parameters.values()]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in _EXTRAS.items()]
)


def _operand_spec(x: Any, batch_axis: Any, head_axis: Any, axis_name: Any) -> PartitionSpec:
    """A ``[B|1, H|1, S, S]`` bias/mask: rows sharded with the queries, broadcast axes replicated."""
    return PartitionSpec(batch_axis if x.shape[0] > 1 else None, head_axis if x.shape[1] > 1 else None, axis_name, None)


def sharded_ring_attention(*args: Any, **kwargs: Any) -> tuple[Array, None]:
    """``ring_attention`` on whole arrays: equal to ``ejkernel.attention`` on them, computed as a ring.

    The semantic parameters are ``ejkernel.attention``'s, on global arrays (``query [B, S, Hq, D]``, a bias
    or mask ``[B|1, Hq|Hkv|1, S, S]``), all in natural order.

    Args:
      mesh: the ``jax.sharding.Mesh`` (keyword-only, required).
      axis_name: its axis the sequence is sharded over (required). ``S`` must divide by its size (by twice
        its size with ``load_balance``).
      load_balance: zigzag placement, so every shard does the same causal work (``docs/ring.rst``).
      batch_axis, head_axis: mesh axes batch and heads are also sharded over (``None``: replicated). Heads:
        ``Hq`` and ``Hkv`` must both divide by that axis's size; per-head sinks and bias follow the heads.
      platform, interpret: the ``attention_with_lse`` implementation of the ring's steps (``get_kernel``).

    Returns:
      ``(output [B, S, Hq, Dv], None)``, sharded like the query.

    Raises:
      ValueError, TypeError: bad input (validated on the global arrays), naming the argument.
      NotImplementedError: dropout.
    """
    try:
        bound = _SIGNATURE.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"sharded_ring_attention(): {e}") from None
    bound.apply_defaults()
    a = dict(bound.arguments)
    mesh, axis_name, load_balance = a.pop("mesh"), a.pop("axis_name"), a.pop("load_balance")
    batch_axis, head_axis = a.pop("batch_axis"), a.pop("head_axis")
    platform, interpret = a.pop("platform"), a.pop("interpret")
    call = bind_call(a)  # the global call, validated once
    if call.features.dropout:
        raise NotImplementedError(
            "sharded_ring_attention: dropout is not supported (deterministic=False with dropout_prob > 0)")
    if axis_name not in mesh.shape:
        raise ValueError(
            f"sharded_ring_attention: axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    n = mesh.shape[axis_name]
    q, k, v, bias, mask, aux = call.query, call.key, call.value, call.bias, call.attention_mask, call.softmax_aux
    q_ids, kv_ids = call.q_segment_ids, call.kv_segment_ids
    if load_balance:
        q, k, v = (to_ring_layout(x, n) for x in (q, k, v))
        q_ids, kv_ids = (None if x is None else to_ring_layout(x, n) for x in (q_ids, kv_ids))
        bias, mask = (None if x is None else to_ring_layout(to_ring_layout(x, n, axis=2), n, axis=3)
                      for x in (bias, mask))
    seq = PartitionSpec(batch_axis, axis_name, head_axis, None)
    operands = {"bias": bias, "attention_mask": mask, "softmax_aux": aux, "q_segment_ids": q_ids,
                "kv_segment_ids": kv_ids, "kv_lengths": call.kv_lengths}
    present = {name: x for name, x in operands.items() if x is not None}
    specs = {name: _operand_spec(present[name], batch_axis, head_axis, axis_name)
             for name in ("bias", "attention_mask") if name in present}
    if aux is not None:
        specs["softmax_aux"] = PartitionSpec(head_axis, None) if aux.ndim == 2 else PartitionSpec(None)
    for name in ("q_segment_ids", "kv_segment_ids"):  # [B, S]: sharded with the sequence
        if name in present:
            specs[name] = PartitionSpec(batch_axis, axis_name)
    if "kv_lengths" in present:  # [B]: global lengths, the same on every sequence shard
        specs["kv_lengths"] = PartitionSpec(batch_axis)
    semantics = {name: a[name] for name in
                 ("softmax_scale", "logits_soft_cap", "dtype", "softmax_dtype", "causal", "sliding_window")}
    names = tuple(present)

    def local(q, k, v, *extra):
        out, _ = ring_attention(q, k, v, **dict(zip(names, extra, strict=True)), **semantics, axis_name=axis_name,
                                load_balance=load_balance, platform=platform, interpret=interpret)
        return out

    # Pallas kernels' outputs carry no varying-axes type yet (docs/ring.rst): check_vma only on XLA.
    pallas = any(s.uses_pallas for s in get_kernel("attention_with_lse", platform, interpret=interpret).candidates)
    f = jax.shard_map(local, mesh=mesh, in_specs=(seq, seq, seq, *(specs[nm] for nm in names)), out_specs=seq,
                      check_vma=not pallas)
    out = f(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), *present.values())
    return (from_ring_layout(out, n) if load_balance else out), None


sharded_ring_attention.__signature__ = _SIGNATURE
