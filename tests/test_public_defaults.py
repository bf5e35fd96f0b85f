"""The public call's defaults (``docs/jax_nn_flax.rst``): it computes in the inputs' dtype, returns weights only
with ``return_weights=True`` (on every backend), and broadcasts ``bias`` and ``attention_mask`` by NumPy
rules; the seed's path keeps the seed's defaults."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ejkernel
from conftest import examples
from ejkernel.errors import FallbackWarning, KernelUnavailableError
from ejkernel.kernels._xla.attention._interface import attention as seed_path
from ejkernel.kernels.xla import spec as xla_spec
from numpy_reference import attention_reference

B, SQ, SKV, HQ, HKV, D = 2, 5, 7, 4, 2, 8


def _qkv(dtype=jnp.float32, seed=0):
    rngs = [np.random.default_rng([seed, i]) for i in range(3)]
    shapes = ((B, SQ, HQ, D), (B, SKV, HKV, D), (B, SKV, HKV, D))
    return tuple(jnp.asarray(r.standard_normal(s), dtype) for r, s in zip(rngs, shapes, strict=True))


def _fallbacks(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FallbackWarning)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_the_public_call_computes_in_the_inputs_dtype(dtype):
    q, k, v = _qkv(dtype)
    out, _ = ejkernel.attention(q, k, v, causal=True)
    assert out.dtype == dtype
    want, _ = seed_path(q, k, v, causal=True, dtype=dtype)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))


def test_the_seed_path_keeps_bfloat16():
    q, k, v = _qkv()
    for fn in (seed_path, ejkernel.get_kernel("attention")):
        out, weights = fn(q, k, v)
        assert out.dtype == weights.dtype == jnp.bfloat16
    explained = ejkernel.explain(*(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)))
    assert explained.features.dtype == "float32"


# ---------------------------------------------------------------------------------------------------
# return_weights


@pytest.mark.parametrize("platform", ["xla", "pallas_tpu", "triton"])
def test_return_weights_on_every_backend(platform):
    q, k, v = _qkv(seed=1)
    mask = jnp.asarray(np.random.default_rng(2).random((B, 1, SQ, SKV)) < 0.7)
    want_out, want_weights = seed_path(q, k, v, mask, causal=True, dtype=jnp.float32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, weights = ejkernel.attention(q, k, v, mask, causal=True, platform=platform, interpret=True)
    assert weights is None and _fallbacks(record) == []  # the kernel itself served it, and formed no weights
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), rtol=2e-5, atol=2e-5)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, weights = ejkernel.attention(q, k, v, mask, causal=True, platform=platform, interpret=True,
                                          return_weights=True)
    np.testing.assert_array_equal(np.asarray(weights), np.asarray(want_weights))  # the dense reference served it
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want_out))
    if platform == "xla":
        assert _fallbacks(record) == []
    else:
        (message,) = _fallbacks(record)
        assert f"{platform} cannot (return_weights=True unsupported" in message


def test_the_xla_implementations_follow_the_calls_return_weights():
    """``features.return_weights``: ``None`` (the seed's rule: weights where formed), ``False``, ``True``."""
    q, k, v = _qkv(seed=3)
    call = ejkernel.get_kernel("attention", "xla").bind(q, k, v, dtype=None)
    reference, chunked = xla_spec.REFERENCE.build(False), xla_spec.CHUNKED.build(False)
    for wanted in (None, False, True):
        asked = dataclasses.replace(call, features=dataclasses.replace(call.features, return_weights=wanted))
        assert (reference(asked)[1] is None) == (wanted is False), wanted
        assert chunked(asked)[1] is None
        declined = xla_spec.CHUNKED.capabilities.unsupported_reasons(asked.features)
        assert any("return_weights" in r for r in declined) == bool(wanted)
        assert xla_spec.REFERENCE.capabilities.unsupported_reasons(asked.features) == []


def test_return_weights_takes_the_dense_path_even_where_chunking_would_serve():
    big = jax.ShapeDtypeStruct((1, 2048, 8, 64), jnp.float32)  # 2**25 logits: the chunked path on a CPU
    assert ejkernel.explain(big, big, big).chosen.variant == "chunked"
    decision = ejkernel.explain(big, big, big, return_weights=True)
    assert decision.chosen.variant == "default"
    assert "return_weights=True unsupported" in str(decision)


def test_return_weights_that_cannot_fit_is_a_clear_error(monkeypatch):
    huge = jax.ShapeDtypeStruct((8, 16384, 32, 64), jnp.float32)  # 2**36 weights
    with pytest.raises(KernelUnavailableError, match=r"return_weights=True needs the \[B, Hq, Sq, Skv\] weights"):
        ejkernel.explain(huge, huge, huge, return_weights=True)
    with pytest.raises(KernelUnavailableError, match="MAX_WEIGHTS_ELEMENTS"):
        ejkernel.attention(huge, huge, huge, return_weights=True)  # refused before anything is computed
    assert ejkernel.explain(huge, huge, huge).chosen.variant == "chunked"  # without weights it is served
    # A device that reports its memory: the limit is that memory.
    monkeypatch.setattr(xla_spec, "device_memory_bytes", lambda: 2**30)
    small = jax.ShapeDtypeStruct((1, 4096, 8, 64), jnp.float32)  # 2**27 weights, ~2 GiB with the logits
    with pytest.raises(KernelUnavailableError, match="more than this device's 1.0 GiB"):
        ejkernel.explain(small, small, small, return_weights=True)
    tiny = jax.ShapeDtypeStruct((1, 512, 8, 64), jnp.float32)
    assert ejkernel.explain(tiny, tiny, tiny, return_weights=True).chosen.variant == "default"


def test_return_weights_must_be_a_bool():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="return_weights must be a bool"):
        ejkernel.attention(q, k, v, return_weights=1)


