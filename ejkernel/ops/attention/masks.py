"""Causal and sliding-window semantics (DESIGN §1.6-7), written once for every backend.

Queries and keys are aligned bottom-right: with ``offset = kv_len - q_len``, query ``i`` sits at key
position ``i + offset``. Causal allows ``j <= i + offset``; a window ``(left, right)`` allows
``i + offset - left <= j <= i + offset + right``; both together intersect.

The functions take NumPy or JAX integers/arrays alike, so kernels call them on iotas inside a block and
on block corners to decide which blocks to skip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["normalize_window", "allowed", "key_range", "query_range", "block_has_allowed", "block_fully_allowed"]


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


def block_has_allowed(q_lo, q_hi, k_lo, k_hi, q_len, kv_len, causal, window) -> Any:
    """Whether the block ``[q_lo, q_hi] x [k_lo, k_hi]`` (inclusive) holds at least one allowed pair.

    Ignores bias/mask contents: it only decides what causal/window rule out, so skipping is exact.
    """
    lo, hi = key_range(q_lo, q_hi, q_len, kv_len, causal, window)
    return (k_hi >= lo) & (k_lo <= hi)


def block_fully_allowed(q_lo, q_hi, k_lo, k_hi, q_len, kv_len, causal, window) -> Any:
    """Whether every pair of the block is allowed by causal/window (so no per-element mask is needed)."""
    offset = kv_len - q_len
    ok = True
    if causal:
        ok = k_hi <= q_lo + offset
    if window is not None:
        left, right = window
        in_window = (k_lo >= q_hi + offset - left) & (k_hi <= q_lo + offset + right)
        ok = in_window if ok is True else ok & in_window
    return ok


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
