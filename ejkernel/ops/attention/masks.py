"""Which (query, key) pairs may attend (``docs/semantics.rst``), written once for every backend.

Queries and keys are aligned bottom-right: with ``offset = kv_len - q_len``, query ``i`` sits at key
position ``i + offset``. Causal allows ``j <= i + offset``; a window ``(left, right)`` allows
``i + offset - left <= j <= i + offset + right``; both together intersect. Segment ids allow a pair only
where the ids are equal and not negative (``same_segment``; a negative id is padding), and ``kv_lengths``
excludes keys at positions ``>= length`` (``within_length``); neither moves the causal diagonal.

The functions take NumPy or JAX integers/arrays alike, so kernels call them on iotas inside a block and
on block corners to decide which blocks to skip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "normalize_window", "clamp_window", "allowed", "same_segment", "within_length", "valid_pairs", "key_range", "query_range", "key_blocks", "query_blocks", "floor_div", "ceil_div",
]


def normalize_window(sliding_window: Any) -> tuple[int, int] | None:
    """``None``, ``w`` or ``(left, right)`` as ``None`` or ``(left, right)`` of non-negative ints."""
    if sliding_window is None:
        return None
    if isinstance(sliding_window, (bool, np.bool_)):
        raise TypeError(f"sliding_window must be an int or a (left, right) pair, got {sliding_window!r}")
    if isinstance(sliding_window, (int, np.integer)):
        left = right = int(sliding_window)
    elif isinstance(sliding_window, (tuple, list)) and len(sliding_window) == 2 and all(
        isinstance(w, (int, np.integer)) and not isinstance(w, (bool, np.bool_)) for w in sliding_window
    ):
        left, right = (int(w) for w in sliding_window)
    else:
        raise TypeError(f"sliding_window must be an int or a (left, right) pair of ints, got {sliding_window!r}")
    if left < 0 or right < 0:
        raise ValueError(f"sliding_window sizes must be >= 0, got {sliding_window!r}")
    return left, right


def clamp_window(window: tuple[int, int] | None, q_len: int, kv_len: int) -> tuple[int, int] | None:
    """``window`` with each side clamped to ``q_len + kv_len``: wider means the same (no key lies beyond it),
    and every backend's index arithmetic, ``i + offset +- side``, then stays inside int32."""
    if window is None:
        return None
    widest = q_len + kv_len
    return min(window[0], widest), min(window[1], widest)


def allowed(q_idx: Any, k_idx: Any, q_len: int, kv_len: int, causal: bool, window: tuple[int, int] | None) -> Any:
    """Whether query ``q_idx`` may attend key ``k_idx`` (broadcasting); ``True`` when unconstrained.

    Indices are absolute positions within the full sequences. Out-of-range indices (ragged tails) are
    not handled here: callers mask ``k_idx >= kv_len`` themselves.
    """
    diag = q_idx + (kv_len - q_len)  # the key position aligned with this query
    ok = True
    if causal:
        ok = k_idx <= diag
    if window is not None:
        left, right = window
        in_window = (k_idx >= diag - left) & (k_idx <= diag + right)
        ok = in_window if ok is True else ok & in_window
    return ok


def same_segment(q_ids: Any, kv_ids: Any) -> Any:
    """Whether a query of segment ``q_ids`` may attend a key of segment ``kv_ids`` (broadcasting): equal ids,
    and not padding (a negative id attends nothing and is attended by nothing, even by an equal id)."""
    return (q_ids == kv_ids) & (kv_ids >= 0)


def within_length(k_idx: Any, kv_length: Any) -> Any:
    """Whether key ``k_idx`` lies before its row's ``kv_lengths`` entry (keys at ``>= length`` are excluded)."""
    return k_idx < kv_length