# ---------------------------------------------------------------------------------------------------
# NumPy broadcasting of bias and mask


@st.composite
def _broadcast_shapes(draw):
    """A shape broadcasting to [B, Hq, Sq, Skv] by NumPy rules: rank 1-4, each axis full or 1 (heads: Hkv too)."""
    full = (B, HQ, SQ, SKV)
    rank = draw(st.integers(1, 4))
    shape = []
    for axis in range(4 - rank, 4):
        choices = (full[axis], 1, HKV) if axis == 1 else (full[axis], 1)
        shape.append(draw(st.sampled_from(choices)))
    return tuple(shape)


def _numpy_full(x, num_q_heads=HQ):
    """``x`` broadcast to [B, Hq, Sq, Skv] in NumPy: leading 1s, a kv-head axis repeated over its group."""
    x = np.asarray(x).reshape((1,) * (4 - np.ndim(x)) + np.shape(x))
    if x.shape[1] not in (1, num_q_heads):
        x = np.repeat(x, num_q_heads // x.shape[1], axis=1)
    return np.broadcast_to(x, (B, num_q_heads, SQ, SKV))


@settings(max_examples=examples(1))
@given(mask_shape=_broadcast_shapes(), bias_shape=st.none() | _broadcast_shapes(), seed=st.integers(0, 2**31 - 1))
def test_bias_and_mask_broadcast_by_numpy_rules(mask_shape, bias_shape, seed):
    q, k, v = _qkv(seed=seed)
    rng = np.random.default_rng([seed, 7])
    mask = rng.random(mask_shape) < 0.6
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        out, weights = ejkernel.attention(q, k, v, mask, bias, return_weights=True, causal=True)
    want_out, want_weights = attention_reference(
        np.asarray(q), np.asarray(k), np.asarray(v), attention_mask=_numpy_full(mask),
        bias=None if bias is None else _numpy_full(bias), causal=True,
    )
    np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), want_weights, rtol=1e-5, atol=1e-5)
    if bias is not None:  # the gradient of a broadcast bias is summed back to its shape
        grad = jax.grad(lambda b: ejkernel.attention(q, k, v, mask, b, causal=True)[0].sum())(jnp.asarray(bias))
        assert grad.shape == bias.shape


@pytest.mark.pallas_interpret
def test_a_key_padding_mask_serves_every_backend():
    q, k, v = _qkv(seed=4)
    lengths = np.array([3, SKV])
    padding = jnp.asarray(np.arange(SKV)[None, None, None, :] < lengths[:, None, None, None])  # [B, 1, 1, Skv]
    want, _ = seed_path(q, k, v, jnp.broadcast_to(padding, (B, 1, SQ, SKV)), dtype=jnp.float32)
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v, padding)]
    assert ejkernel.explain(*shapes).features.mask == ("B", "1")
    for platform in ("xla", "triton"):
        out, _ = ejkernel.attention(q, k, v, padding, platform=platform, interpret=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-5, err_msg=platform)


@pytest.mark.parametrize("shape", [(B, 1, SQ + 1, SKV), (3, 1, 1, SKV), (SKV + 1,), (1, B, 1, 1, SKV)])
def test_a_mask_that_does_not_broadcast_is_named(shape):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"attention_mask.*" + r"\(" + ", ".join(map(str, shape))):
        ejkernel.attention(q, k, v, jnp.ones(shape, bool))
