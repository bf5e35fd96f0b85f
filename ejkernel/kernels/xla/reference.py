"""The XLA reference attention: the semantics (``docs/semantics.rst``) written plainly, the default path and the parity oracle.

It materialises the ``[B, Hq, Sq, Skv]`` weights, so memory grows as ``Sq * Skv``; it is one jitted
computation that XLA fuses (logits, cap, bias, mask and softmax in one pass). K/V are never repeated
per query head: the query heads of a group are laid out as ``[B, Hkv, G * Sq, D]`` and contracted
against ``[B, Skv, Hkv, D]`` directly. The layout was measured on the CPU for every GQA ratio
(``benchmarks/xla_reference_cpu.py``; it is faster than ``jax.nn.dot_product_attention`` there).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.layouts import per_query_head
from ejkernel.ops.attention.logits import transform_logits
from ejkernel.ops.attention.masks import allowed, same_segment, within_length
from ejkernel.ops.attention.precision import matmul_precision
from ejkernel.ops.attention.segments import as_ids, visible_kv_ids, zero_invisible
from ejkernel.ops.attention.signature import entry_point
from ejkernel.ops.attention.sinks import sink_logits
from ejkernel.platform import current_platform

__all__ = ["attention", "reference_attention"]


def _products_precision(dtype: jnp.dtype) -> Any:
    """The ``precision`` of the two products: ``matmul_precision``'s, except bfloat16 on an NVIDIA GPU.

    There the products name their algorithm (bfloat16 operands, float32 accumulation, as jax.nn does) so
    that their transposes in the backward pass, whose cotangent operands are float32, also run as
    bfloat16 tensor-core products instead of float32 ones (measured 0.7x jax.nn's forward+backward without).
    """
    if dtype == jnp.bfloat16 and current_platform() == "cuda":
        return jax.lax.DotAlgorithmPreset.BF16_BF16_F32
    return matmul_precision(dtype)


def _rows(x: Array, drop: tuple[int, ...]) -> Array:
    """Drops the size-1 axes ``drop`` of the full ``[B, Hq, Sq, Skv]`` shape from ``x`` (broadcastable to it).

    XLA on the CPU runs the softmax's fused loops several times slower on shapes with a size-1 axis
    (``[B, Hkv, G, Sq, Skv]`` with ``G = 1`` or ``Hkv = 1``, or ``B = 1``), so they are squeezed away.
    """
    return jnp.squeeze(x, axis=drop) if drop else x


def reference_attention(call: AttentionCall) -> tuple[Array, Array | None]:
    """The computation of a validated call: ``(output [B, Sq, Hq, Dv], weights [B, Hq, Sq, Skv])``; the
    weights are ``None`` when the call's ``features.return_weights`` is ``False``.

    Query heads are laid out as ``[B, Hkv, G * Sq, D]`` so that each product is one batched matmul per
    kv head, against K and V as they are (never repeated per query head). The softmax runs on the
    ``[B, Hq, Sq, Skv]`` logits, a free reshape of the products' ``[B, Hkv, G * Sq, Skv]``.
    """
    f = call.features
    query, key, value = call.query, call.key, call.value
    attention_mask, bias, softmax_aux = call.attention_mask, call.bias, call.softmax_aux
    dtype = jnp.dtype(f.dtype)
    softmax_dtype = jnp.dtype(f.softmax_dtype)
    acc = jnp.promote_types(dtype, jnp.float32)  # float32 accumulation, float64 kept as float64
    b, sq, hq, d = query.shape
    hkv, g, skv = f.num_kv_heads, f.group_size, f.kv_len
    full = (b, hq, sq, skv)
    drop = tuple(axis for axis in range(3) if full[axis] == 1)
    q = query.astype(dtype).reshape(b, sq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * sq, d)
    k = key.astype(dtype)
    v = value.astype(dtype)
    if f.segment_ids or f.kv_lengths:  # keys no query may see never meet a product (NaN-safe padding)
        visible = visible_kv_ids(call.q_segment_ids, call.kv_segment_ids, call.kv_lengths, skv)
        k, v = zero_invisible(k, visible), zero_invisible(v, visible)

    s = jnp.einsum("bhqd,bkhd->bhqk", q, k, preferred_element_type=acc, precision=_products_precision(dtype))
    bias_rows = None if bias is None else _rows(per_query_head(bias, hq), drop)
    s, _ = transform_logits(_rows(s.reshape(full), drop), f.softmax_scale, f.logits_soft_cap, bias_rows)

    valid = None
    if f.causal or f.window is not None:
        q_idx = jnp.arange(sq)[:, None]
        k_idx = jnp.arange(skv)[None, :]
        valid = _rows(allowed(q_idx, k_idx, sq, skv, f.causal, f.window)[None, None], drop)
    if attention_mask is not None:
        m = _rows(per_query_head(attention_mask, hq), drop)
        valid = m if valid is None else (m & valid)
    packing = _packing_pairs(call, sq, skv)
    if packing is not None:
        m = _rows(packing, drop)
        valid = m if valid is None else (m & valid)

    # The row max is taken and subtracted in float32 (or wider); only the shifted logits are narrowed to
    # softmax_dtype, which cannot hold logits past its range (float16: 65504).
    wide = jnp.promote_types(acc, softmax_dtype)
    s = s.astype(wide)
    sinks = None
    if softmax_aux is not None:
        sinks = _rows(sink_logits(softmax_aux, hq)[None, :, None, :], drop).astype(wide)

    if valid is None and sinks is None and bias is None and softmax_dtype == wide:
        weights = _plain_softmax(s)
    else:
        weights = _softmax(s, sinks, valid, jnp.dtype(softmax_dtype))

    if f.dropout:
        # Drawn as [B, Hkv, G, Sq, Skv] (the same element order as [B, Hq, Sq, Skv]): one draw per weight.
        keep = jax.random.bernoulli(call.dropout_rng, 1.0 - f.dropout_prob, (b, hkv, g, sq, skv))
        weights = jnp.where(keep.reshape(weights.shape), weights / (1.0 - f.dropout_prob), 0)

    product = _float16_values_product if dtype == jnp.float16 else _values_product
    out = product(weights.reshape(b, hkv, g * sq, skv), v, dtype)
    out = out.reshape(b, hkv, g, sq, -1).transpose(0, 3, 1, 2, 4).reshape(b, sq, hq, -1).astype(dtype)
    if f.return_weights is False:  # the public call asked for none
        return out, None
    return out, weights.astype(dtype).reshape(full)


def _plain_softmax(s: Array) -> Array:
    """``_softmax`` of a row that allows every key and has no sinks or bias, so its logits are finite unless
    the inputs are not: the plain form ``exp(s - max) / sum``, which XLA's GPU softmax fusion recognises
    (``jax.nn.softmax``'s own form and derivative)."""
    return jax.nn.softmax(s, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _softmax(s: Array, sinks: Array | None, valid: Array | None, softmax_dtype: jnp.dtype) -> Array:
    """The weights of each row of logits ``s``: its allowed entries (``valid``, ``None``: all) over the row's
    keys and ``sinks`` (value-less logits); 0 where not allowed, and 0 for a row with nothing allowed.

    Its derivative is the softmax's own, ``dw = w * (ds - sum(w * ds))`` over keys and sinks, so the backward
    pass needs only the weights (as ``jax.nn.softmax``), not every intermediate of the forward.
    """
    return _softmax_parts(s, sinks, valid, softmax_dtype)[0]


def _softmax_parts(s, sinks, valid, softmax_dtype):
    """``(weights of the keys, weights of the sinks or None)``, in ``softmax_dtype`` (``s`` is wider or equal)."""
    wide = s.dtype
    # Masked logits stand at the lowest finite value, not -inf (jax.debug_infs); their weights are zeroed below.
    row_max = jnp.max(s if valid is None else jnp.where(valid, s, jnp.finfo(wide).min), axis=-1, keepdims=True)
    if sinks is not None:
        row_max = jnp.maximum(row_max, jnp.max(sinks, axis=-1, keepdims=True))
    # Softmax is invariant to the shift; a row whose logits are all -inf (an infinite bias) is shifted by 0.
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)

    def exp_shifted(x: Array) -> Array:
        shifted = x - row_max
        if softmax_dtype != wide:  # clipped to the narrow dtype's range: exp is 0 there, and nothing is -inf
            shifted = jnp.maximum(shifted, jnp.finfo(softmax_dtype).min).astype(softmax_dtype)
        return jnp.exp(shifted)

    # The inner where keeps exp finite on masked entries.
    e = exp_shifted(s) if valid is None else jnp.where(valid, exp_shifted(jnp.where(valid, s, row_max)), 0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    e_sinks = None
    if sinks is not None:
        e_sinks = exp_shifted(sinks)
        denom = denom + jnp.sum(e_sinks, axis=-1, keepdims=True)
    denom = jnp.where(denom == 0, 1, denom)
    return e / denom, None if sinks is None else e_sinks / denom


@_softmax.defjvp
def _softmax_jvp(softmax_dtype, primals, tangents):
    s, sinks, valid = primals
    ds, d_sinks, _ = tangents
    w, w_sinks = _softmax_parts(s, sinks, valid, softmax_dtype)
    if valid is not None:  # a masked entry's tangent may be inf (an infinite bias): its weight is 0 anyway
        ds = jnp.where(valid, ds, 0)
    dot = jnp.sum(w * ds, axis=-1, keepdims=True)
    if sinks is not None:
        dot = dot + jnp.sum(w_sinks * d_sinks, axis=-1, keepdims=True)
    return w, (w * (ds - dot)).astype(w.dtype)


def _packing_pairs(call: AttentionCall, sq: int, skv: int) -> Array | None:
    """``[B, 1, Sq, Skv]``: the pairs the segment ids and key lengths allow (``None`` without either)."""
    f = call.features
    ok = None
    if f.segment_ids:
        ok = same_segment(as_ids(call.q_segment_ids)[:, :, None], as_ids(call.kv_segment_ids)[:, None, :])
    if f.kv_lengths:
        in_length = within_length(jnp.arange(skv, dtype=jnp.int32)[None, None, :], as_ids(call.kv_lengths)[:, None, None])
        ok = in_length if ok is None else ok & in_length
    return None if ok is None else jnp.broadcast_to(ok[:, None], (ok.shape[0], 1, sq, skv))


def _values_product(weights: Array, v: Array, dtype: jnp.dtype) -> Array:
    """``[b, Hkv, G * Sq, Skv]`` weights cast to ``dtype`` times ``v [B, Skv, Hkv, Dv]``, accumulated in float32
    (float64 stays float64): ``[b, Hkv, G * Sq, Dv]``.

    In bfloat16 on an NVIDIA GPU the product is written in bfloat16 (jax.nn's form; it still accumulates in
    float32), so that its transpose forms the weights' cotangent ``dO·Vᵀ`` in bfloat16 as well: with a float32
    cotangent the forward+backward ran at 0.92x jax.nn's at D256, with this 0.99-1.01x
    (``benchmarks/xla_reference_gpu.py``, ``benchmarks/NOTES-cudnn.md``).
    """
    if dtype == jnp.bfloat16 and current_platform() == "cuda":
        return jnp.einsum("bhqk,bkhd->bhqd", weights.astype(dtype), v)
    acc = jnp.promote_types(dtype, jnp.float32)
    return jnp.einsum(
        "bhqk,bkhd->bhqd", weights.astype(dtype), v, preferred_element_type=acc, precision=_products_precision(dtype)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _float16_values_product(weights: Array, v: Array, dtype: jnp.dtype) -> Array:
    """``_values_product`` whose derivative in the weights is formed in float32.

    Autodiff of the float16 product would form the weights' cotangent, dO·Vᵀ, in float16: past 65504 it is
    inf and dQ, dK come out NaN although the float32 gradient fits. The forward product is unchanged.
    """
    return _values_product(weights, v, dtype)


@_float16_values_product.defjvp
def _float16_values_product_jvp(dtype: jnp.dtype, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    weights, v = primals
    d_weights, d_v = tangents
    wide = jnp.float32
    d_out = jnp.einsum("bhqk,bkhd->bhqd", d_weights.astype(wide), v.astype(wide), preferred_element_type=wide,
                       precision=matmul_precision(dtype))
    return _values_product(weights, v, dtype), d_out + _values_product(weights, d_v, dtype)


attention = entry_point(
    reference_attention,
    name="ejkernel.kernels.xla.reference.attention",
    doc="""Multi-head attention with the semantics of ``docs/semantics.rst``, in plain XLA.

    Args:
      query: ``[B, Sq, Hq, D]``.
      key: ``[B, Skv, Hkv, D]`` with ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
      value: ``[B, Skv, Hkv, Dv]``.
      attention_mask: boolean ``[B|1, Hq|Hkv|1, Sq, Skv]``, ``True`` = may attend.
      bias: ``[B|1, Hq|Hkv|1, Sq, Skv]``, added to the logits after the soft cap. With a mask, both apply.
      init_bias: called (once, eagerly) for a bias only when ``bias`` and ``attention_mask`` are ``None``.
      deterministic: ``False`` enables dropout when ``dropout_prob > 0``.
      dropout_rng: a PRNG key (typed or raw ``uint32[2]``); required when dropout is enabled.
      softmax_aux: sinks, ``[Hq, n]`` or ``[n]``: extra logits in each row's denominator, carrying no value,
        not scaled, capped or biased.
      softmax_scale: multiplies ``q·k``; default ``D ** -0.5``.
      logits_soft_cap: ``cap * tanh(s / cap)`` on the scaled logits; must be ``> 0``.
      dtype: inputs are cast to it for both products (accumulated in float32); the output and weights are
        in it. ``None`` keeps the query's dtype.
      softmax_dtype: the softmax's dtype; float32 when ``None``.
      dropout_prob: in ``[0, 1)``; kept weights are scaled by ``1 / (1 - p)``, masks independent per
        (batch, head, query, key).
      causal: bottom-right aligned: query ``i`` sees key ``j`` iff ``j <= i + Skv - Sq``.
      sliding_window: ``w`` or ``(left, right)``, inclusive, same alignment; intersects with causal.
      q_segment_ids: keyword-only, integer ``[B, Sq]``; with ``kv_segment_ids`` (integer ``[B, Skv]``, both or
        neither) query ``i`` may attend key ``j`` only where the ids are equal and not negative (a negative
        id is padding).
      kv_lengths: keyword-only, integer ``[B]`` in ``[0, Skv]``: keys at positions ``>= length`` are
        excluded. Keys no query may see (past the length, of a segment no query has, padding) never
        influence any result, even when they hold NaN or Inf.

    Returns:
      ``(output [B, Sq, Hq, Dv], weights [B, Hq, Sq, Skv])``; the weights exclude sink columns and include
      dropout (they are what multiplies V). Rows with no allowed key are zero in both, with zero gradients.

    Raises:
      ValueError, TypeError: for bad input, naming the argument (``ejkernel.ops.attention.validation``),
        at trace time. An empty dimension (B, Sq, Skv, H or D of 0) is a ``ValueError``.
    """,
)