def valid_pairs(q_idx: Any, k_idx: Any, q_len: int, kv_len: int, causal: bool, window: tuple[int, int] | None,
                mask: Any | None = None, *, q_segment: Any | None = None, kv_segment: Any | None = None,
                kv_length: Any | None = None) -> Any:
    """Which pairs of a tile count: a real key (``k_idx < kv_len``), allowed by causal/window, by ``mask``, by
    the segment ids (``same_segment`` of ``q_segment`` and ``kv_segment``, both or neither) and by
    ``kv_length`` (``within_length``).

    The one per-element rule of every tiled kernel; padded keys past ``kv_len`` never count.
    """
    ok = k_idx < kv_len
    rule = allowed(q_idx, k_idx, q_len, kv_len, causal, window)
    if rule is not True:
        ok = ok & rule
    if mask is not None:
        ok = ok & mask
    if q_segment is not None:
        ok = ok & same_segment(q_segment, kv_segment)
    if kv_length is not None:
        ok = ok & within_length(k_idx, kv_length)
    return ok


def key_range(q_lo: Any, q_hi: Any, q_len: int, kv_len: int, causal: bool, window: tuple[int, int] | None) -> tuple[Any, Any]:
    """Inclusive ``[k_lo, k_hi]`` of keys that some query in ``[q_lo, q_hi]`` may attend (unclipped)."""
    offset = kv_len - q_len
    k_lo = 0 * q_lo
    k_hi = 0 * q_hi + (kv_len - 1)
    if window is not None:
        left, right = window
        k_lo = q_lo + offset - left
        k_hi = q_hi + offset + right
    if causal:
        k_hi = q_hi + offset if window is None else _minimum(k_hi, q_hi + offset)
    return k_lo, k_hi


def query_range(k_lo: Any, k_hi: Any, q_len: int, kv_len: int, causal: bool, window: tuple[int, int] | None) -> tuple[Any, Any]:
    """Inclusive ``[q_lo, q_hi]`` of queries that may attend some key in ``[k_lo, k_hi]`` (unclipped).

    The inverse of ``key_range``: query ``i`` sits at key position ``i + offset``; causal needs
    ``i >= j - offset`` and a window ``(left, right)`` needs ``j - offset - right <= i <= j - offset + left``.
    """
    offset = kv_len - q_len
    q_lo = 0 * k_lo
    q_hi = 0 * k_hi + (q_len - 1)
    if window is not None:
        left, right = window
        q_lo = k_lo - offset - right
        q_hi = k_hi - offset + left
    if causal:
        q_lo = _maximum(q_lo, k_lo - offset)
    return q_lo, q_hi


