"""The shared rules of ``ejkernel.ops.attention`` that every backend uses, each against a plain statement of it:
block ranges against the element rule, the logits transform and the cap's gradient against autodiff, the
merges against one softmax over all keys, the sink and bias gradients against the XLA reference's autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ejkernel.kernels.xla.reference import attention as reference
from ejkernel.ops.attention.layouts import kv_head, operand_index, per_query_head, reduce_to_layout
from ejkernel.ops.attention.logits import LOG2E, cap_gradient, tanh_from_exp2, transform_logits
from ejkernel.ops.attention.masks import allowed, clamp_window, key_blocks, query_blocks, valid_pairs
from ejkernel.ops.attention.merge import add_sinks, merge_many, merge_partials, normalize_rows, recompute_lse
from ejkernel.ops.attention.sinks import sink_gradient, sinks_lse

windows = st.one_of(st.none(), st.tuples(st.integers(0, 80), st.integers(0, 80)))


def _allowed_matrix(q_len, kv_len, causal, window, q_pad, kv_pad):
    ok = np.zeros((q_pad, kv_pad), bool)
    ok[:q_len, :kv_len] = np.broadcast_to(
        allowed(np.arange(q_len)[:, None], np.arange(kv_len)[None], q_len, kv_len, causal, window), (q_len, kv_len)
    )
    return ok


@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 4, 16]), st.sampled_from([1, 8, 16]),
       st.booleans(), windows, st.booleans(), st.none() | st.integers(-3, 80))
def test_block_ranges_visit_exactly_the_blocks_with_an_allowed_pair(q_len, kv_len, block_q, block_k, causal, window,
                                                                    traced, kv_length):
    """Also with a ``kv_lengths`` entry (any int: out-of-range ones mean 0 or every key)."""
    num_q, num_k = -(-q_len // block_q) + 1, -(-kv_len // block_k) + 1  # one block of pure padding each
    ok = _allowed_matrix(q_len, kv_len, causal, window, num_q * block_q, num_k * block_k)
    real_keys = kv_len
    if kv_length is not None:
        real_keys = min(max(kv_length, 0), kv_len)
        ok[:, real_keys:] = False
    as_index = (lambda x: jnp.int32(x)) if traced else (lambda x: x)
    length = None if kv_length is None else as_index(kv_length)
    for qb in range(num_q):
        lo, ilo, ihi, hi = (int(x) for x in key_blocks(as_index(qb * block_q), as_index(qb * block_q + block_q - 1),
                                                     block_k, q_len, kv_len, causal, window, kv_length=length))
        for kb in range(num_k):
            tile = ok[qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k]
            assert (lo <= kb < hi) == tile.any()
            if ilo <= kb < ihi:  # interior: every real query sees every key, and no key is padding
                rows = tile[: max(0, min(block_q, q_len - qb * block_q))]
                assert rows.all() and (kb + 1) * block_k <= real_keys
        assert key_blocks(qb * block_q, qb * block_q + block_q - 1, block_k, q_len, kv_len, causal, window,
                          dense=True, kv_length=kv_length)[1:3] == (hi, hi)
    for kb in range(num_k):
        lo, ilo, ihi, hi = (int(x) for x in query_blocks(as_index(kb * block_k), as_index(kb * block_k + block_k - 1),
                                                       block_q, q_len, kv_len, causal, window, kv_length=length))
        for qb in range(num_q):
            tile = ok[qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k]
            assert (lo <= qb < hi) == tile.any()
            if ilo <= qb < ihi:
                rows = tile[: max(0, min(block_q, q_len - qb * block_q))]
                assert rows.all() and (kb + 1) * block_k <= real_keys


def test_interior_blocks_of_a_causal_square():
    # 4 query blocks x 4 key blocks of 16: each query block sees the blocks up to its diagonal,
    # every one but the diagonal fully.
    for qb in range(4):
        assert key_blocks(qb * 16, qb * 16 + 15, 16, 64, 64, True, None) == (0, 0, qb, qb + 1)
        assert query_blocks(qb * 16, qb * 16 + 15, 16, 64, 64, True, None) == (qb, qb + 1, 4, 4)


def test_window_clamp_is_exact_and_keeps_int32():
    assert clamp_window((2**31 - 1, 5), 10, 20) == (30, 5)
    assert clamp_window(None, 1, 1) is None
    q, k = np.arange(10)[:, None], np.arange(20)[None]
    for window in [(2**40, 2**40), (10**9, 0), (0, 10**9)]:
        np.testing.assert_array_equal(allowed(q, k, 10, 20, True, clamp_window(window, 10, 20)),
                                      allowed(q, k, 10, 20, True, (min(window[0], 99), min(window[1], 99))))


def test_valid_pairs_excludes_padded_keys_and_applies_the_mask():
    q, k = np.arange(4)[:, None], np.arange(8)[None]
    mask = (np.arange(8) % 2 == 0)[None]
    ok = valid_pairs(q, k, 4, 6, True, None, mask)
    np.testing.assert_array_equal(ok, (k < 6) & (k <= q + 2) & mask)
    assert np.all(valid_pairs(q, k, 4, 8, False, None) == (k < 8))


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("base2", [False, True])
def test_logits_transform_and_the_caps_gradient(cap, base2):
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.standard_normal((5, 7)) * 4, jnp.float32)
    bias = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
    s, t = transform_logits(scores, 0.7, cap, bias, base2=base2)
    plain = scores * 0.7
    if cap is not None:
        plain = cap * jnp.tanh(plain / cap)
    plain = plain + bias
    np.testing.assert_allclose(s, plain * (LOG2E if base2 else 1.0), rtol=1e-6, atol=1e-6)
    assert (t is None) == (cap is None)
    upstream = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
    want = jax.grad(lambda x: jnp.sum(transform_logits(x, 1.0, cap)[0] * upstream))(scores * 0.7)
    np.testing.assert_allclose(cap_gradient(upstream, transform_logits(scores, 0.7, cap)[1]), want, rtol=1e-5, atol=1e-6)


def _partial(logits, values, keep):
    """``(out, lse)`` of a softmax over the keys ``keep`` (all rows), with the empty-row convention."""
    masked = jnp.where(keep, logits, -jnp.inf)
    row_max = jnp.max(masked, axis=-1)
    shift = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    e = jnp.where(keep, jnp.exp(logits - shift[..., None]), 0.0)
    return normalize_rows(e @ values, shift, jnp.sum(e, axis=-1))


@pytest.mark.infs_by_design("it merges an empty partial, whose lse is -inf")
def test_tanh_from_exp2_is_float32_exact_in_absolute_terms_and_saturates():
    x = jnp.concatenate([jnp.linspace(-30.0, 30.0, 20001), jnp.array([-1e30, -1e4, 0.0, 1e-8, 1e4, 1e30])])
    got = tanh_from_exp2(x.astype(jnp.float32))
    want = np.tanh(np.asarray(x, np.float64))
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=3e-7)
    s, t = transform_logits(x, 0.5, 5.0, tanh=tanh_from_exp2)
    np.testing.assert_allclose(np.asarray(s), 5.0 * np.tanh(np.asarray(x, np.float64) * 0.1), rtol=0, atol=2e-6)


def test_merges_of_disjoint_key_sets_equal_one_softmax():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((6, 12)) * 3, jnp.float32)
    values = jnp.asarray(rng.standard_normal((12, 4)), jnp.float32)
    owner = jnp.asarray(rng.integers(0, 3, 12))
    parts = [_partial(logits, values, (owner == i)[None]) for i in range(3)]
    empty = _partial(logits, values, jnp.zeros((1, 12), bool))
    assert np.all(np.asarray(empty[0]) == 0) and np.all(np.isneginf(np.asarray(empty[1])))
    full = _partial(logits, values, jnp.ones((1, 12), bool))
    out, lse = merge_many(jnp.stack([p[0] for p in parts] + [empty[0]]), jnp.stack([p[1] for p in parts] + [empty[1]]))
    np.testing.assert_allclose(out, full[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, full[1], rtol=1e-6)
    out2, lse2 = merge_partials(*merge_partials(*parts[0], *parts[1]), *parts[2])
    np.testing.assert_allclose(out2, full[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse2, full[1], rtol=1e-6)
    none, none_lse = merge_many(jnp.stack([empty[0]] * 2), jnp.stack([empty[1]] * 2))
    assert np.all(np.asarray(none) == 0) and np.all(np.isneginf(np.asarray(none_lse)))
    assert np.all(np.isposinf(np.asarray(recompute_lse(empty[1]))))
    sink = jnp.float32(0.5)
    with_sink, lse_sink = add_sinks(*full, sink)
    np.testing.assert_allclose(lse_sink, jnp.logaddexp(full[1], sink), rtol=1e-6)
    np.testing.assert_allclose(with_sink, full[0] * jnp.exp(full[1] - lse_sink)[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.infs_by_design("it pads lse with -inf rows")
@pytest.mark.parametrize("shared", [False, True])
def test_sink_gradient_matches_autodiff(shared):
    rng = [np.random.default_rng(s) for s in range(5)]
    b, sq, skv, hq, hkv, d = 2, 5, 7, 4, 2, 8
    q = jnp.asarray(rng[0].standard_normal((b, sq, hq, d)), jnp.float32)
    k = jnp.asarray(rng[1].standard_normal((b, skv, hkv, d)), jnp.float32)
    v = jnp.asarray(rng[2].standard_normal((b, skv, hkv, d)), jnp.float32)
    aux = jnp.asarray(rng[3].standard_normal((3,) if shared else (hq, 3)), jnp.float32)
    cot = jnp.asarray(rng[4].standard_normal((b, sq, hq, d)), jnp.float32)
    window = (1, 0)  # some rows see keys, the sinks are always there

    def loss(a):
        return jnp.sum(reference(q, k, v, softmax_aux=a, dtype=jnp.float32, sliding_window=window, causal=True)[0] * cot)

    with jax.default_matmul_precision("highest"):
        want = jax.grad(loss)(aux)
        out, weights = reference(q, k, v, softmax_aux=aux, dtype=jnp.float32, sliding_window=window, causal=True)
    # lse from the weights: the sinks' share of each row is 1 - sum(weights) = exp(sinks_lse - lse).
    share = 1.0 - jnp.sum(weights, axis=-1)  # [B, Hq, Sq]
    lse = sinks_lse(aux, hq)[None, :, None] - jnp.log(share)
    delta = jnp.einsum("bqhd,bqhd->bhq", cot, out)
    got = sink_gradient(aux, lse, delta)
    assert got.shape == aux.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    padded = sink_gradient(aux, jnp.concatenate([lse, jnp.full((b, hq, 2), -jnp.inf)], -1),
                           jnp.concatenate([delta, jnp.zeros((b, hq, 2))], -1))
    np.testing.assert_allclose(padded, got, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4), (1, 4), (2, 2), (2, 1), (1, 1), (1, 2)])
def test_bias_gradient_reduction_matches_autodiff(shape):
    b, hq = 2, 4
    rng = np.random.default_rng(3)
    full_grad = jnp.asarray(rng.standard_normal((b, hq, 3, 5)), jnp.float32)
    bias = jnp.zeros((*shape, 3, 5))
    want = jax.grad(lambda x: jnp.sum(jnp.broadcast_to(per_query_head(x, hq), (b, hq, 3, 5)) * full_grad))(bias)
    # float32 sums of up to 8 terms in another order: a few ulps of the terms' size
    np.testing.assert_allclose(reduce_to_layout(full_grad, bias.shape, hq), want, rtol=1e-5, atol=1e-6)


def test_operand_index_and_kv_head():
    assert kv_head(5, 2) == 2 and int(kv_head(jnp.int32(5), 2)) == 2 and kv_head(3, 1) == 3
    assert operand_index(("B", "q"), 1, 5, 2) == (1, 5)
    assert operand_index(("1", "kv"), 1, 5, 2) == (0, 2)
    assert operand_index(("B", "1"), 1, 5, 2) == (1, 0)
    with jax.enable_x64(True):
        assert jnp.asarray(kv_head(jnp.int32(7), 3)).dtype == jnp.int32
