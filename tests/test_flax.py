"""``ejkernel.flax``: the attention functions plugged into flax's own modules give flax's results (nnx and linen),
forward, gradients and sown weights, with flax's float masks; what they cannot do raises."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel.flax as ejflax

flax = pytest.importorskip("flax", reason="flax is not installed (pip install ejkernel[flax]): flax comparisons skipped")
from flax import linen, nnx  # noqa: E402

B, L, LKV, F, HEADS, KV_HEADS = 2, 6, 9, 16, 4, 2
TOL = dict(rtol=2e-5, atol=2e-5)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _masks(q_len, kv_len):
    """flax's float masks: causal, key padding with one sequence fully masked at row 0, a random one."""
    causal = nnx.make_causal_mask(jnp.ones((B, q_len)))[..., :kv_len] if q_len == kv_len else None
    keys = jnp.asarray(np.arange(kv_len)[None, :] < np.array([kv_len - 3, kv_len])[:, None], jnp.float32)
    padding = nnx.make_attention_mask(jnp.ones((B, q_len)), keys)  # [B, 1, Sq, Skv], float32
    padding = padding.at[0, 0, 0].set(0.0)  # a row with no allowed key: flax averages every value
    rand = jnp.asarray(np.random.default_rng(9).random((B, HEADS, q_len, kv_len)) < 0.7, jnp.float32)
    return {"none": None, "causal": causal, "padding": padding, "random": rand}


def _nnx_pair(num_kv_heads):
    make = functools.partial(nnx.MultiHeadAttention, num_heads=HEADS, in_features=F, qkv_features=32,
                             num_kv_heads=num_kv_heads, decode=False)
    return make(rngs=nnx.Rngs(0)), make(rngs=nnx.Rngs(0), attention_fn=ejflax.nnx_attention)


@pytest.mark.parametrize("mask_name, num_kv_heads", [
    ("none", HEADS), ("causal", KV_HEADS), ("padding", HEADS), ("random", KV_HEADS), ("is_causal", KV_HEADS),
])
def test_nnx_multi_head_attention(mask_name, num_kv_heads):
    theirs, ours = _nnx_pair(num_kv_heads)
    x = _normal(1, (B, L, F))
    kv = x if mask_name in ("causal", "is_causal") else _normal(2, (B, LKV, F))
    mask = None if mask_name == "is_causal" else _masks(L, kv.shape[1])[mask_name]
    cotangent = _normal(3, (B, L, F))

    call = functools.partial(lambda model, x, kv, **kw: model(x, kv, mask=mask, is_causal=mask_name == "is_causal", **kw))
    forward = nnx.jit(lambda model, x, kv: call(model, x, kv, sow_weights=True))  # sows through nnx.jit
    want, got = forward(theirs, x, kv), forward(ours, x, kv)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    (want_w,), (got_w,) = (nnx.pop(m, nnx.Intermediate)["attention_weights"].get_value() for m in (theirs, ours))
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(want_w), **TOL)

    def loss(model, x, kv):
        return jnp.sum(call(model, x, kv) * cotangent)

    want_grads = jax.jit(jax.grad(functools.partial(loss, theirs), argnums=(0, 1)))(x, kv)
    got_grads = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))(x, kv)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_nnx_decode_cache_and_extra_batch_axes():
    theirs, ours = _nnx_pair(KV_HEADS)
    x = _normal(4, (3, B, L, F))  # two batch axes
    for model in (theirs, ours):
        model.init_cache((3, B, L, F))
    step = nnx.jit(lambda model, token: model(token, decode=True))
    for i in range(3):  # the cache's mask is flax's own boolean [batch..., 1, 1, max_length]
        token = x[:, :, i:i + 1]
        np.testing.assert_allclose(np.asarray(step(ours, token)), np.asarray(step(theirs, token)), **TOL)


@pytest.mark.parametrize("mask_name", ["none", "padding", "random"])
def test_linen_multi_head_dot_product_attention(mask_name):
    make = functools.partial(linen.MultiHeadDotProductAttention, num_heads=HEADS, qkv_features=32)
    x, kv = _normal(5, (B, L, F)), _normal(6, (B, LKV, F))
    mask = _masks(L, LKV)[mask_name]
    params = make().init(jax.random.key(0), x, kv)
    want, want_state = make().apply(params, x, kv, mask=mask, sow_weights=True, mutable=["intermediates"])
    got, got_state = make(attention_fn=ejflax.linen_attention).apply(
        params, x, kv, mask=mask, sow_weights=True, mutable=["intermediates"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    (want_w,), (got_w,) = (s["intermediates"]["attention_weights"] for s in (want_state, got_state))
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(want_w), **TOL)

    def loss(fn, x):
        return jnp.sum(make(attention_fn=fn).apply(params, x, kv, mask=mask) ** 2)

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(functools.partial(loss, ejflax.linen_attention)))(x)),
                               np.asarray(jax.jit(jax.grad(functools.partial(loss, linen.dot_product_attention)))(x)),
                               rtol=1e-4, atol=1e-4)


def test_functions_against_flax_on_unbatched_bfloat16_inputs():
    q, k, v = (_normal(7 + i, s).astype(jnp.bfloat16) for i, s in enumerate(((L, HEADS, 8), (LKV, HEADS, 8), (LKV, HEADS, 8))))
    mask = _masks(L, LKV)["random"][0]  # [heads, Sq, Skv], no batch axis
    for ours, theirs in ((ejflax.nnx_attention, nnx.dot_product_attention),
                         (ejflax.linen_attention, linen.dot_product_attention)):
        got, want = (jax.jit(functools.partial(fn, mask=mask))(q, k, v) for fn in (ours, theirs))
        assert got.dtype == want.dtype == jnp.bfloat16 and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)
    got = ejflax.nnx_attention(q, k, v, dtype=jnp.float32)
    assert got.dtype == jnp.float32


def test_dropout_and_what_cannot_be_served():
    q = _normal(10, (B, L, HEADS, 8))
    key = jax.random.key(3)
    with pytest.raises(ValueError, match="broadcast_dropout=False"):
        ejflax.nnx_attention(q, q, q, dropout_rate=0.1, dropout_rng=key)
    with pytest.raises(ValueError, match="dropout_rng is None"):
        ejflax.nnx_attention(q, q, q, dropout_rate=0.1, broadcast_dropout=False)
    with pytest.raises(NotImplementedError, match="qk_attn_weights_einsum"):
        ejflax.linen_attention(q, q, q, qk_attn_weights_einsum=jnp.einsum)
    with pytest.raises(NotImplementedError, match="precision"):
        ejflax.nnx_attention(q, q, q, precision=(jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT))
    # Inactive dropout (deterministic) is no dropout; active dropout is ejkernel's, one draw per weight.
    plain = ejflax.nnx_attention(q, q, q)
    np.testing.assert_array_equal(np.asarray(ejflax.nnx_attention(q, q, q, dropout_rate=0.5, deterministic=True)),
                                  np.asarray(plain))
    dropped = ejflax.nnx_attention(q, q, q, dropout_rate=0.5, broadcast_dropout=False, dropout_rng=key)
    want, _ = ejkernel_attention(q, q, q, deterministic=False, dropout_prob=0.5, dropout_rng=key)
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(want))
    assert not np.allclose(np.asarray(dropped), np.asarray(plain))


def ejkernel_attention(*args, **kwargs):
    import ejkernel

    return ejkernel.attention(*args, **kwargs)
