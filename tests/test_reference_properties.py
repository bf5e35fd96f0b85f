"""Hypothesis tests of the XLA reference: against the float64 oracle on random shapes, dtypes and feature
sets, and the oracle-free properties of ``docs/semantics.rst`` ("How the semantics are checked"; they need no
second implementation at all)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from strategies import (
    SHAPES,
    Features,
    assert_close,
    check_case,
    features,
    jit_attention,
    make_inputs,
    run_xla,
    seeds,
    tril_mask,
)

shapes = st.sampled_from(SHAPES)
GQA_SHAPES = tuple(s for s in SHAPES if s[3] != s[4])
F32 = 1e-5  # float32 against float32: a different but equally exact route


@settings(max_examples=examples(3))
@given(shape=shapes, features=features(), seed=seeds)
def test_matches_oracle_float32(shape, features, seed):
    check_case(shape, features, jnp.float32, seed)


@settings(max_examples=examples(2))
@given(shape=shapes, features=features(), dtype=st.sampled_from((jnp.bfloat16, jnp.float16)), seed=seeds)
def test_matches_oracle_low_precision(shape, features, dtype, seed):
    check_case(shape, features, dtype, seed)


@settings(max_examples=examples(0.5))
@given(shape=shapes, features=features(), seed=seeds)
def test_jit_matches_eager(shape, features, seed):
    inputs = make_inputs(shape, features, jnp.float32, seed)
    out, weights = run_xla(inputs, features, jnp.float32)
    with jax.default_matmul_precision("highest"):
        jit_out, jit_weights = jit_attention(**inputs, dtype=jnp.float32, **features.static_kwargs())
    assert_close(jit_out, out, F32, "jit output")
    assert_close(jit_weights, weights, F32, "jit weights")


# ---- properties without an oracle -----------------------------------------------------------------------


def _no_structure(features: Features) -> Features:
    return dataclasses.replace(features, causal=False, window=None)


@settings(max_examples=examples(1))
@given(shape=shapes, features=features(), seed=seeds)
def test_causal_equals_explicit_lower_triangle(shape, features, seed):
    features = dataclasses.replace(_no_structure(features), causal=True)
    inputs = make_inputs(shape, features, jnp.float32, seed)
    explicit = dict(inputs)
    tril = tril_mask(shape[1], shape[2])[None, None]
    explicit["attention_mask"] = tril if "attention_mask" not in inputs else inputs["attention_mask"] & tril
    expected = run_xla(explicit, _no_structure(features), jnp.float32)
    for got, want, what in zip(run_xla(inputs, features, jnp.float32), expected, ("output", "weights"), strict=True):
        assert_close(got, want, F32, f"causal vs lower-triangular mask: {what}")


@settings(max_examples=examples(1))
@given(shape=shapes, features=features(), extra=st.integers(0, 5), seed=seeds)
def test_window_wider_than_sequence_is_no_window(shape, features, extra, seed):
    wide = max(shape[1], shape[2]) + extra  # every |j - (i + offset)| is < max(Sq, Skv)
    features = dataclasses.replace(features, window=None)
    inputs = make_inputs(shape, features, jnp.float32, seed)
    expected = run_xla(inputs, features, jnp.float32)
    for window in (wide, (wide, wide)):
        got = run_xla(inputs, dataclasses.replace(features, window=window), jnp.float32)
        assert_close(got[0], expected[0], F32, f"window {window}: output")
        assert_close(got[1], expected[1], F32, f"window {window}: weights")


@settings(max_examples=examples(1))
@given(shape=st.sampled_from(GQA_SHAPES), features=features(), seed=seeds)
def test_gqa_equals_repeated_kv(shape, features, seed):
    inputs = make_inputs(shape, features, jnp.float32, seed)
    group = shape[3] // shape[4]
    repeated = dict(inputs, key=np.repeat(inputs["key"], group, axis=2), value=np.repeat(inputs["value"], group, axis=2))
    for name in ("attention_mask", "bias"):  # one per kv head -> one per query head, each copied per group
        if name in inputs and inputs[name].shape[1] == shape[4] and shape[4] > 1:
            repeated[name] = np.repeat(inputs[name], group, axis=1)
    got, expected = run_xla(inputs, features, jnp.float32), run_xla(repeated, features, jnp.float32)
    assert_close(got[0], expected[0], F32, "GQA vs repeated K/V: output")
    assert_close(got[1], expected[1], F32, "GQA vs repeated K/V: weights")


@settings(max_examples=examples(1))
@given(shape=shapes, features=features(), data=st.data(), seed=seeds)
def test_key_permutation_invariance(shape, features, data, seed):
    features = dataclasses.replace(_no_structure(features), mask=None, bias=None)
    inputs = make_inputs(shape, features, jnp.float32, seed)
    perm = np.array(data.draw(st.permutations(range(shape[2]))))
    permuted = dict(inputs, key=inputs["key"][:, perm], value=inputs["value"][:, perm])
    out, weights = run_xla(inputs, features, jnp.float32)
    p_out, p_weights = run_xla(permuted, features, jnp.float32)
    assert_close(p_out, out, F32, "permuted keys: output")
    assert_close(p_weights, weights[..., perm], F32, "permuted keys: weights (permuted alike)")


@pytest.mark.infs_by_design("a sink of -inf is its input")
@settings(max_examples=examples(1))
@given(shape=shapes, features=features(), num_sinks=st.integers(1, 3), per_head=st.booleans(), seed=seeds)
def test_minus_infinity_sink_is_no_sink(shape, features, num_sinks, per_head, seed):
    inputs = make_inputs(shape, features, jnp.float32, seed)
    expected = run_xla(inputs, features, jnp.float32)
    sinks = np.full((shape[3], num_sinks) if per_head else (num_sinks,), -np.inf, np.float32)
    if "softmax_aux" in inputs:  # -inf sinks appended to finite ones change nothing either
        aux = inputs["softmax_aux"]
        if aux.ndim != sinks.ndim:  # a shared [n] sink is the same sink in every row of [Hq, n]
            aux, sinks = (np.broadcast_to(x, (shape[3], x.shape[-1])) for x in (aux, sinks))
        sinks = np.concatenate([aux, sinks], -1)
    kind = ("per_head" if sinks.ndim == 2 else "shared", sinks.shape[-1])
    got = run_xla(dict(inputs, softmax_aux=sinks), dataclasses.replace(features, sinks=kind), jnp.float32)
    assert_close(got[0], expected[0], F32, "-inf sink: output")
    assert_close(got[1], expected[1], F32, "-inf sink: weights")


@settings(max_examples=examples(1))
@given(shape=shapes, features=features(), c=st.floats(0.25, 4.0), seed=seeds)
def test_scaling_query_is_scaling_softmax_scale(shape, features, c, seed):
    scale = features.scale if features.scale is not None else shape[5] ** -0.5
    inputs = make_inputs(shape, features, jnp.float32, seed)
    scaled_q = dict(inputs, query=(inputs["query"] * np.float32(c)).astype(np.float32))
    got = run_xla(scaled_q, dataclasses.replace(features, scale=scale), jnp.float32)
    expected = run_xla(inputs, dataclasses.replace(features, scale=scale * c), jnp.float32)
    assert_close(got[0], expected[0], F32, "q*c vs scale*c: output")
    assert_close(got[1], expected[1], F32, "q*c vs scale*c: weights")
