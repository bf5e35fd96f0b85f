"""Dropout in the XLA reference (``docs/semantics.rst``, step 10): keep rate, unbiasedness, independence, determinism, keys.

Statistical bounds are 6 standard deviations (normal approximation of a binomial or of a mean over many
draws): a correct implementation fails one of them with probability below 1e-7, while the errors they
guard against (no rescaling, one mask shared by heads, a constant mask) move them by tens of sigmas.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.kernels.xla.reference import attention
from strategies import Features, make_inputs

SHAPE = (2, 16, 32, 4, 2, 8, 8)  # B, Sq, Skv, Hq, Hkv (GQA 2), D, Dv
SIGMAS = 6.0


def _inputs(shape=SHAPE, seed=0):
    return {k: jnp.asarray(x) for k, x in make_inputs(shape, Features(), jnp.float32, seed).items()}


def _dropped(inputs, rng, p, **kw):
    return attention(**inputs, dropout_rng=rng, deterministic=False, dropout_prob=p, dtype=jnp.float32, **kw)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scaling(p):
    inputs = _inputs()
    base_out, base = (np.asarray(x) for x in attention(**inputs, dtype=jnp.float32))
    assert np.all(base > 0)  # no mask: every position has a weight to drop or keep
    rngs = jax.random.split(jax.random.key(int(p * 1000)), 4)
    kept_total = 0
    for rng in rngs:
        out, weights = (np.asarray(x) for x in _dropped(inputs, rng, p))
        kept = weights != 0
        n = kept.size
        assert abs(kept.mean() - (1 - p)) <= SIGMAS * np.sqrt(p * (1 - p) / n), f"keep rate {kept.mean()} for p={p}"
        kept_total += kept.sum()
        # Kept weights are scaled by 1/(1-p); the returned weights are exactly what multiplies V.
        np.testing.assert_allclose(weights[kept], base[kept] / (1 - p), rtol=1e-6)
        expected_out = np.einsum("bhqk,bkhd->bqhd", weights.astype(np.float64),
                                 np.repeat(np.asarray(inputs["value"], np.float64), 2, axis=2))
        np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
        assert not np.allclose(out, base_out)
    n_all = base.size * len(rngs)
    assert abs(kept_total / n_all - (1 - p)) <= SIGMAS * np.sqrt(p * (1 - p) / n_all)


def test_expectation_over_rngs_is_the_undropped_output():
    shape, p, draws = (1, 4, 8, 2, 1, 4, 3), 0.3, 4096
    inputs = _inputs(shape, seed=1)
    ref_out, ref_w = (np.asarray(x, np.float64) for x in attention(**inputs, dtype=jnp.float32))
    rngs = jax.random.split(jax.random.key(11), draws)
    outs = np.asarray(jax.vmap(lambda r: _dropped(inputs, r, p)[0])(rngs), np.float64)  # [draws, B, Sq, Hq, Dv]
    # out = sum_k w_k v_k z_k / (1-p) with z_k ~ Bernoulli(1-p) independent: variance sum_k w_k^2 v_k^2 p/(1-p).
    v = np.repeat(np.asarray(inputs["value"], np.float64), 2, axis=2)  # per query head
    variance = np.einsum("bhqk,bkhd->bqhd", ref_w**2, v**2) * p / (1 - p)
    z = (outs.mean(0) - ref_out) / np.sqrt(variance / draws)
    assert np.max(np.abs(z)) <= SIGMAS, f"max |z| {np.max(np.abs(z)):.2f}"
    # The spread itself matches too (a rescaling bug or correlated masks would change it). With 4096 draws
    # the sample variance's relative standard error is sqrt((kurtosis - 1) / draws), a few percent here;
    # 25 % is far outside it, while a missing 1/(1-p) or a shared mask moves the variance by 2x or more.
    np.testing.assert_allclose(outs.var(0), variance, rtol=0.25)


def test_masks_independent_across_batch_heads_and_rows():
    b, sq, skv, hq, hkv, d, dv = SHAPE
    p = 0.5
    rng = np.random.default_rng(5)
    # Identical inputs for every batch element, head and query row: only the dropout masks can differ.
    q = np.broadcast_to(rng.standard_normal((1, 1, 1, d)), (b, sq, hq, d)).astype(np.float32)
    k = np.broadcast_to(rng.standard_normal((1, skv, 1, d)), (b, skv, hkv, d)).astype(np.float32)
    v = np.broadcast_to(rng.standard_normal((1, skv, 1, dv)), (b, skv, hkv, dv)).astype(np.float32)
    _, weights = _dropped(dict(query=q, key=k, value=v), jax.random.key(3), p)
    kept = np.asarray(weights) != 0  # [B, Hq, Sq, Skv]
    agree = p**2 + (1 - p) ** 2  # chance two independent masks agree at one position
    slices = [kept[i, h] for i in range(b) for h in range(hq)]
    n = sq * skv
    for x, y in itertools.combinations(slices, 2):  # every pair of (batch, head), same group ones included
        assert abs((x == y).mean() - agree) <= SIGMAS * np.sqrt(agree * (1 - agree) / n)
    rows = kept[:, :, 0] == kept[:, :, 1]  # rows of one (batch, head): independent too
    assert abs(rows.mean() - agree) <= SIGMAS * np.sqrt(agree * (1 - agree) / rows.size)
    cols = kept[..., 0] == kept[..., 1]
    assert abs(cols.mean() - agree) <= SIGMAS * np.sqrt(agree * (1 - agree) / cols.size)


def test_same_rng_same_result_and_key_kinds():
    inputs = _inputs()
    typed = jax.random.key(42)
    raw = jax.random.PRNGKey(42)  # uint32[2]
    assert raw.dtype == jnp.uint32 and raw.shape == (2,)
    first = _dropped(inputs, typed, 0.4)
    again = _dropped(inputs, typed, 0.4)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    other = _dropped(inputs, jax.random.key(43), 0.4)
    assert not np.array_equal(np.asarray(first[1]), np.asarray(other[1]))
    jitted = jax.jit(lambda i, r: _dropped(i, r, 0.4))
    for rng in (typed, raw):
        for out, weights in (_dropped(inputs, rng, 0.4), jitted(inputs, rng)):
            kept = np.asarray(weights) != 0
            assert abs(kept.mean() - 0.6) <= SIGMAS * np.sqrt(0.24 / kept.size)
            assert np.all(np.isfinite(np.asarray(out)))
    jit_weights = np.asarray(jitted(inputs, typed)[1])  # the same masks under jit (values to rounding)
    np.testing.assert_array_equal(jit_weights != 0, np.asarray(first[1]) != 0)
    np.testing.assert_allclose(jit_weights, np.asarray(first[1]), rtol=1e-6)


def test_no_dropout_when_deterministic_or_zero_rate():
    inputs = _inputs()
    base = attention(**inputs, dtype=jnp.float32)
    for kw in (dict(deterministic=True, dropout_prob=0.5, dropout_rng=jax.random.key(0)),
               dict(deterministic=False, dropout_prob=0.0, dropout_rng=None)):
        for x, y in zip(attention(**inputs, dtype=jnp.float32, **kw), base, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_dropout_with_masked_rows_and_sinks():
    # Dropped weights of rows with no allowed key stay zero; sinks still only add to the denominator.
    shape, p = (2, 9, 6, 4, 2, 8, 12), 0.3
    features = Features(mask=("B", "q"), causal=True, sinks=("per_head", 2))
    inputs = {k: jnp.asarray(x) for k, x in make_inputs(shape, features, jnp.float32, 4).items()}
    _, base = attention(**inputs, dtype=jnp.float32, causal=True)
    out, weights = _dropped(inputs, jax.random.key(9), p, causal=True)
    base, weights = np.asarray(base), np.asarray(weights)
    empty = base.sum(-1) == 0
    assert empty.any() and np.all(weights[empty] == 0)
    assert np.all(np.asarray(out).transpose(0, 2, 1, 3)[empty] == 0)
    kept = weights != 0
    np.testing.assert_allclose(weights[kept], base[kept] / (1 - p), rtol=1e-6)
    assert np.all(base[weights == 0] >= 0) and kept.sum() < (base > 0).sum()
