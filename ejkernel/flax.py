"""``attention_fn`` for flax: ``flax.nnx.MultiHeadAttention(attention_fn=ejkernel.flax.nnx_attention)`` and
``flax.linen.MultiHeadDotProductAttention(attention_fn=ejkernel.flax.linen_attention)``.

Each takes the arguments flax passes and follows flax's conventions (``docs/jax_nn_flax.rst``): any number
of batch axes (or none), masks of any dtype where nonzero means *may attend*, broadcast to
``[batch..., heads, q_len, kv_len]``; top-left ``is_causal`` (nnx); a row with no allowed key averages every
value; ``module`` sows the weights (``nnx.Intermediate`` / ``"intermediates"``, ``"attention_weights"``);
``dtype`` and ``promote_dtype`` promote the inputs. The computation is ``ejkernel.attention``'s, on the best
kernel for the device, with fallback; ``functools.partial(nnx_attention, platform="triton")`` picks one.

flax is optional (``pip install ejkernel[flax]``): this module imports it only to sow into an nnx module.
What flax offers and ejkernel cannot do raises instead of being ignored: ``broadcast_dropout=True`` with
dropout active (ejkernel draws one mask per weight: pass ``broadcast_dropout=False``), sowing the weights
with dropout active, per-dot ``precision`` tuples and custom einsums.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ejkernel.ops.attention.jax_conventions import top_left_attention

__all__ = ["nnx_attention", "linen_attention"]


def _promote(arrays: tuple[Array, ...], dtype: Any) -> tuple[Array, ...]:
    """flax's ``promote_dtype``: every array in ``dtype``, or in the arrays' result type when it is ``None``."""
    dtype = jnp.result_type(*arrays) if dtype is None else dtype
    return tuple(jnp.asarray(x, dtype) for x in arrays)


def _precision(precision: Any) -> contextlib.AbstractContextManager:
    """flax's ``precision`` as a ``jax.default_matmul_precision`` scope, which every backend follows."""
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, jax.lax.Precision):
        return jax.default_matmul_precision(precision.name.lower())
    if isinstance(precision, str):
        return jax.default_matmul_precision(precision)
    raise NotImplementedError(f"precision must be None, a jax.lax.Precision or its name, got {precision!r}")


def _flat_operand(x: Any, batch_shape: tuple[int, ...], name: str) -> Array | None:
    """A ``[batch..., heads, q, kv]``-broadcastable array as ``[prod(batch) | 1, heads, q, kv]``."""
    if x is None:
        return None
    x = jnp.asarray(x)
    rank = len(batch_shape) + 3
    if x.ndim > rank:
        raise ValueError(f"{name} of shape {x.shape} has more axes than [batch..., heads, q_len, kv_len] ({rank})")
    x = x.reshape((1,) * (rank - x.ndim) + x.shape)
    lead = x.shape[: len(batch_shape)]
    if all(n == 1 for n in lead):
        return x.reshape((1, *x.shape[len(batch_shape):]))
    try:
        x = jnp.broadcast_to(x, (*batch_shape, *x.shape[len(batch_shape):]))
    except ValueError:
        raise ValueError(f"{name} of shape {x.shape} does not broadcast to the batch axes {batch_shape}") from None
    return x.reshape((math.prod(batch_shape), *x.shape[len(batch_shape):]))


def _flax_attention(
    query: Any, key: Any, value: Any, bias: Any, mask: Any, *, broadcast_dropout: bool, dropout_rng: Any,
    dropout_rate: float, deterministic: bool, dtype: Any, precision: Any, promote: Callable[..., Any],
    is_causal: bool, sow: Callable[[Array], None] | None, platform: str,
) -> Array:
    """The attention both functions share; ``sow`` receives the weights in ``[batch..., heads, q, kv]``."""
    query, key, value = promote((query, key, value), dtype)
    if not query.ndim == key.ndim == value.ndim >= 3:
        raise ValueError(f"query, key and value must have one rank >= 3, got {query.shape}, {key.shape}, {value.shape}")
    batch_shape = query.shape[:-3]
    dropout = not deterministic and dropout_rate > 0.0
    if dropout and broadcast_dropout:
        raise ValueError(
            "broadcast_dropout=True shares one dropout mask across batch and heads; ejkernel draws one per "
            "weight: pass broadcast_dropout=False (or set dropout_rate=0 / deterministic=True)"
        )
    if dropout and sow is not None:
        raise ValueError("sowing the attention weights with dropout active is not supported (flax sows them before dropout)")
    if dropout and dropout_rng is None:
        raise ValueError("dropout is active (deterministic=False, dropout_rate > 0) but dropout_rng is None")
    flat = lambda x: x.reshape((math.prod(batch_shape), *x.shape[-3:]))  # noqa: E731
    mask = _flat_operand(mask, batch_shape, "mask")
    with _precision(precision):
        out, weights = top_left_attention(
            flat(query), flat(key), flat(value), _flat_operand(bias, batch_shape, "bias"),
            None if mask is None else mask.astype(bool), is_causal=is_causal,
            dropout_prob=float(dropout_rate) if dropout else 0.0, dropout_rng=dropout_rng if dropout else None,
            return_weights=sow is not None, platform=platform,
        )
    if sow is not None:
        sow(weights.reshape((*batch_shape, *weights.shape[1:])))
    return out.reshape((*batch_shape, *out.shape[1:]))


