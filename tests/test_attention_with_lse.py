"""``attention_with_lse``: every registered implementation returns ``(out, lse [B, Sq, Hq])`` and is
differentiable in both, the lse cotangent included (ring attention's steps rely on it).

The oracle is written here, independently: K/V repeated per group, the logits' log-sum-exp with the sinks
as extra columns, a bottom-right causal mask. The Pallas kernels run in interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel import registry

B, SQ, SKV, HQ, HKV, D = 1, 40, 56, 4, 2, 16  # 80 query rows per kv head: not a decoding call


def _inputs():
    keys = jax.random.split(jax.random.key(7), 6)
    return {
        "query": jax.random.normal(keys[0], (B, SQ, HQ, D)),
        "key": jax.random.normal(keys[1], (B, SKV, HKV, D)),
        "value": jax.random.normal(keys[2], (B, SKV, HKV, D)),
        "bias": jax.random.normal(keys[3], (1, HQ, SQ, SKV)),
        "softmax_aux": jax.random.normal(keys[4], (HQ, 2)),
    }


def _oracle(query, key, value, bias, softmax_aux):
    """Causal attention and its ``lse [B, Sq, Hq]`` (sinks included), written plainly."""
    group = HQ // HKV
    k, v = jnp.repeat(key, group, axis=2), jnp.repeat(value, group, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", query, k) * D**-0.5 + bias
    causal = jnp.arange(SKV)[None, :] <= jnp.arange(SQ)[:, None] + (SKV - SQ)
    s = jnp.where(causal, s, -jnp.inf)
    sinks = jnp.broadcast_to(softmax_aux[None, :, None, :], (B, HQ, SQ, softmax_aux.shape[-1]))
    lse = jax.nn.logsumexp(jnp.concatenate([s, sinks], axis=-1), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", jnp.exp(s - lse[..., None]), v)
    return out, lse.transpose(0, 2, 1)


def _outputs_and_grads(fn, args, jit=True):
    """``(out, lse)`` and the gradients of a loss with a cotangent on both outputs, in one jit (or eagerly)."""
    weights = jax.random.normal(jax.random.key(8), (B, SQ, HQ))

    def loss(*xs):
        out, lse = fn(*xs)
        return jnp.sum(out * jnp.sin(out)) + jnp.sum(weights * lse), (out, lse)

    with jax.default_matmul_precision("highest"):
        step = jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True)
        (_, outputs), grads = (jax.jit(step) if jit else step)(*args)
    return outputs, grads


def _served_case(spec):
    """The arguments, compute dtype and relative tolerance of a call ``spec`` serves: float32 with a bias and
    sinks where it serves that, else float16 without them (what every flash kernel serves)."""
    args = _inputs()
    kernel = ejkernel.get_kernel("attention_with_lse", "xla")
    features = kernel.bind(**args, causal=True, dtype=jnp.float32).features
    if not spec.capabilities.unsupported_reasons(features):
        return args, jnp.float32, 1e-5, 2e-5
    args = {**args, "bias": jnp.zeros_like(args["bias"]), "softmax_aux": jnp.zeros((HQ, 0))}
    return args, jnp.float16, 5e-3, 5e-3


@pytest.mark.parametrize("spec", registry.kernel_specs("attention_with_lse"), ids=lambda s: s.label)
def test_every_implementation_matches_the_oracle_with_an_lse_cotangent(spec):
    args, dtype, tol, grad_tol = _served_case(spec)
    impl = spec.build(spec.uses_pallas)
    kernel = ejkernel.get_kernel("attention_with_lse", "xla")

    def served(query, key, value, bias, softmax_aux):
        sinks = softmax_aux if softmax_aux.shape[-1] else None
        bias = bias if sinks is not None else None
        call = kernel.bind(query, key, value, bias=bias, softmax_aux=sinks, causal=True, dtype=dtype)
        assert not spec.capabilities.unsupported_reasons(call.features)
        out, lse = impl(call)
        return out.astype(jnp.float32), lse

    # Mosaic-GPU's CPU interpreter (jax 0.10) does not finish a jitted program holding its forward and the
    # Triton backward together (each runs alone, and eagerly together); on a GPU the jitted form is tested.
    interpreted_mosaic = spec.platform == "mosaic_gpu" and jax.default_backend() != "gpu"
    (got_out, got_lse), got = _outputs_and_grads(served, tuple(args.values()), jit=not interpreted_mosaic)
    (want_out, want_lse), want = _outputs_and_grads(_oracle, tuple(args.values()))
    assert got_lse.shape == (B, SQ, HQ)
    np.testing.assert_allclose(got_out, want_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_lse, want_lse, rtol=tol, atol=tol)
    for name in ("query", "key", "value"):
        g, w = got[list(args).index(name)], want[list(args).index(name)]
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(g, w, rtol=0, atol=grad_tol * scale, err_msg=f"{spec.label}: d{name}")
    if dtype == jnp.float32:
        for name in ("bias", "softmax_aux"):
            g, w = got[list(args).index(name)], want[list(args).index(name)]
            scale = float(jnp.max(jnp.abs(w)))
            np.testing.assert_allclose(g, w, rtol=0, atol=grad_tol * scale, err_msg=f"{spec.label}: d{name}")


@pytest.mark.infs_by_design("it asks for the -inf lse of rows that see no key")
def test_an_empty_row_has_lse_minus_inf_and_output_zero():
    args = _inputs()
    out, lse = ejkernel.get_kernel("attention_with_lse", "xla")(
        args["query"], args["key"][:, :4], args["value"][:, :4], causal=True, dtype=jnp.float32)
    # Skv = 4 < Sq = 40: bottom-right causal leaves the first 36 rows with no key.
    assert bool(jnp.all(jnp.isneginf(lse[:, :36]))) and bool(jnp.all(out[:, :36] == 0))
    assert bool(jnp.all(jnp.isfinite(lse[:, 36:])))


def test_every_backend_registers_attention_with_lse():
    platforms = {s.platform for s in registry.kernel_specs("attention_with_lse")}
    assert platforms == {"xla", "pallas_tpu", "triton", "mosaic_gpu"}


_PACKING_SPECS = [s for s in registry.kernel_specs("attention_with_lse")
                  if s.capabilities.segment_ids and s.capabilities.kv_lengths]


def test_packing_is_claimed_by_the_lse_implementations_of_every_backend():
    assert {s.platform for s in _PACKING_SPECS} == {"xla", "pallas_tpu", "triton", "mosaic_gpu"}


@pytest.mark.infs_by_design("it asks for the -inf lse of rows that see no key")
@pytest.mark.parametrize("spec", _PACKING_SPECS, ids=lambda s: s.label)
def test_segment_ids_and_kv_lengths_equal_their_dense_mask_with_the_lse(spec):
    # Ring attention's steps hand each pair's packing to attention_with_lse: every backend that claims it
    # must give the out and lse of the equivalent dense mask (here the XLA implementation's, checked above).
    args = _inputs()
    q_ids = jnp.asarray(np.repeat(np.arange(5), SQ // 5)[None], jnp.int32)  # 5 segments; the last sees no key
    kv_ids = jnp.asarray(np.minimum(np.arange(SKV) // 8, 4)[None], jnp.int32).at[:, 50:].set(-1)  # padded tail
    lengths = jnp.asarray([27], jnp.int32)
    kernel = ejkernel.get_kernel("attention_with_lse", "xla")
    dtype = jnp.float32 if "float32" in spec.capabilities.dtypes else jnp.float16
    call = kernel.bind(args["query"], args["key"], args["value"], causal=True, dtype=dtype, q_segment_ids=q_ids,
                       kv_segment_ids=kv_ids, kv_lengths=lengths)
    assert not spec.capabilities.unsupported_reasons(call.features)
    mask = (q_ids[:, :, None] == kv_ids[:, None, :]) & (kv_ids[:, None, :] >= 0)
    mask = (mask & (jnp.arange(SKV) < lengths[:, None, None]))[:, None]
    dense = kernel.bind(args["query"], args["key"], args["value"], attention_mask=mask, causal=True, dtype=dtype)
    impl = spec.build(spec.uses_pallas)
    with jax.default_matmul_precision("highest"):
        (out, lse), (want_out, want_lse) = impl(call), kernel.run(dense)
    tol = 1e-5 if dtype == jnp.float32 else 5e-3
    seen = np.isfinite(np.asarray(want_lse))
    assert not seen.all() and seen.any(), "the case must hold rows with no allowed key and rows with some"
    np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), seen)
    np.testing.assert_allclose(np.where(seen, lse, 0), np.where(seen, want_lse, 0), rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want_out, np.float32), rtol=tol, atol=tol)
