"""Gradients of the XLA reference w.r.t. query, key, value, bias and softmax_aux, against finite
differences in float64 (x64 enabled only inside each test), including rows with no allowed key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from numpy_reference import attention_reference
from strategies import Features, make_inputs


@pytest.fixture
def x64():
    """float64 for the duration of one test; the previous setting comes back afterwards."""
    before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        yield
    assert jax.config.jax_enable_x64 == before


CASES = {
    # GQA 2, D != Dv, causal with Sq < Skv, a per-query-head mask with one empty row, kv-head bias, sinks [Hq, n].
    "gqa-causal-mask-bias-sinks": ((2, 5, 7, 4, 2, 6, 5), Features(mask=("1", "q"), bias=("B", "kv"), causal=True,
                                                                    sinks=("per_head", 2))),
    # MQA, Sq > Skv: the window leaves early rows empty; soft cap, shared bias, shared sink, explicit scale.
    "mqa-window-cap-sinks": ((1, 6, 4, 2, 1, 4, 3), Features(bias=("1", "1"), window=(1, 0), soft_cap=1.5,
                                                              sinks=("shared", 1), scale=0.7)),
    # MHA, per-head bias, mask and bias both, causal with Sq > Skv (row 0 sees nothing).
    "mha-causal-mask-bias": ((1, 5, 4, 2, 2, 4, 4), Features(mask=("B", "kv"), bias=("B", "q"), causal=True)),
}


def _float64_inputs(shape, features, seed):
    inputs = make_inputs(shape, features, np.float64, seed)
    return {k: jnp.asarray(x) for k, x in inputs.items()}


def _differentiable(inputs, features):
    """``f(query, key, value[, bias][, softmax_aux]) -> (output, weights)`` in float64, and its arguments."""
    from ejkernel.kernels.xla.reference import attention

    names = [n for n in ("query", "key", "value", "bias", "softmax_aux") if n in inputs]
    fixed = {n: x for n, x in inputs.items() if n not in names}

    def f(*args):
        return attention(**dict(zip(names, args, strict=True)), **fixed, dtype=jnp.float64, softmax_dtype=jnp.float64,
                         **features.static_kwargs())

    return f, tuple(inputs[n] for n in names), names


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(x64, name):
    shape, features = CASES[name]
    inputs = _float64_inputs(shape, features, seed=len(name))
    f, args, _ = _differentiable(inputs, features)
    assert f(*args)[0].dtype == jnp.float64
    check_grads(jax.jit(f), args, order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_float64_forward_matches_oracle(x64, name):
    # Gradients checked in float64 are only meaningful if float64 is computed in float64 throughout.
    shape, features = CASES[name]
    inputs = _float64_inputs(shape, features, seed=1)
    f, args, _ = _differentiable(inputs, features)
    out, weights = f(*args)
    ref_out, ref_weights = attention_reference(**{k: np.asarray(x) for k, x in inputs.items()},
                                               **features.static_kwargs())
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(weights), ref_weights, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_rows_without_keys_have_zero_finite_gradients(x64, name):
    shape, features = CASES[name]
    inputs = _float64_inputs(shape, features, seed=2)
    f, args, names = _differentiable(inputs, features)
    rng = np.random.default_rng(3)
    cot_out, cot_w = (jnp.asarray(rng.standard_normal(x.shape)) for x in f(*args))

    def loss(*a):
        out, weights = f(*a)
        return jnp.sum(out * cot_out) + jnp.sum(weights * cot_w)

    grads = dict(zip(names, jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args), strict=True))
    for n, g in grads.items():
        assert g.shape == inputs[n].shape and np.all(np.isfinite(g)), f"{n}: non-finite gradient"
        assert np.any(g != 0), f"{n}: gradient identically zero"
    _, ref_weights = attention_reference(**{k: np.asarray(x) for k, x in inputs.items()}, **features.static_kwargs())
    empty = ref_weights.sum(-1) == 0  # [B, Hq, Sq]
    assert empty.any(), "case must contain rows with no allowed key"
    dq = np.asarray(grads["query"]).transpose(0, 2, 1, 3)  # [B, Hq, Sq, D]
    assert np.all(dq[empty] == 0), "query gradient of a row with no allowed key must be exactly zero"
    if "bias" in grads:
        assert features.bias == ("B", "q") or name != "mha-causal-mask-bias"
        if features.bias == ("B", "q"):  # one bias row per (batch, query head, query): comparable to `empty`
            assert np.all(np.asarray(grads["bias"])[empty] == 0), "bias gradient of an empty row must be zero"