def nnx_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
    promote_dtype: Callable[..., Any] | None = None,
    is_causal: bool = False,
    *,
    platform: str = "auto",
) -> Array:
    """``flax.nnx.dot_product_attention``'s signature and semantics, computed by ``ejkernel.attention``.

    Args:
      query: ``[batch..., q_len, num_heads, head_dim]``.
      key: ``[batch..., kv_len, num_kv_heads, head_dim]``, ``num_heads % num_kv_heads == 0``.
      value: ``[batch..., kv_len, num_kv_heads, v_head_dim]``.
      bias: added to the logits; broadcasts to ``[batch..., num_heads, q_len, kv_len]``.
      mask: nonzero = may attend (any dtype); broadcasts like ``bias``.
      broadcast_dropout: must be ``False`` when dropout is active (one draw per weight).
      dropout_rng: the key of the dropout draw, when it is active.
      dropout_rate: the dropout probability; active when ``deterministic`` is ``False``.
      deterministic: ``True`` switches dropout off.
      dtype: the computation's dtype (``None``: the inputs' result type).
      precision: ``None``, a ``jax.lax.Precision`` or its name: the products' precision.
      module: an ``nnx.Module`` to sow the weights into (``nnx.Intermediate``, "attention_weights").
      promote_dtype: called as ``promote_dtype((query, key, value), dtype=dtype)``; flax's rule when ``None``.
      is_causal: top-left causal: query ``i`` sees keys ``j <= i``.
      platform: keyword-only, ejkernel's implementation platform ("auto", "xla", "pallas_tpu", "triton").

    Returns:
      ``[batch..., q_len, num_heads, v_head_dim]``.

    Raises:
      ValueError: shapes that do not fit; dropout with ``broadcast_dropout=True``, without a key, or with
        ``module``.
      NotImplementedError: a ``precision`` that is not one setting.
    """
    promote = _promote if promote_dtype is None else (lambda arrays, dtype: promote_dtype(arrays, dtype=dtype))

    def sow_nnx(weights: Array) -> None:
        from flax import nnx

        module.sow(nnx.Intermediate, "attention_weights", weights)

    return _flax_attention(
        query, key, value, bias, mask, broadcast_dropout=broadcast_dropout, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision, promote=promote,
        is_causal=is_causal, sow=None if module is None else sow_nnx, platform=platform,
    )


def linen_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general: Callable[..., Array] | None = None,
    qk_attn_weights_einsum: Callable[..., Array] | None = None,
    attn_weights_value_einsum: Callable[..., Array] | None = None,
    *,
    platform: str = "auto",
) -> Array:
    """``flax.linen.dot_product_attention``'s signature and semantics, computed by ``ejkernel.attention``.

    Args:
      query: as in ``nnx_attention``, and so are ``key``, ``value``, ``bias``, ``mask``,
        ``broadcast_dropout``, ``dropout_rng``, ``dropout_rate``, ``deterministic``, ``dtype`` and ``precision``.
      module: a linen ``Module`` to sow the weights into (``"intermediates"``, ``"attention_weights"``).
      force_fp32_for_softmax: accepted either way: ejkernel's softmax is always float32.
      einsum_dot_general, qk_attn_weights_einsum, attn_weights_value_einsum: only ``None`` (a fused kernel
        has no einsum to replace).
      platform: keyword-only, ejkernel's implementation platform.

    Returns:
      ``[batch..., q_len, num_heads, v_head_dim]``.

    Raises:
      ValueError: as ``nnx_attention``.
      NotImplementedError: a custom einsum or dot_general; a ``precision`` that is not one setting.
    """
    del force_fp32_for_softmax  # the softmax is float32 whatever the inputs' dtype
    for name, fn in (("einsum_dot_general", einsum_dot_general), ("qk_attn_weights_einsum", qk_attn_weights_einsum),
                     ("attn_weights_value_einsum", attn_weights_value_einsum)):
        if fn is not None:
            raise NotImplementedError(f"{name} is not supported by ejkernel.flax.linen_attention (pass None)")

    def sow_linen(weights: Array) -> None:
        module.sow("intermediates", "attention_weights", weights)

    return _flax_attention(
        query, key, value, bias, mask, broadcast_dropout=broadcast_dropout, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision, promote=_promote,
        is_causal=False, sow=None if module is None else sow_linen, platform=platform,
    )