def key_blocks(q_first: Any, q_last: Any, block_k: int, q_len: int, kv_len: int, causal: bool,
               window: tuple[int, int] | None, dense: bool = False, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """Key blocks ``(lo, interior_lo, interior_hi, hi)`` for the queries ``[q_first, q_last]`` (inclusive).

    Blocks ``[lo, hi)`` hold at least one allowed (real query, real key) pair: the others are skipped.
    Inside, blocks ``[interior_lo, interior_hi)`` are *interior*: causal/window allow every pair and no key
    is padding, so they need no per-element mask. ``dense`` (an ``attention_mask`` is present) makes no
    block interior. ``kv_length`` (one row's ``kv_lengths`` entry) ends the keys there: blocks past it are
    skipped and the block it cuts is not interior. ``q_last`` is clamped to the last real query. Works on
    Python ints, NumPy arrays and traced int32 scalars (kernels, index maps and host-side block counting
    use the same function).
    """
    q_last = _minimum(q_last, q_len - 1)
    real_keys = kv_len if kv_length is None else _clip_length(kv_length, kv_len)
    k_lo, k_hi = key_range(q_first, q_last, q_len, kv_len, causal, window)
    k_lo = _maximum(k_lo, 0)
    k_hi = _minimum(k_hi, real_keys - 1)
    lo = floor_div(k_lo, block_k)
    hi = _where((k_hi < k_lo) | (q_first > q_last), lo, floor_div(k_hi, block_k) + 1)
    if dense:
        return lo, hi, hi, hi
    offset = kv_len - q_len
    interior_hi = floor_div(real_keys, block_k)  # blocks with no padded or cut-off key
    if causal:  # every key of the block <= q_first + offset
        interior_hi = _minimum(interior_hi, floor_div(q_first + offset + 1, block_k))
    interior_lo = 0 * lo
    if window is not None:
        left, right = window
        interior_hi = _minimum(interior_hi, floor_div(q_first + offset + right + 1, block_k))
        interior_lo = ceil_div(q_last + offset - left, block_k)
    return _nested(lo, interior_lo, interior_hi, hi)


def query_blocks(k_first: Any, k_last: Any, block_q: int, q_len: int, kv_len: int, causal: bool,
                 window: tuple[int, int] | None, dense: bool = False, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """Query blocks ``(lo, interior_lo, interior_hi, hi)`` that see the keys ``[k_first, k_last]``.

    The transpose of ``key_blocks`` (for passes that walk query blocks per key block): ``[lo, hi)`` hold an
    allowed pair with a real query, ``[interior_lo, interior_hi)`` need no per-element mask. A key block
    holding padded keys (``k_last >= kv_len``, or past ``kv_length``) has no interior; one wholly past
    them is visited by no query block.
    """
    real_keys = kv_len if kv_length is None else _clip_length(kv_length, kv_len)
    q_lo, q_hi = query_range(k_first, _minimum(k_last, real_keys - 1), q_len, kv_len, causal, window)
    q_lo = _maximum(q_lo, 0)
    q_hi = _minimum(q_hi, q_len - 1)
    lo = floor_div(q_lo, block_q)
    hi = _where((q_hi < q_lo) | (k_first >= real_keys), lo, floor_div(q_hi, block_q) + 1)
    if dense:
        return lo, hi, hi, hi
    offset = kv_len - q_len
    interior_lo = 0 * lo
    interior_hi = 0 * hi + ceil_div(q_len, block_q)
    if causal:  # every query of the block >= k_last - offset
        interior_lo = ceil_div(k_last - offset, block_q)
    if window is not None:
        left, right = window
        interior_lo = _maximum(interior_lo, ceil_div(k_last - offset - right, block_q))
        interior_hi = _minimum(interior_hi, floor_div(k_first - offset + left + 1, block_q))
    interior_hi = _where(k_last >= real_keys, interior_lo, interior_hi)
    return _nested(lo, interior_lo, interior_hi, hi)


def _clip_length(kv_length: Any, kv_len: int) -> Any:
    """A ``kv_lengths`` entry clipped into ``[0, kv_len]`` (a longer one means every key, a negative one none)."""
    return _minimum(_maximum(kv_length, 0), kv_len)


def floor_div(x: Any, block: int) -> Any:
    """``floor(max(x, 0) / block)``: negative positions count as 0 (ranges are clipped to real positions).

    Traced values use a truncating int32 division (exact on non-negative values): ``//`` lowers through
    ``sign``, which Mosaic cannot compile without a TPU, and would mix int64 in under ``jax_enable_x64``.
    """
    x = _maximum(x, 0)
    if isinstance(x, (int, np.integer, np.ndarray)):
        return x // block
    import jax
    import jax.numpy as jnp

    return jax.lax.div(jnp.asarray(x, jnp.int32), jnp.int32(block))


def ceil_div(x: Any, block: int) -> Any:
    """``ceil(max(x, 0) / block)``, in the same forms as ``floor_div``."""
    return floor_div(_maximum(x, 0) + (block - 1), block)


def _nested(lo: Any, interior_lo: Any, interior_hi: Any, hi: Any) -> tuple[Any, Any, Any, Any]:
    """Clips so that ``lo <= interior_lo <= interior_hi <= hi``."""
    hi = _maximum(hi, lo)
    interior_lo = _minimum(_maximum(interior_lo, lo), hi)
    interior_hi = _minimum(_maximum(interior_hi, interior_lo), hi)
    return lo, interior_lo, interior_hi, hi


def _where(cond: Any, a: Any, b: Any) -> Any:
    if isinstance(cond, (bool, np.bool_)):
        return a if cond else b
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    import jax.numpy as jnp

    return jnp.where(cond, a, b)


def _minimum(a: Any, b: Any) -> Any:
    return _elementwise(min, np.minimum, "minimum", a, b)


def _maximum(a: Any, b: Any) -> Any:
    return _elementwise(max, np.maximum, "maximum", a, b)


def _elementwise(python_op, numpy_op, jax_name: str, a: Any, b: Any) -> Any:
    """Python ints stay ints, NumPy stays NumPy (host-side block counting), anything else goes to JAX."""
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return python_op(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return numpy_op(a, b)
    import jax.numpy as jnp

    return getattr(jnp, jax_name)(a, b)
