"""``ejkernel.dot_product_attention`` against ``jax.nn.dot_product_attention`` on the CPU, in float32, forward and
gradients, over every argument ``jax.nn`` has (``docs/jax_nn_flax.rst``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ejkernel
from conftest import examples
from ejkernel.ops.attention.jax_conventions import kernel_band

# (B or None for rank 3, T, S, N, K, H): T != S both ways, GQA 2 and 4, MQA, a decode step.
SHAPES = (
    (2, 6, 6, 4, 2, 8),
    (None, 5, 9, 2, 2, 8),
    (2, 9, 4, 4, 1, 8),
    (1, 1, 7, 4, 4, 16),
    (3, 7, 12, 8, 2, 8),
)


@st.composite
def _operand_shape(draw, b, n, t, s):
    """A bias/mask shape jax.nn accepts: rank 4 (2 and 3 too: leading axes added), size-1 axes broadcast."""
    full = (b or 1, n, t, s)
    shape = tuple(draw(st.sampled_from((size, 1))) for size in full)
    return shape[draw(st.integers(0, 2)):]


@st.composite
def _case(draw):
    b, t, s, n, k, h = draw(st.sampled_from(SHAPES))
    rank_b = b or 1
    return dict(
        shape=(b, t, s, n, k, h),
        bias=draw(st.none() | _operand_shape(b, n, t, s)),
        mask=draw(st.none() | _operand_shape(b, n, t, s) | st.just((rank_b, 1, 1, s))),
        scale=draw(st.none() | st.sampled_from((0.1, 0.7))),
        is_causal=draw(st.booleans()),
        local_window_size=draw(st.none() | st.integers(0, 4) | st.tuples(st.integers(-1, 5), st.integers(-1, 5))),
        query_seq_lengths=draw(st.none() | st.lists(st.integers(0, t), min_size=rank_b, max_size=rank_b)),
        key_value_seq_lengths=draw(st.none() | st.lists(st.integers(0, s), min_size=rank_b, max_size=rank_b)),
        implementation=draw(st.sampled_from((None, "xla"))),
    )


def _arrays(case, seed):
    b, t, s, n, k, h = case["shape"]
    lead = () if b is None else (b,)
    rngs = [np.random.default_rng([seed, i]) for i in range(6)]
    arrays = dict(
        query=jnp.asarray(rngs[0].standard_normal((*lead, t, n, h)), jnp.float32),
        key=jnp.asarray(rngs[1].standard_normal((*lead, s, k, h)), jnp.float32),
        value=jnp.asarray(rngs[2].standard_normal((*lead, s, k, h)), jnp.float32),
        bias=None if case["bias"] is None else jnp.asarray(rngs[3].standard_normal(case["bias"]), jnp.float32),
        mask=None if case["mask"] is None else jnp.asarray(rngs[4].random(case["mask"]) < 0.7),
    )
    cotangent = jnp.asarray(rngs[5].standard_normal(arrays["query"].shape), jnp.float32)
    return arrays, cotangent


def _keywords(case):
    kw = {name: case[name] for name in ("scale", "is_causal", "local_window_size", "implementation")}
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        kw[name] = None if case[name] is None else jnp.asarray(case[name], jnp.int32)
    return kw


@settings(max_examples=examples(1))
@given(case=_case(), seed=st.integers(0, 2**31 - 1))
def test_matches_jax_nn_forward_and_gradients(case, seed):
    arrays, cotangent = _arrays(case, seed)
    kw = _keywords(case)
    differentiable = [name for name in ("query", "key", "value", "bias") if arrays[name] is not None]

    def loss(fn, *diff):
        out = fn(**{**arrays, **dict(zip(differentiable, diff, strict=True))}, **kw)
        return jnp.sum(out * cotangent), out

    # One jitted forward+backward per side: compiling it once is cheaper than many eager op-by-op compiles.
    with jax.default_matmul_precision("highest"):
        grad = jax.grad(loss, argnums=tuple(range(1, len(differentiable) + 1)), has_aux=True)
        diff = [arrays[n] for n in differentiable]
        want_grads, want = jax.jit(lambda *d: grad(jax.nn.dot_product_attention, *d))(*diff)
        got_grads, got = jax.jit(lambda *d: grad(ejkernel.dot_product_attention, *d))(*diff)
    assert got.shape == want.shape and got.dtype == want.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5, err_msg=f"output {case}")
    for name, g, w in zip(differentiable, got_grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4, err_msg=f"d{name} {case}")


def test_jit_and_a_key_padding_mask():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 8, 4, 16)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(np.arange(8)[None, None, None, :] < np.array([5, 8])[:, None, None, None])  # [B, 1, 1, S]
    got = jax.jit(lambda q, k, v, m: ejkernel.dot_product_attention(q, k, v, mask=m, is_causal=True))(q, k, v, mask)
    want = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("q_len, kv_len, causal, window, want", [
    (4, 4, True, None, (4, True, None)),  # square: both alignments agree
    (3, 5, True, None, (3, True, None)),  # top-left causal sees only the first Sq keys
    (5, 3, True, None, (3, False, (8, 2))),  # Sq > Skv: a right window of Sq - Skv
    (4, 6, False, (1, 1), (5, False, (2, 0))),
    (5, 3, False, (0, 4), None),  # query 4 may see keys 4..8: none exist; as a mask
    (4, 4, False, (-1, 2), None),  # a negative side: as a mask
])
def test_the_top_left_band_as_bottom_right_arguments(q_len, kv_len, causal, window, want):
    left, right = ejkernel.ops.attention.jax_conventions.band_bounds(causal, window)
    assert kernel_band(left, right, q_len, kv_len) == want


def test_bad_arguments_are_named():
    q = jnp.zeros((2, 4, 2, 8))
    with pytest.raises(TypeError, match="mask must be boolean"):
        ejkernel.dot_product_attention(q, q, q, mask=jnp.ones((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="key_value_seq_lengths"):
        ejkernel.dot_product_attention(q, q, q, key_value_seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(TypeError, match="local_window_size"):
        ejkernel.dot_product_attention(q, q, q, local_window_size=(1, 2, 3))
    with pytest.raises(ValueError, match="implementation"):
        ejkernel.dot_product_attention(q, q, q, implementation="flash")
    with pytest.raises(ValueError, match="disagree"):
        ejkernel.dot_product_attention(q, q, q, implementation="xla", platform="triton")
    with pytest.raises(NotImplementedError, match="return_residual"):
        ejkernel.dot_product_attention(q, q, q, return_residual=True)


def test_platform_falls_back_with_a_warning():
    q = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, 2, 8)), jnp.float32)
    with pytest.warns(ejkernel.FallbackWarning, match="triton"):
        got = ejkernel.dot_product_attention(q, q, q, is_causal=True, platform="triton")
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.nn.dot_product_attention(q, q, q, is_causal=True)),
                               rtol=2e-5, atol=2e-5)
