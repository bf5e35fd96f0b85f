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

B, SQ, SKV, HQ, HKV, D = 1, 20, 36, 4, 2, 16


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


def test_an_empty_row_has_lse_minus_inf_and_output_zero():
    args = _inputs()
    out, lse = ejkernel.get_kernel("attention_with_lse", "xla")(
        args["query"], args["key"][:, :4], args["value"][:, :4], causal=True, dtype=jnp.float32)
    # Skv = 4 < Sq = 20: bottom-right causal leaves the first 16 rows with no key.
    assert bool(jnp.all(jnp.isneginf(lse[:, :16]))) and bool(jnp.all(out[:, :16] == 0))
    assert bool(jnp.all(jnp.isfinite(lse[:, 16:])))


def test_every_backend_registers_attention_with_lse():
    platforms = {s.platform for s in registry.kernel_specs("attention_with_lse")}
    assert platforms == {"xla", "pallas_tpu", "triton", "mosaic_gpu"}
