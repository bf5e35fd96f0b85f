"""Dropout on the chunked path: the reference's semantics and statistics, with its own random bits.

The dropped weights are read back exactly by attending to ``value = identity`` (then output = weights):
the mask depends on the rng, the tile and the shapes of q/k only, not on the values of ``value``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.check import relative_error
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as reference

B, SQ, SKV, HQ, HKV, D = 2, 64, 96, 4, 2, 16
P = 0.3
BLOCKS = dict(block_q=32, block_kv=40)  # 2 x 3 tiles, the last kv chunk partial


def attend(q, k, v, rng, **kw):
    kw = {"dtype": jnp.float32, "deterministic": False, "dropout_prob": P, **BLOCKS, **kw}
    return jax.jit(lambda q, k, v, rng: chunked_attention(q, k, v, dropout_rng=rng, **kw)[0])(q, k, v, rng)


def dropped_weights(q, k, rng, **kw):
    """``[B, Hq, Sq, Skv]``: the weights after dropout, as the chunked path applied them."""
    eye = jnp.broadcast_to(jnp.eye(SKV)[None, :, None, :], (q.shape[0], SKV, HKV, SKV))
    return attend(q, k, eye, rng, **kw).transpose(0, 2, 1, 3)


def inputs(seed):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, SQ, HQ, D)), jax.random.normal(ks[1], (B, SKV, HKV, D)),
            jax.random.normal(ks[2], (B, SKV, HKV, D)))


def test_keep_rate_scaling_and_independence():
    # Identical uniform rows everywhere (q = 0): every weight is 1/Skv before dropout.
    q = jnp.zeros((B, SQ, HQ, D))
    k = jnp.zeros((B, SKV, HKV, D))
    w = np.asarray(dropped_weights(q, k, jax.random.key(0)))
    kept = w != 0
    assert abs(kept.mean() - (1 - P)) < 0.01  # 49152 draws: std 0.002
    np.testing.assert_allclose(w[kept], 1 / SKV / (1 - P), rtol=1e-6)
    # Masks of different (batch, head) pairs and of different tiles agree as often as independent ones.
    independent = P**2 + (1 - P) ** 2
    for a, b in [((0, 0), (1, 0)), ((0, 0), (0, 1)), ((0, 0), (0, 2)), ((1, 3), (0, 2))]:
        assert abs((kept[a] == kept[b]).mean() - independent) < 0.03  # 6144 pairs: std 0.006
    assert abs((kept[0, 0, :32, :32] == kept[0, 0, 32:, 40:72]).mean() - independent) < 0.06


def test_same_rng_same_result_and_raw_keys():
    q, k, v = inputs(1)
    a = attend(q, k, v, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(attend(q, k, v, jax.random.key(7))))
    assert not np.allclose(np.asarray(a), np.asarray(attend(q, k, v, jax.random.key(8))))
    raw = jnp.array([0, 7], jnp.uint32)
    np.testing.assert_array_equal(np.asarray(attend(q, k, v, raw)), np.asarray(attend(q, k, v, raw)))


def test_mean_over_rngs_is_the_output_without_dropout():
    q, k, v = inputs(2)
    rngs = jax.random.split(jax.random.key(3), 256)
    outs = np.asarray(jax.jit(jax.vmap(lambda r: attend(q, k, v, r, causal=True)))(rngs), np.float64)
    want = np.asarray(reference(q, k, v, dtype=jnp.float32, causal=True)[0], np.float64)
    stderr = outs.std(axis=0) / np.sqrt(len(rngs))
    z = np.abs(outs.mean(axis=0) - want) / np.maximum(stderr, 1e-7)
    assert z.max() < 6.0, z.max()  # 8192 means: a max |z| near 4 is expected
    assert np.abs(z).mean() < 1.0  # E|z| = 0.8 for a standard normal


@pytest.mark.parametrize("causal,window", [(False, None), (True, (30, 10))])
def test_gradients_match_dense_attention_with_the_same_mask(causal, window):
    q, k, v = inputs(4)
    ks = jax.random.split(jax.random.key(5), 3)
    bias = jax.random.normal(ks[0], (1, HKV, SQ, SKV))
    aux = jax.random.normal(ks[1], (HQ, 2))
    ct = jax.random.normal(ks[2], (B, SQ, HQ, D))
    rng = jax.random.key(11)
    kw = dict(causal=causal, sliding_window=window, softmax_aux=aux, logits_soft_cap=3.0)
    # The factor each weight was multiplied by: 0 or 1/(1-p) (where the weight is nonzero).
    plain = jax.jit(lambda: reference(q, k, v, bias=bias, dtype=jnp.float32, **kw)[1])()
    dropped = dropped_weights(q, k, rng, bias=bias, **kw)
    factor = jnp.where(dropped > 0, 1 / (1 - P), 0.0)
    assert np.all((np.asarray(dropped) > 0) | (np.asarray(plain) == 0) | (np.asarray(factor) == 0))

    def dense(q, k, v, bias, aux):
        weights = reference(q, k, v, bias=bias, dtype=jnp.float32, **{**kw, "softmax_aux": aux})[1] * factor
        b, s, h, _ = q.shape
        out = jnp.einsum("bhgqk,bkhd->bqhgd", weights.reshape(b, HKV, HQ // HKV, s, SKV), v)
        return jnp.sum(out.reshape(b, s, h, -1) * ct)

    def chunk(q, k, v, bias, aux):
        return jnp.sum(attend(q, k, v, rng, bias=bias, **{**kw, "softmax_aux": aux}) * ct)

    with jax.default_matmul_precision("highest"):
        want = jax.jit(jax.grad(dense, argnums=(0, 1, 2, 3, 4)))(q, k, v, bias, aux)
    got = jax.jit(jax.grad(chunk, argnums=(0, 1, 2, 3, 4)))(q, k, v, bias, aux)
    for name, g, w in zip("qkv", got, want, strict=False):
        assert relative_error(g, w) <= 2e-5, name
    assert relative_error(got[3], want[3]) <= 2e-5 and relative_error(got[4], want[4]) <= 2e-5
