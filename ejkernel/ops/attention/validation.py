"""Argument validation shared by every attention implementation.

Runs on shapes, dtypes and Python values only, so it raises at trace time (under ``jax.jit`` too) and
works on ``jax.ShapeDtypeStruct`` as well as arrays. It returns the call's ``AttentionFeatures``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.layouts import operand_layout
from ejkernel.ops.attention.masks import clamp_window, normalize_window

__all__ = ["validate_attention", "canonical_dtype", "resolve_bias"]


def canonical_dtype(dtype: Any, default: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, ``default`` when it is ``None``."""
    return jnp.dtype(default if dtype is None else dtype)


def resolve_bias(bias: Any, attention_mask: Any, init_bias: Any) -> Any:
    """The bias a call uses: ``init_bias()`` only when ``bias`` and ``attention_mask`` are both ``None``."""
    if bias is None and attention_mask is None and init_bias is not None:
        return init_bias()
    return bias


def _is_floating(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def _check_rank(name: str, x: Any, rank: int, layout: str) -> None:
    if len(x.shape) != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {tuple(x.shape)}")


def _check_operand(
    name: str, x: Any, batch: int, num_q_heads: int, num_kv_heads: int, q_len: int, kv_len: int
) -> None:
    """Bias and mask share one rule: ``[B|1, Hq|Hkv|1, Sq, Skv]``."""
    expected = f"[{batch}|1, {num_q_heads}|{num_kv_heads}|1, {q_len}, {kv_len}]"
    if len(x.shape) != 4:
        raise ValueError(f"{name} must have rank 4 {expected}, got shape {tuple(x.shape)}")
    b, h, sq, skv = x.shape
    if b not in (batch, 1) or h not in (num_q_heads, num_kv_heads, 1) or (sq, skv) != (q_len, kv_len):
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast as {expected}")


def _static_float(name: str, value: Any) -> float | None:
    """A Python number as float; ``None`` for ``None``. Traced values are rejected: dispatch needs them;
    strings and bools are rejected although ``float()`` would take them."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except Exception as e:  # a tracer raises a ConcretizationTypeError here
        raise TypeError(f"{name} must be a Python number (static), got {type(value).__name__}") from e


def _check_dropout_rng(rng: Any) -> None:
    """A typed PRNG key of shape ``()`` or a raw ``uint32[2]`` key (what ``jax.random`` draws from)."""
    if rng is None:
        raise ValueError("dropout requested (deterministic=False, dropout_prob > 0) but dropout_rng is None")
    shape, dtype = tuple(getattr(rng, "shape", (None,))), getattr(rng, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if not ((typed and shape == ()) or (not typed and dtype == jnp.uint32 and shape == (2,))):
        raise ValueError(
            f"dropout_rng must be a PRNG key (jax.random.key(...), shape ()) or a raw uint32[2] key "
            f"(jax.random.PRNGKey(...)), got shape {shape} dtype {dtype}"
        )


def _check_ids(name: str, x: Any, shape: tuple[int, ...], layout: str) -> None:
    """An integer (not boolean) array of exactly ``shape``."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
        raise TypeError(f"{name} must be an integer array {layout}, got dtype {dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(x.shape)}")


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array when its values are known now (not under ``jit``, not a ``ShapeDtypeStruct``)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_packing(q_segment_ids: Any, kv_segment_ids: Any, kv_lengths: Any, batch: int, q_len: int,
                   kv_len: int) -> None:
    """Segment ids both or neither, ``[B, Sq]`` / ``[B, Skv]`` integer; ``kv_lengths`` ``[B]`` integer in
    ``[0, Skv]`` (checked when the values are known: under ``jit`` they are clipped into that range)."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        given, missing = ("q_segment_ids", "kv_segment_ids") if kv_segment_ids is None else ("kv_segment_ids", "q_segment_ids")
        raise ValueError(f"{given} was given without {missing}: segment ids take both (use equal arrays for self-attention)")
    if q_segment_ids is not None:
        _check_ids("q_segment_ids", q_segment_ids, (batch, q_len), "[batch, q_len]")
        _check_ids("kv_segment_ids", kv_segment_ids, (batch, kv_len), "[batch, kv_len]")
    if kv_lengths is not None:
        _check_ids("kv_lengths", kv_lengths, (batch,), "[batch]")
        values = _concrete(kv_lengths)
        if values is not None and values.size and (values.min() < 0 or values.max() > kv_len):
            raise ValueError(f"kv_lengths must be in [0, kv_len={kv_len}], got {values.tolist()}")


def validate_attention(
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any = None,
    bias: Any = None,
    deterministic: bool = True,
    dropout_rng: Any = None,
    softmax_aux: Any = None,
    softmax_scale: float | None = None,
    logits_soft_cap: float | None = None,
    dtype: Any = jnp.bfloat16,
    softmax_dtype: Any = None,
    dropout_prob: float = 0.0,
    causal: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    *,
    q_segment_ids: Any = None,
    kv_segment_ids: Any = None,
    kv_lengths: Any = None,
) -> AttentionFeatures:
    """Checks every argument against the semantics (``docs/semantics.rst``) and returns the call's features.

    Raises:
      ValueError: wrong ranks or shapes, an empty dimension (B, S, H or D of 0), ``Hq % Hkv != 0``,
        ``logits_soft_cap <= 0``, ``dropout_prob`` outside ``[0, 1)``, dropout without a valid ``dropout_rng``,
        negative or malformed windows, a non-finite ``softmax_scale``, one segment id array without the other
        or of the wrong shape, ``kv_lengths`` of the wrong shape or (when known) outside ``[0, Skv]``.
      TypeError: non-floating query/key/value/bias/sinks, mismatched input dtypes, a non-boolean mask,
        a non-floating ``dtype``, a non-bool ``deterministic`` or ``causal``, a string or bool where a number
        is expected, non-integer segment ids or lengths.
    """
    _check_rank("query", query, 4, "[batch, q_len, num_q_heads, head_dim]")
    _check_rank("key", key, 4, "[batch, kv_len, num_kv_heads, head_dim]")
    _check_rank("value", value, 4, "[batch, kv_len, num_kv_heads, v_head_dim]")
    batch, q_len, num_q_heads, head_dim = query.shape
    kb, kv_len, num_kv_heads, k_head_dim = key.shape
    if not _is_floating(query.dtype):
        raise TypeError(f"query must be floating point, got {query.dtype}")
    for name, x in (("key", key), ("value", value)):
        if x.dtype != query.dtype:
            raise TypeError(f"{name} dtype {x.dtype} differs from query dtype {query.dtype}")
    if kb != batch or value.shape[0] != batch:
        raise ValueError(
            f"batch sizes differ: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if k_head_dim != head_dim:
        raise ValueError(f"key head_dim {k_head_dim} != query head_dim {head_dim} (query {tuple(query.shape)}, key {tuple(key.shape)})")
    if value.shape[1] != kv_len or value.shape[2] != num_kv_heads:
        raise ValueError(f"value shape {tuple(value.shape)} must match key {tuple(key.shape)} in kv_len and num_kv_heads")
    if min(batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, value.shape[3]) < 1:
        raise ValueError(f"empty dimension: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    if num_q_heads % num_kv_heads:
        raise ValueError(
            f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
        )

    compute_dtype = canonical_dtype(dtype, query.dtype)
    if not _is_floating(compute_dtype):
        raise TypeError(f"dtype must be a floating dtype, got {compute_dtype}")
    softmax_compute = canonical_dtype(softmax_dtype, jnp.float32)
    if not _is_floating(softmax_compute):
        raise TypeError(f"softmax_dtype must be a floating dtype, got {softmax_compute}")

    dims = (batch, num_q_heads, num_kv_heads, q_len, kv_len)
    mask_layout = bias_layout = None
    if attention_mask is not None:
        if attention_mask.dtype != jnp.bool_:
            raise TypeError(f"attention_mask must be boolean (True = may attend), got {attention_mask.dtype}")
        _check_operand("attention_mask", attention_mask, *dims)
        mask_layout = operand_layout(attention_mask.shape, batch, num_q_heads, num_kv_heads)
    if bias is not None:
        if not _is_floating(bias.dtype):
            raise TypeError(f"bias must be floating point, got {bias.dtype}")
        _check_operand("bias", bias, *dims)
        bias_layout = operand_layout(bias.shape, batch, num_q_heads, num_kv_heads)

    num_sinks, sinks_per_head = 0, False
    if softmax_aux is not None:
        if not _is_floating(softmax_aux.dtype):
            raise TypeError(f"softmax_aux must be floating point, got {softmax_aux.dtype}")
        shape = tuple(softmax_aux.shape)
        if len(shape) == 1 and shape[0] >= 1:
            num_sinks = shape[0]
        elif len(shape) == 2 and shape[0] == num_q_heads and shape[1] >= 1:
            num_sinks, sinks_per_head = shape[1], True
        else:
            raise ValueError(
                f"softmax_aux must have shape [num_q_heads={num_q_heads}, num_sinks] or [num_sinks], got {shape}"
            )

    scale = _static_float("softmax_scale", softmax_scale)
    if scale is None:
        scale = head_dim**-0.5
    elif not math.isfinite(scale):
        raise ValueError(f"softmax_scale must be finite, got {scale}")
    cap = _static_float("logits_soft_cap", logits_soft_cap)
    if cap is not None and not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"logits_soft_cap must be a finite number > 0, got {cap}")
    p = _static_float("dropout_prob", dropout_prob)
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout_prob must be in [0, 1), got {p}")
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__} {deterministic!r}")
    dropout = (not deterministic) and p > 0.0
    if dropout:
        _check_dropout_rng(dropout_rng)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    _check_packing(q_segment_ids, kv_segment_ids, kv_lengths, batch, q_len, kv_len)

    return AttentionFeatures(
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        v_head_dim=value.shape[3],
        input_dtype=jnp.dtype(query.dtype).name,
        dtype=compute_dtype.name,
        softmax_dtype=softmax_compute.name,
        softmax_scale=scale,
        bias=bias_layout,
        mask=mask_layout,
        causal=bool(causal),
        window=clamp_window(normalize_window(sliding_window), q_len, kv_len),
        logits_soft_cap=cap,
        num_sinks=num_sinks,
        sinks_per_head=sinks_per_head,
        dropout=dropout,
        dropout_prob=p if dropout else 0.0,
        segment_ids=q_segment_ids is not None,
        kv_lengths=kv_lengths is not None,
    )
