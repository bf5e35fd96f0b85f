"""Regression tests for defects an adversarial test of the public API found; each failed before its fix.

Every backend runs here: XLA dense and chunked natively, Pallas-TPU and Pallas-Triton in interpret mode.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as reference

BACKENDS = ("xla", "xla:chunked", "pallas_tpu", "triton")


def _inputs(b=1, sq=40, skv=40, hq=2, hkv=2, d=16, seed=0):
    rng = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    q = jnp.asarray(rng[0].standard_normal((b, sq, hq, d)), jnp.float32)
    k = jnp.asarray(rng[1].standard_normal((b, skv, hkv, d)), jnp.float32)
    v = jnp.asarray(rng[2].standard_normal((b, skv, hkv, d)), jnp.float32)
    return q, k, v


def _run(backend, *args, **kwargs):
    """``attention`` on one backend (the chunked path with small chunks, so that several are visited)."""
    kwargs.setdefault("dtype", jnp.float32)
    if backend == "xla:chunked":
        return chunked_attention(*args, **kwargs, block_q=16, block_kv=16)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # the named backend must serve the call
        return ejkernel.get_kernel("attention", backend, interpret=backend != "xla")(*args, **kwargs)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [2**31 - 1, 2**31, (2**40, 3), (5, 2**62)])
def test_a_huge_window_means_unbounded(backend, window):
    q, k, v = _inputs(sq=24, skv=40)
    unbounded = (10**6, 10**6) if isinstance(window, int) else tuple(min(w, 10**6) for w in window)
    with jax.default_matmul_precision("highest"):
        got = _run(backend, q, k, v, causal=True, sliding_window=window)
        want = reference(q, k, v, causal=True, sliding_window=unbounded, dtype=jnp.float32)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert float(jnp.min(jnp.sum(jnp.abs(got), -1))) > 0  # no row zeroed


@pytest.mark.infs_by_design("a sink of +inf is its input")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sink_of_plus_inf_takes_the_whole_row(backend):
    """Defined as: the sink holds all the weight, so the output is 0 and every gradient is finite (0)."""
    q, k, v = _inputs(sq=20, skv=36)
    aux = jnp.asarray([[jnp.inf, 0.0], [1.0, -2.0]], jnp.float32)  # head 0: an infinite sink; head 1: finite

    def loss(q, k, v, aux):
        return jnp.sum(_run(backend, q, k, v, softmax_aux=aux, causal=True) ** 2)

    out = _run(backend, q, k, v, softmax_aux=aux, causal=True)
    assert np.all(np.asarray(out[:, :, 0]) == 0)
    with jax.default_matmul_precision("highest"):
        want = reference(q, k, v, softmax_aux=aux.at[0, 0].set(0.0), causal=True, dtype=jnp.float32)[0]
    np.testing.assert_allclose(out[:, :, 1], want[:, :, 1], rtol=2e-5, atol=2e-5)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, aux)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0][:, :, 0]) == 0)
    assert float(grads[3][0, 0]) == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"deterministic": None}, TypeError, "deterministic must be a bool"),
        ({"deterministic": 0, "dropout_prob": 0.5}, TypeError, "deterministic must be a bool"),
        ({"softmax_scale": "0.5"}, TypeError, "softmax_scale must be a number"),
        ({"logits_soft_cap": "5"}, TypeError, "logits_soft_cap must be a number"),
        ({"softmax_scale": True}, TypeError, "softmax_scale must be a number"),
        ({"deterministic": False, "dropout_prob": 0.5, "dropout_rng": jnp.zeros((3,), jnp.uint32)}, ValueError,
         "dropout_rng must be a PRNG key"),
        ({"deterministic": False, "dropout_prob": 0.5, "dropout_rng": jax.random.split(jax.random.key(0), 2)},
         ValueError, "dropout_rng must be a PRNG key"),
        ({"deterministic": False, "dropout_prob": 0.5, "dropout_rng": jnp.zeros((2,), jnp.float32)}, ValueError,
         "dropout_rng must be a PRNG key"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    q, k, v = _inputs(sq=8, skv=8)
    with pytest.raises(error, match=match):
        ejkernel.attention(q, k, v, **kwargs)
    with pytest.raises(error, match=match):
        jax.jit(lambda q: ejkernel.attention(q, k, v, **kwargs)[0])(q)


def test_both_key_forms_are_accepted_for_dropout():
    q, k, v = _inputs(sq=8, skv=8)
    for rng in (jax.random.key(1), jax.random.PRNGKey(1)):
        out, _ = ejkernel.attention(q, k, v, deterministic=False, dropout_prob=0.5, dropout_rng=rng, dtype=jnp.float32)
        assert np.all(np.isfinite(np.asarray(out)))


def test_array_likes_are_arrays():
    q, k, v = (np.asarray(x).tolist() for x in _inputs(sq=4, skv=4, d=4))
    out, _ = ejkernel.attention(q, k, v, dtype=jnp.float32)
    want, _ = reference(*(jnp.asarray(x) for x in (q, k, v)), dtype=jnp.float32)
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_an_empty_dimension_is_a_documented_value_error():
    q, k, v = _inputs(sq=4, skv=4)
    with pytest.raises(ValueError, match="empty dimension"):
        ejkernel.attention(q[:, :0], k, v)
    assert "empty dimension" in ejkernel.attention.__doc__ or "empty dimension" in reference.__doc__


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["jvp", "jacfwd"])
def test_forward_mode_names_the_way_out(backend, mode):
    """The kernels and the chunked path are custom VJPs: forward mode raises an error that says so and names
    the dense reference; the dense reference itself supports it."""
    q, k, v = _inputs(sq=16, skv=24)

    def f(q):
        return _run(backend, q, k, v, causal=True)

    derivative = (lambda: jax.jvp(f, (q,), (q,))) if mode == "jvp" else (lambda: jax.jacfwd(lambda q: f(q).sum())(q))
    if backend == "xla":
        derivative()
        return
    with pytest.raises(TypeError, match="reverse mode only.*ejkernel.kernels.xla.reference.attention"):
        derivative()
