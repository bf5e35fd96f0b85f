"""The XLA reference against the float64 NumPy oracle: every feature variant alone and every pair of features.

Deterministic (pytest parameters, fixed seeds) so that each pair is covered on every run; the hypothesis
tests in ``test_reference_properties.py`` add random shapes, dtypes and larger feature combinations.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from numpy_reference import allowed_keys, attention_reference
from strategies import LAYOUTS, SHAPES, Features, check_case

# Every variant of every optional feature.
VARIANTS: dict[str, list[dict]] = {
    "mask": [dict(mask=layout) for layout in LAYOUTS],
    "bias": [dict(bias=layout) for layout in LAYOUTS],
    "causal": [dict(causal=True)],
    "window": [dict(window=2), dict(window=(4, 1)), dict(window=(0, 3))],
    "soft_cap": [dict(soft_cap=1.5)],
    "sinks": [dict(sinks=("per_head", 2)), dict(sinks=("shared", 1)), dict(sinks=("shared", 3))],
    "scale": [dict(scale=0.6), dict(scale=0.05)],
}
SINGLES = [(f"{kind}{i}", Features(**v)) for kind, vs in VARIANTS.items() for i, v in enumerate(vs)]


def _pairs():
    """Each pair of feature kinds, with every variant of each side appearing at least once (round robin)."""
    for a, b in itertools.combinations(VARIANTS, 2):
        va, vb = VARIANTS[a], VARIANTS[b]
        for i in range(max(len(va), len(vb))):
            yield f"{a}{i % len(va)}+{b}{i % len(vb)}", Features(**va[i % len(va)], **vb[i % len(vb)])


PAIRS = list(_pairs())
# GQA 2, D != Dv, Sq > Skv (causal/window leave early rows empty) and Sq < Skv.
PAIR_SHAPES = ((2, 9, 6, 4, 2, 8, 12), (2, 5, 11, 4, 2, 8, 8))


@pytest.mark.parametrize("shape", [(2, 9, 6, 4, 2, 8, 12), (2, 1, 37, 4, 1, 16, 16), (1, 16, 16, 2, 2, 32, 32)])
@pytest.mark.parametrize("name,features", SINGLES, ids=[n for n, _ in SINGLES])
def test_single_feature(shape, name, features):
    check_case(shape, features, jnp.float32, seed=len(name))


@pytest.mark.parametrize("index", range(len(PAIRS)), ids=[n for n, _ in PAIRS])
def test_feature_pair(index):
    _, features = PAIRS[index]
    check_case(PAIR_SHAPES[index % 2], features, jnp.float32, seed=index)


def test_no_features():
    for shape in SHAPES:
        check_case(shape, Features(), jnp.float32, seed=0)


def test_all_features_together():
    every = Features(mask=("B", "kv"), bias=("1", "q"), causal=True, window=(3, 2), soft_cap=2.0,
                     sinks=("per_head", 2), scale=0.4)
    for shape in PAIR_SHAPES:
        check_case(shape, every, jnp.float32, seed=7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_all_features(dtype):
    every = Features(mask=("1", "1"), bias=("B", "kv"), causal=True, window=(5, 0), soft_cap=3.0,
                     sinks=("shared", 2))
    check_case((2, 33, 65, 8, 2, 16, 8), every, dtype, seed=3)
    check_case((2, 33, 65, 8, 2, 16, 8), Features(), dtype, seed=4)


def test_float32_inputs_default_dtype_is_bfloat16():
    from strategies import make_inputs, xla_attention

    inputs = make_inputs((2, 9, 6, 4, 2, 8, 12), Features(), jnp.float32, seed=0)
    out, weights = xla_attention(**inputs)
    assert out.dtype == weights.dtype == jnp.bfloat16
    # Inputs are rounded to bfloat16 before both products; the oracle on rounded inputs agrees to ~1e-2.
    rounded = {k: np.asarray(jnp.asarray(x, jnp.bfloat16)) for k, x in inputs.items()}
    ref_out, _ = attention_reference(**rounded)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref_out, rtol=1e-2, atol=1e-2)
    out_none, _ = xla_attention(**inputs, dtype=None)
    assert out_none.dtype == jnp.float32


# ---- the oracle itself, on cases small enough to work out by hand ---------------------------------------


def test_oracle_by_hand():
    # One query, two keys with logits (0, log 3) after scaling, one sink of logit log 2 (not scaled).
    q = np.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    k = np.array([[0.0, 0.0], [np.log(3.0), 0.0]]).reshape(1, 2, 1, 2)
    v = np.array([[10.0], [20.0]]).reshape(1, 2, 1, 1)
    out, w = attention_reference(q, k, v, softmax_scale=1.0, softmax_aux=np.array([np.log(2.0)]))
    np.testing.assert_allclose(w.ravel(), [1 / 6, 3 / 6], rtol=1e-14)
    np.testing.assert_allclose(out.ravel(), [10 / 6 + 60 / 6], rtol=1e-14)
    # A bias of -log 3 on key 1 evens the two keys; a mask on key 0 leaves only key 1.
    bias = np.array([0.0, -np.log(3.0)]).reshape(1, 1, 1, 2)
    _, w = attention_reference(q, k, v, softmax_scale=1.0, bias=bias)
    np.testing.assert_allclose(w.ravel(), [0.5, 0.5], rtol=1e-14)
    mask = np.array([False, True]).reshape(1, 1, 1, 2)
    out, _ = attention_reference(q, k, v, softmax_scale=1.0, attention_mask=mask, bias=bias)
    np.testing.assert_allclose(out.ravel(), [20.0], rtol=1e-14)
    # Soft cap 1: logits become tanh(0), tanh(log 3) = 0.8.
    _, w = attention_reference(q, k, v, softmax_scale=1.0, logits_soft_cap=1.0)
    np.testing.assert_allclose(w.ravel(), np.exp([0, 0.8]) / np.exp([0, 0.8]).sum(), rtol=1e-14)


def test_oracle_gqa_head_mapping():
    # Four query heads, two kv heads whose values are constants 1 and 2: heads 0,1 read 1, heads 2,3 read 2.
    q = np.zeros((1, 1, 4, 2))
    k = np.zeros((1, 3, 2, 2))
    v = np.stack([np.full((3, 1), 1.0), np.full((3, 1), 2.0)], axis=1)[None]
    out, _ = attention_reference(q, k, v)
    np.testing.assert_array_equal(out.ravel(), [1, 1, 2, 2])
    # A kv-head bias is shared by its group: heads 2,3 get a bias that selects key 2 only.
    v = np.arange(3.0).reshape(1, 3, 1, 1).repeat(2, axis=2)
    bias = np.zeros((1, 2, 1, 3))
    bias[0, 1, 0] = [-1e9, -1e9, 0]
    out, _ = attention_reference(q, k, v, bias=bias)
    np.testing.assert_allclose(out.ravel(), [1, 1, 2, 2])


def test_oracle_structure_bottom_right():
    np.testing.assert_array_equal(allowed_keys(2, 4, True, None), [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(allowed_keys(3, 2, True, None), [[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(allowed_keys(1, 3, False, (1, 0)), [[0, 1, 1]])
    np.testing.assert_array_equal(allowed_keys(3, 3, False, 0), np.eye(3, dtype=bool))
    np.testing.assert_array_equal(allowed_keys(2, 3, True, (0, 5)), [[0, 1, 0], [0, 0, 1]])
