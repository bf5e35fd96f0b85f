"""``ejkernel.dot_product_attention``: ``jax.nn.dot_product_attention``'s signature and semantics on the registry.

The same arguments, shapes (rank 3 or 4) and results as ``jax.nn``, the conventions of
``jax_conventions`` (top-left causal and window, uniform rows where nothing is allowed, zero rows past
``query_seq_lengths``); what it adds is ejkernel's: the best kernel for the device, fallback, ``platform``.
``docs/jax_nn_flax.rst`` states the rules and the few differences.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from ejkernel.ops.attention.jax_conventions import top_left_attention

__all__ = ["dot_product_attention"]


def _as_4d(x: Any) -> Array:
    """``x`` with leading size-1 axes up to rank 4, as ``jax.nn`` does for every array argument."""
    x = jnp.asarray(x)
    return x.reshape((1,) * (4 - x.ndim) + x.shape) if x.ndim < 4 else x


def _lengths(name: str, x: Any, batch: int) -> Array | None:
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.shape != (batch,) or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array of shape ({batch},), got {x.dtype}{list(x.shape)}")
    return x


def _window(local_window_size: Any) -> tuple[int, int] | None:
    if local_window_size is None:
        return None
    if isinstance(local_window_size, (int, np.integer)) and not isinstance(local_window_size, bool):
        return int(local_window_size), int(local_window_size)
    if (
        isinstance(local_window_size, (tuple, list))
        and len(local_window_size) == 2
        and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in local_window_size)
    ):
        return int(local_window_size[0]), int(local_window_size[1])
    raise TypeError(f"local_window_size must be an int or a (left, right) pair of ints, got {local_window_size!r}")


def _platform(implementation: Any, platform: str) -> str:
    """``implementation`` (jax.nn's) as ejkernel's ``platform``: ``None`` keeps ``platform``, "xla" is XLA."""
    if implementation is None:
        return platform
    if implementation == "xla":
        if platform not in ("auto", "xla"):
            raise ValueError(f"implementation='xla' and platform={platform!r} disagree; pass one of them")
        return "xla"
    raise ValueError(f"implementation must be None, 'xla' or 'cudnn', got {implementation!r}")


def dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: Literal["xla", "cudnn"] | None = None,
    return_residual: bool = False,
    platform: str = "auto",
) -> Array:
    """``jax.nn.dot_product_attention``, served by ejkernel's registry.

    Args:
      query: ``[B, T, N, H]`` or ``[T, N, H]``.
      key: ``[B, S, K, H]`` or ``[S, K, H]``, ``N % K == 0`` (query head ``n`` reads key head ``n // (N // K)``).
      value: the shape of ``key`` (a different head dim is accepted too).
      bias: added to the scaled logits; broadcasts to ``[B, N, T, S]`` (leading axes may be missing).
      mask: boolean, ``True`` = may attend; broadcasts like ``bias``. With ``bias``, both apply.
      scale: multiplies ``q·k``; ``1 / sqrt(H)`` when ``None``. A Python number.
      is_causal: top-left causal: query ``t`` sees keys ``s <= t``.
      query_seq_lengths: integer ``[B]``: query rows past their length are zeros.
      key_value_seq_lengths: integer ``[B]``: keys past their length are masked.
      local_window_size: ``w`` or ``(left, right)``: query ``t`` sees keys ``t - left <= s <= t + right``.
      implementation: ``None`` (the registry's choice for ``platform``), "xla" (ejkernel's XLA paths) or
        "cudnn" (``jax.nn``'s own cuDNN path, called as is).
      return_residual: only ``False``: the log-sum-exp residual is not returned by ejkernel.
      platform: keyword-only, ejkernel's: "auto", "xla", "pallas_tpu", "triton"; with fallback.

    Returns:
      The output, the shape of ``query`` with the value head dim, in the inputs' dtype. A row with no
      allowed key is the mean of all values, as in ``jax.nn``.

    Raises:
      ValueError, TypeError: bad input, naming the argument.
      NotImplementedError: ``return_residual=True``.
    """
    if return_residual:
        raise NotImplementedError("return_residual=True is not supported by ejkernel.dot_product_attention")
    if implementation == "cudnn":
        if platform != "auto":
            raise ValueError(f"implementation='cudnn' runs jax.nn's cuDNN path; platform={platform!r} cannot apply")
        return jax.nn.dot_product_attention(
            query, key, value, bias, mask, scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths, local_window_size=local_window_size, implementation="cudnn",
        )
    platform = _platform(implementation, platform)
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    out_shape = jnp.shape(query)[:-1] + jnp.shape(value)[-1:]
    query, key, value = _as_4d(query), _as_4d(key), _as_4d(value)
    if mask is not None:
        mask = _as_4d(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}; pass an additive mask as bias")
    if bias is not None:
        bias = _as_4d(bias)
        if not jnp.issubdtype(bias.dtype, jnp.floating):  # jax.nn adds it to the float32 logits
            bias = bias.astype(jnp.promote_types(query.dtype, jnp.float32))
    batch = key.shape[0]
    out, _ = top_left_attention(
        query, key, value, bias, mask, is_causal=bool(is_causal), window=_window(local_window_size), scale=scale,
        query_seq_lengths=_lengths("query_seq_lengths", query_seq_lengths, batch),
        key_value_seq_lengths=_lengths("key_value_seq_lengths", key_value_seq_lengths, batch),
        platform=platform,
    )
    return out.reshape(out_shape)
