"""The conventions of ``jax.nn.dot_product_attention`` and flax, computed by ``ejkernel.attention``.

Where they differ from ``docs/semantics.rst``, written once for both drop-ins (``docs/jax_nn_flax.rst``):

- **Top-left alignment.** Causal and the local window are aligned at the first query and key: query ``i``
  may see key ``j`` iff ``i - left <= j <= i + right``, with ``right`` capped at 0 by causal. That band is
  expressed through bottom-right ``causal``/``sliding_window`` on the keys a query can reach
  (``kernel_band``), so every kernel still skips blocks; a band that cannot be (a negative window side, no
  key at all) becomes an explicit boolean mask.
- **Rows with no allowed key** average every value (the softmax of equal "large negative" logits is
  uniform over all ``Skv`` keys); their gradient reaches only the values. ejkernel returns zeros there,
  so those rows are replaced by the mean of the values.
- **Padded queries** (``query_seq_lengths``) output zeros; padded keys (``key_value_seq_lengths``) are a
  ``[B, 1, 1, Skv]`` mask.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array
from jaxtyping import Bool, Float, Int

from ejkernel.ops.attention.api import attention
from ejkernel.ops.attention.layouts import per_query_head

__all__ = ["top_left_attention", "kernel_band", "band_bounds"]


def band_bounds(is_causal: bool, window: tuple[int, int] | None) -> tuple[int | None, int | None]:
    """``(left, right)`` of the top-left band ``i - left <= j <= i + right``; ``None`` is unbounded."""
    left, right = (None, None) if window is None else window
    if is_causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def kernel_band(
    left: int | None, right: int | None, q_len: int, kv_len: int
) -> tuple[int, bool, tuple[int, int] | None] | None:
    """The top-left band as ``(keys kept, causal, sliding_window)`` of the bottom-right semantics, or ``None``
    when it needs an explicit mask.

    Keys past ``q_len - 1 + right`` are seen by no query, so only the first ``keep`` keys are passed: with
    ``offset = keep - q_len`` the band is the bottom-right window ``(left + offset, right - offset)``.
    """
    keep = kv_len if right is None else min(kv_len, q_len + right)
    if keep < 1:
        return None
    offset = keep - q_len
    ours_left = None if left is None else left + offset
    ours_right = None if right is None else right - offset  # >= 0: keep <= q_len + right
    if ours_left is not None and ours_left < 0:
        return None
    if ours_left is None and ours_right is None:
        return keep, False, None
    if ours_left is None and ours_right == 0:
        return keep, True, None
    unbounded = q_len + kv_len  # the validation's clamp: the same as no bound
    return keep, False, (unbounded if ours_left is None else ours_left, unbounded if ours_right is None else ours_right)


def _band_mask(left: int | None, right: int | None, q_len: int, kv_len: int) -> Array:
    """``[Sq, Skv]``: ``i - left <= j <= i + right``."""
    i, j = jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :]
    ok = jnp.ones((q_len, kv_len), bool)
    if left is not None:
        ok &= j >= i - left
    if right is not None:
        ok &= j <= i + right
    return ok


def _empty_rows(mask: Any, kv_lengths: Any, left: int | None, right: int | None, q_len: int, kv_len: int) -> Any:
    """``[b|1, h|1, Sq]``: the rows with no allowed key (band, mask and key padding together); ``None`` when
    no row can be empty (known from the shapes alone)."""
    i = np.arange(q_len)
    lo = np.zeros(q_len, int) if left is None else np.maximum(0, i - left)
    hi = np.full(q_len, kv_len - 1) if right is None else np.minimum(kv_len - 1, i + right)
    if mask is None and kv_lengths is None:
        empty = lo > hi
        return jnp.asarray(empty)[None, None] if empty.any() else None
    if mask is None:
        return (lo[None] > jnp.minimum(kv_lengths[:, None] - 1, hi[None]))[:, None]
    allowed = mask & _band_mask(left, right, q_len, kv_len)
    if kv_lengths is not None:
        allowed = allowed & (jnp.arange(kv_len) < kv_lengths[:, None, None, None])
    return ~jnp.any(allowed, axis=-1)


def _trim_keys(x: Any, keep: int, kv_len: int) -> Any:
    """``x[..., :keep]`` for a bias or mask whose last (key) axis is full; a broadcast one is kept."""
    if x is None or keep == kv_len or x.shape[-1] == 1:
        return x
    return x[..., :keep]


def top_left_attention(
    query: Float[Array, "batch q_len num_q_heads head_dim"],
    key: Float[Array, "batch kv_len num_kv_heads head_dim"],
    value: Float[Array, "batch kv_len num_kv_heads v_head_dim"],
    bias: Float[Array, "#batch #heads #q_len #kv_len"] | None = None,
    mask: Bool[Array, "#batch #heads #q_len #kv_len"] | None = None,
    *,
    is_causal: bool = False,
    window: tuple[int, int] | None = None,
    scale: float | None = None,
    query_seq_lengths: Int[Array, " batch"] | None = None,
    key_value_seq_lengths: Int[Array, " batch"] | None = None,
    dropout_prob: float = 0.0,
    dropout_rng: Any = None,
    dtype: Any = None,
    return_weights: bool = False,
    platform: str = "auto",
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch num_q_heads q_len kv_len"] | None]:
    """Attention with the conventions of this module's docstring, on ``ejkernel.attention``.

    Args:
      query, key, value: ``[B, Sq, Hq, D]``, ``[B, Skv, Hkv, D]``, ``[B, Skv, Hkv, Dv]``.
      bias, mask: rank-4, broadcasting to ``[B, Hq, Sq, Skv]`` (mask boolean, ``True`` = may attend).
      is_causal: top-left causal: query ``i`` sees keys ``j <= i``.
      window: ``(left, right)``: query ``i`` sees keys ``i - left <= j <= i + right``.
      scale: multiplies ``q·k``; ``D ** -0.5`` when ``None``.
      query_seq_lengths, key_value_seq_lengths: ``[B]`` integers; queries past their length output zeros,
        keys past theirs are masked.
      dropout_prob, dropout_rng: ejkernel's dropout (one draw per weight) when ``dropout_prob > 0``.
      dtype: the computation's dtype (``None``: the inputs').
      return_weights: also return the ``[B, Hq, Sq, Skv]`` weights (the dense reference forms them).
      platform: ``ejkernel.attention``'s ``platform``.

    Returns:
      ``(output [B, Sq, Hq, Dv], weights or None)``; rows with no allowed key have uniform weights.

    Raises:
      ValueError, TypeError: bad input, naming the argument (``ejkernel.attention``'s validation).
    """
    q_len, kv_len, num_q_heads = query.shape[1], key.shape[1], query.shape[2]
    left, right = band_bounds(is_causal, window)
    band = kernel_band(left, right, q_len, kv_len)
    allowed = mask
    if key_value_seq_lengths is not None:
        padding = jnp.arange(kv_len) < key_value_seq_lengths[:, None, None, None]  # [B, 1, 1, Skv]
        allowed = padding if allowed is None else allowed & padding
    if band is None:
        keep, causal, sliding_window = kv_len, False, None
        band_mask = _band_mask(left, right, q_len, kv_len)[None, None]
        allowed = band_mask if allowed is None else allowed & band_mask
    else:
        keep, causal, sliding_window = band
    dropout = dropout_prob > 0.0
    out, weights = attention(
        query, key[:, :keep], value[:, :keep], _trim_keys(allowed, keep, kv_len), _trim_keys(bias, keep, kv_len),
        softmax_scale=scale, causal=causal, sliding_window=sliding_window, dtype=dtype,
        deterministic=not dropout, dropout_prob=dropout_prob, dropout_rng=dropout_rng if dropout else None,
        platform=platform, return_weights=return_weights,
    )
    if weights is not None and keep < kv_len:
        weights = jnp.pad(weights, ((0, 0), (0, 0), (0, 0), (0, kv_len - keep)))
    empty = _empty_rows(mask, key_value_seq_lengths, left, right, q_len, kv_len)
    if empty is not None:
        mean = per_query_head(jnp.mean(value.astype(jnp.float32), axis=1)[:, :, None], num_q_heads)  # [B, Hq, 1, Dv]
        rows = per_query_head(empty, num_q_heads)[..., None]  # [b|1, Hq|1, Sq, 1]
        out = jnp.where(rows.transpose(0, 2, 1, 3), mean.transpose(0, 2, 1, 3).astype(out.dtype), out)
        if weights is not None:
            weights = jnp.where(rows, jnp.asarray(1.0 / kv_len, weights.dtype), weights)
    if query_seq_lengths is not None:
        valid = jnp.arange(q_len) < query_seq_lengths[:, None]  # [B, Sq]
        out = jnp.where(valid[:, :, None, None], out, 0).astype(out.dtype)
        if weights is not None:
            weights = jnp.where(valid[:, None, :, None], weights, 0).astype(weights.dtype)
    return out, weights
