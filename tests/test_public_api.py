"""The public surface: ``ejkernel.attention`` composes with jit, vmap and grad; the seed signature;
importing the package has no side effects."""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The seed's parameters (seed/attention_interface.txt), in order, with their defaults.
SEED_PARAMETERS = (
    ("query", inspect.Parameter.empty),
    ("key", inspect.Parameter.empty),
    ("value", inspect.Parameter.empty),
    ("attention_mask", None),
    ("bias", None),
    ("init_bias", None),
    ("deterministic", True),
    ("dropout_rng", None),
    ("softmax_aux", None),
    ("softmax_scale", None),
    ("logits_soft_cap", None),
    ("dtype", jnp.bfloat16),
    ("softmax_dtype", None),
    ("dropout_prob", 0.0),
    ("causal", False),
    ("sliding_window", None),
)

B, SQ, SKV, HQ, HKV, D = 2, 6, 10, 4, 2, 8


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


@pytest.fixture
def qkv():
    return _normal(1, (B, SQ, HQ, D)), _normal(2, (B, SKV, HKV, D)), _normal(3, (B, SKV, HKV, D))


def _plain_attention(q, k, v, bias, causal):
    """Written independently of the package: K/V repeated per group, a boolean bottom-right causal mask."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + bias
    sq, skv = q.shape[1], k.shape[1]
    if causal:
        # The lowest finite logit, not -inf (every row sees a key here): the oracle runs under jax_debug_infs too.
        s = jnp.where(np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq), s, jnp.finfo(s.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)


def test_jit(qkv):
    q, k, v = qkv

    def f(q, k, v):
        return ejkernel.attention(q, k, v, causal=True, dtype=jnp.float32)[0]

    with jax.default_matmul_precision("highest"):
        jitted = jax.jit(f)(q, k, v)
        expected = _plain_attention(q, k, v, 0.0, causal=True)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert jax.jit(f).lower(q, k, v).out_info.shape == (B, SQ, HQ, D)


def test_vmap_over_an_extra_leading_axis(qkv):
    n = 3
    q, k, v = (jnp.stack([x * (i + 1) for i in range(n)]) for x in qkv)  # distinct entries along the new axis

    def f(q, k, v):
        return ejkernel.attention(q, k, v, sliding_window=(3, 1), dtype=jnp.float32)[0]

    batched = jax.vmap(f)(q, k, v)
    assert batched.shape == (n, B, SQ, HQ, D)
    for i in range(n):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(f(q[i], k[i], v[i])), rtol=1e-6, atol=1e-6)


def test_grad_matches_an_independent_implementation(qkv):
    q, k, v = qkv
    bias = _normal(4, (1, HQ, SQ, SKV))
    cotangent = _normal(5, (B, SQ, HQ, D))

    def loss(fn, q, k, v, bias):
        return jnp.sum(fn(q, k, v, bias) * cotangent)

    def ours(q, k, v, bias):
        return ejkernel.attention(q, k, v, bias=bias, causal=True, dtype=jnp.float32)[0]

    def plain(q, k, v, bias):
        return _plain_attention(q, k, v, bias, causal=True)

    with jax.default_matmul_precision("highest"):
        got = jax.jit(jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2, 3)))(q, k, v, bias)
        want = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for name, g, w in zip(("query", "key", "value", "bias"), got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=name)


def test_jit_of_vmap_of_grad(qkv):
    q, k, v = (jnp.stack([x, -x]) for x in qkv)

    def loss(q, k, v):
        return jnp.sum(ejkernel.attention(q, k, v, dtype=jnp.float32)[0] ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)
    for i in range(2):
        single = jax.grad(loss, argnums=(0, 1, 2))(q[i], k[i], v[i])
        for g, s in zip(grads, single, strict=True):
            np.testing.assert_allclose(np.asarray(g[i]), np.asarray(s), rtol=1e-5, atol=1e-6)


def test_get_kernel_has_the_seed_signature():
    kernel = ejkernel.get_kernel("attention")
    params = inspect.signature(kernel).parameters
    seed = list(params.values())[: len(SEED_PARAMETERS)]
    assert [(p.name, p.default) for p in seed] == list(SEED_PARAMETERS)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in seed)
    # After them only keyword-only arguments (the packing ones, docs/semantics.rst), all defaulting to None.
    extra = list(params.values())[len(SEED_PARAMETERS):]
    assert [p.name for p in extra] == ["q_segment_ids", "kv_segment_ids", "kv_lengths"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in extra)
    # ``ejkernel.attention`` computes in the inputs' dtype by default and adds the keyword-only ``platform``,
    # ``return_weights`` and ``interpret``; the other parameters are the seed's, in its order and with its defaults.
    public = inspect.signature(ejkernel.attention).parameters
    assert list(public)[:-3] == list(params) and list(public)[-3:] == ["platform", "return_weights", "interpret"]
    assert [(n, p.default) for n, p in public.items()][:16] == [
        (n, None if n == "dtype" else d) for n, d in SEED_PARAMETERS
    ]
    assert all(public[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("platform", "return_weights", "interpret"))
    assert public["platform"].default == "auto" and public["return_weights"].default is public["interpret"].default is False


def test_get_kernel_binds_positionally_like_the_seed(qkv):
    q, k, v = qkv
    kernel = ejkernel.get_kernel("attention")
    # Positional up to ``sliding_window``: dtype is the 12th parameter, causal the 15th.
    positional = kernel(q, k, v, None, None, None, True, None, None, None, None, jnp.float32, None, 0.0, True, None)
    keywords = kernel(q, k, v, dtype=jnp.float32, causal=True)
    np.testing.assert_array_equal(np.asarray(positional[0]), np.asarray(keywords[0]))
    with pytest.raises(TypeError, match="attention"):
        kernel(q, k, v, not_a_parameter=1)


_IMPORT_PROBE = textwrap.dedent(
    """
    import json, os, sys
    import jax
    from jax._src import xla_bridge

    def snapshot():
        return {
            "env": dict(os.environ),
            "config": {k: repr(v) for k, v in jax.config.values.items()},
            "cwd": sorted(os.listdir(".")),
            "backends": xla_bridge.backends_are_initialized(),
            "handlers": [repr(h) for h in __import__("logging").getLogger().handlers],
        }

    before = snapshot()
    import ejkernel
    after_import = snapshot()
    ejkernel.list_kernels()  # loads the built-in specs
    after_specs = snapshot()
    pallas = sorted(m for m in sys.modules if m.startswith(("jax.experimental.pallas", "jax._src.pallas", "triton")))
    print(json.dumps({"before": before, "after_import": after_import, "after_specs": after_specs, "pallas": pallas}))
    """
)


def test_import_has_no_side_effects(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before = result["before"]
    assert before["cwd"] == [] and not before["backends"]
    for stage in ("after_import", "after_specs"):
        after = result[stage]
        assert after["env"] == before["env"], stage
        changed = {k for k in before["config"] if after["config"][k] != before["config"][k]}
        assert not changed, f"{stage} changed jax config {sorted(changed)}"
        assert after["cwd"] == [], f"{stage} created {after['cwd']}"
        assert after["handlers"] == before["handlers"], stage
    assert not result["after_import"]["backends"], "importing ejkernel initialised a JAX backend"
    # Spec modules must not import Pallas or Triton: their ``build`` does, on first use.
    assert result["pallas"] == [], result["pallas"]
