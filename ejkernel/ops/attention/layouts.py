"""How a bias or mask ``[B|1, Hq|Hkv|1, Sq, Skv]`` meets the query heads, written once.

A layout is ``(batch, heads)``: batch ``"B"`` or ``"1"`` (broadcast), heads ``"q"`` (one per query head),
``"kv"`` (one per kv head, shared by its group) or ``"1"``. Query head ``h`` reads kv head
``h // group``. The index form (``kv_head``, ``operand_index``) serves kernels, on Python ints or traced
int32 alike; the array forms (``per_query_head``, ``reduce_to_layout``) serve XLA code and the bias
gradient, which is summed back over every broadcast axis. ``broadcast_operand`` brings a bias or mask that
broadcasts by NumPy rules (``[B, 1, 1, Skv]``, ``[Sq, Skv]``, ...) to that form, for the public call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OperandLayout", "broadcast_operand", "operand_layout", "kv_head", "operand_index", "per_query_head", "reduce_to_layout"]

# How a bias or mask broadcasts over batch and heads: ("B" | "1", "q" | "kv" | "1").
OperandLayout = tuple[str, str]


def operand_layout(shape: tuple[int, ...], batch: int, num_q_heads: int, num_kv_heads: int) -> OperandLayout:
    """Classifies an already validated ``[B|1, Hq|Hkv|1, Sq, Skv]`` shape.

    Size-1 axes are reported as broadcast ("1") and ``Hq == Hkv`` as "q": where two classes coincide
    their semantics are identical, so the choice only affects which kernel path serves the call.
    """
    del batch, num_kv_heads  # the shape was validated against them already
    b, h = shape[0], shape[1]
    batch_kind = "1" if b == 1 else "B"
    if h == 1:
        head_kind = "1"
    elif h == num_q_heads:
        head_kind = "q"
    else:
        head_kind = "kv"
    return batch_kind, head_kind



def broadcast_operand(x: Any, batch: int, num_q_heads: int, num_kv_heads: int, q_len: int, kv_len: int) -> Any:
    """A bias or mask broadcastable by NumPy rules to ``[B, H, Sq, Skv]`` in the form ``[B|1, H|1, Sq, Skv]``.

    Missing leading axes become size 1 and size-1 query or key axes are broadcast (``jnp.broadcast_to``:
    XLA fuses it into the dense and chunked paths; a Pallas kernel reads the broadcast operand). The batch
    and head axes keep their size, so their layout is still the cheap broadcast one. A shape that does not
    broadcast (or has rank > 4) is returned unchanged, for validation to name. ``jax.ShapeDtypeStruct`` in,
    ``jax.ShapeDtypeStruct`` out.
    """
    if x is None or not 1 <= len(x.shape) <= 4:
        return x
    shape = (1,) * (4 - len(x.shape)) + tuple(x.shape)
    fits = shape[0] in (1, batch) and shape[1] in (1, num_q_heads, num_kv_heads)
    if not fits or shape[2] not in (1, q_len) or shape[3] not in (1, kv_len):
        return x
    target = (*shape[:2], q_len, kv_len)
    if target == tuple(x.shape):
        return x
    import jax
    import jax.numpy as jnp

    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(target, x.dtype)
    return jnp.broadcast_to(jnp.reshape(x, shape), target)


def kv_head(q_head: Any, group: int) -> Any:
    """The kv head that query head ``q_head`` reads: ``q_head // group``.

    Traced values use a truncating int32 division (heads are non-negative): ``//`` lowers through
    ``sign``, which Mosaic cannot compile without a TPU attached, and mixes int64 in under x64.
    """
    if group == 1:
        return q_head
    if isinstance(q_head, int):
        return q_head // group
    import jax
    import jax.numpy as jnp

    return jax.lax.div(jnp.asarray(q_head, jnp.int32), jnp.int32(group))


def operand_index(layout: tuple[str, str], batch: Any, q_head: Any, group: int) -> tuple[Any, Any]:
    """``(batch index, head index)`` into a bias or mask with ``layout`` for ``(batch, q_head)``."""
    b = batch if layout[0] == "B" else 0
    if layout[1] == "q":
        h = q_head
    elif layout[1] == "kv":
        h = kv_head(q_head, group)
    else:
        h = 0
    return b, h


def per_query_head(x: Any, num_q_heads: int) -> Any:
    """``[b, h, ...]`` with ``h`` in (1, Hkv, Hq) as ``[b, Hq|1, ...]``: a kv head's slice serves its group."""
    import jax.numpy as jnp

    h = x.shape[1]
    if h in (1, num_q_heads):
        return x
    return jnp.repeat(x, num_q_heads // h, axis=1)


def reduce_to_layout(full: Any, shape: tuple[int, ...], num_q_heads: int) -> Any:
    """A ``[B, Hq, ...]`` gradient summed to a bias of ``shape`` ``[B|1, Hq|Hkv|1, ...]`` (its gradient)."""
    if shape[0] == 1 and full.shape[0] != 1:
        full = full.sum(0, keepdims=True)
    heads = shape[1]
    if heads == 1 and full.shape[1] != 1:
        full = full.sum(1, keepdims=True)
    elif heads not in (1, num_q_heads):
        full = full.reshape(full.shape[0], heads, num_q_heads // heads, *full.shape[2:]).sum(2)
    return full
