"""The GPU profile: parity property tests and bad-input tests, native on an NVIDIA GPU.

    pytest -m gpu          # or: nox -s gpu

Every GPU implementation is checked through the registry at the sizes its default blocks see: Triton,
Mosaic-GPU (Hopper only), cuDNN and the chunked XLA path with the accelerator chunk policy. Where the
implementation claims a call
(its capabilities), it must serve it and match the float32 oracle (``parity.assert_matches_oracle``, the
tolerances of ``ejkernel check``); where it does not, the call must fall back and equal the fallback's own
result. Without a GPU these tests are collected and deselected, with the reason in the summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import ejkernel
from conftest import examples
from ejkernel.check import TOLERANCE, CheckCase, make_inputs, oracle, relative_error
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as xla_attention
from parity import assert_matches_oracle, forward_and_grads
from test_validation import BAD, _arrays

pytestmark = pytest.mark.gpu

GPU_PLATFORMS = ("triton", "mosaic_gpu", "cudnn")
# Lengths that span several of the kernels' default blocks (64-128 rows), with ragged tails, Sq != Skv both
# ways, GQA and MQA, and the head dims the kernels pad (96) or cuDNN rejects (72).
SHAPES = (
    (2, 384, 384, 4, 4, 64, 64),
    (1, 777, 777, 8, 2, 128, 128),
    (2, 300, 701, 4, 1, 64, 64),
    (1, 700, 260, 6, 3, 96, 96),
    (1, 512, 512, 4, 2, 256, 256),
    (1, 333, 555, 4, 2, 128, 64),
    (2, 1, 900, 8, 2, 128, 128),
    (1, 256, 256, 2, 2, 72, 72),
)
LAYOUTS = (None, "B,q", "B,kv", "B,1", "1,q", "1,kv", "1,1")
# No shrinking: every shrink step compiles new kernels, minutes on a GPU; the first failure is reported as is.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _kernel(platform: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return ejkernel.get_kernel("attention", platform)


def _fallback_equals_its_own_result(kernel, args, dtype, decision):
    """A call the platform does not claim: served by the fallback, bit for bit that implementation's."""
    fallback = _kernel(decision.chosen.platform)
    b, sq, hq = args["query"].shape[:3]
    cot = jax.random.normal(jax.random.key(3), (b, sq, hq, args["value"].shape[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out, grads = forward_and_grads(kernel, args, dtype, cot, jit=True)
        want_out, want_grads = forward_and_grads(fallback, args, dtype, cot, jit=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want_out))
    for name in want_grads:
        np.testing.assert_array_equal(np.asarray(grads[name]), np.asarray(want_grads[name]))


@pytest.mark.parametrize("platform", GPU_PLATFORMS)
@settings(max_examples=examples(0.8), phases=NO_SHRINK)
@given(
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from(["bfloat16", "float16", "float32"]),
    causal=st.booleans(),
    window=st.sampled_from([None, None, (128, 0), (100, 30), 64]),
    cap=st.sampled_from([None, None, 20.0]),
    sinks=st.sampled_from([None, None, "per_head", "shared"]),
    bias=st.sampled_from(LAYOUTS[:1] * 4 + LAYOUTS[1:]),
    mask=st.sampled_from(LAYOUTS[:1] * 4 + LAYOUTS[1:]),
    scale=st.sampled_from([None, 0.3]),
    packing=st.sampled_from([None, None, None, "segments", "lengths", "both"]),
    seed=st.integers(0, 2**16),
)
def test_parity_where_claimed_fallback_elsewhere(platform, shape, dtype, causal, window, cap, sinks, bias, mask, scale,
                                                 packing, seed):
    b, sq, skv, hq, hkv, d, dv = shape
    case = CheckCase("gpu", b, sq, skv, hq, hkv, d, dv, causal, window, bias, mask, cap, sinks, scale,
                     packed_docs=3 if packing in ("segments", "both") else 0, kv_lengths=packing in ("lengths", "both"))
    kernel = _kernel(platform)
    args = make_inputs(case, seed)
    decision = kernel.explain(**args, dtype=dtype)
    spec = next(s for s in ejkernel.registry.kernel_specs("attention") if s.platform == platform)
    if spec.hardware_reason("cuda", interpret=False):
        pytest.skip(f"{platform}: {spec.hardware_reason('cuda', interpret=False)}")
    claimed = not spec.capabilities.unsupported_reasons(decision.features)
    assert (decision.platform == platform) == claimed, str(decision)
    if claimed:
        assert_matches_oracle(kernel, case, dtype, TOLERANCE[dtype], seed, jit=True)
    else:
        _fallback_equals_its_own_result(kernel, args, dtype, decision)


@settings(max_examples=examples(0.3), phases=NO_SHRINK)
@given(
    shape=st.sampled_from([(1, 2500, 2100, 4, 2, 64, 64), (2, 1500, 1500, 4, 4, 128, 128)]),
    dtype=st.sampled_from(["bfloat16", "float32"]),
    causal=st.booleans(),
    window=st.sampled_from([None, (300, 20)]),
    bias=st.sampled_from([None, "1,q"]),
    sinks=st.sampled_from([None, "per_head"]),
    seed=st.integers(0, 2**16),
)
def test_chunked_with_the_accelerator_policy(shape, dtype, causal, window, bias, sinks, seed):
    """The chunked XLA path with the accelerator's default chunks (several key chunks at these lengths)."""
    b, sq, skv, hq, hkv, d, dv = shape
    case = CheckCase("chunked", b, sq, skv, hq, hkv, d, dv, causal, window, bias, None, None, sinks)

    assert_matches_oracle(chunked_attention, case, dtype, TOLERANCE[dtype], seed, jit=True)


@pytest.mark.parametrize("platform", (*GPU_PLATFORMS, "xla"))
@pytest.mark.parametrize("overrides,static,error,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_naming_argument(platform, overrides, static, error, words):
    kernel = _kernel(platform)
    with pytest.raises(error) as info:
        kernel(**_arrays(**overrides), **static)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from {str(info.value)!r}"


@pytest.mark.infs_by_design("its inputs hold Inf and NaN on purpose")
@pytest.mark.parametrize("platform", (*GPU_PLATFORMS, "xla"))
def test_keys_past_the_lengths_and_of_no_segment_never_influence_anything(platform):
    """NaN and Inf in K and V where no query may look (past ``kv_lengths``, a segment no query has): each
    GPU implementation's output and gradients equal its own on the same call with those keys zeroed, and
    the poisoned keys' dK and dV are exactly 0. Packed rows (segment ids and lengths) and a decoding call."""
    rng = np.random.default_rng(7)
    b, s, h, d = 2, 300, 4, 64
    q_ids = np.repeat(np.arange(3), 100)[None].repeat(b, 0).astype(np.int32)
    kv_ids = q_ids.copy()
    kv_ids[0, 120:150] = 9  # a segment no query has
    lengths = np.array([260, 300], np.int32)
    invisible = (kv_ids != q_ids) | (np.arange(s)[None] >= lengths[:, None])
    calls = {
        "packed": ((b, s, h, d), (b, s, h, d), {"q_segment_ids": q_ids, "kv_segment_ids": kv_ids, "kv_lengths": lengths},
                   invisible),
        "decode": ((b, 1, 8, d), (b, s, 2, d), {"kv_lengths": lengths}, np.arange(s)[None] >= lengths[:, None]),
    }
    kernel = _kernel(platform)
    for name, (q_shape, kv_shape, packed, hidden) in calls.items():
        q = jnp.asarray(rng.standard_normal(q_shape), jnp.bfloat16)
        k, v = (jnp.asarray(rng.standard_normal(kv_shape), jnp.bfloat16) for _ in range(2))
        hide = jnp.asarray(hidden)[:, :, None, None]
        clean = [jnp.where(hide, 0, x) for x in (k, v)]
        dirty = [jnp.where(hide, jnp.asarray(bad, x.dtype), x) for x, bad in ((k, np.nan), (v, np.inf))]
        cot = jnp.asarray(rng.standard_normal(q_shape), jnp.float32)
        extras = {n: jnp.asarray(a) for n, a in packed.items()}

        def grads(k, v, extras=extras, cot=cot, q=q):
            def loss(q, k, v):
                return jnp.sum(kernel(q, k, v, causal=True, dtype="bfloat16", **extras)[0].astype(jnp.float32) * cot)
            return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            (want, want_g), (got, got_g) = grads(*clean), grads(*dirty)
        assert bool(jnp.isfinite(got)) and float(got) == float(want), (name, got, want)
        for g, w, what in zip(got_g, want_g, "qkv", strict=True):
            assert bool(jnp.all(jnp.isfinite(g))), (name, what)
            np.testing.assert_array_equal(np.asarray(g.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)))
        for g in got_g[1:]:
            assert bool(jnp.all(jnp.where(hide, g, 0) == 0)), name


@pytest.mark.parametrize("platform", (*GPU_PLATFORMS, "xla"))
def test_float16_score_gradient_past_its_range(platform):
    """dS past 65504 while dQ and dK fit in float16: every GPU path keeps the gradients finite and right."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 64, 2, 64)) * 0.01, jnp.float16)
    k = jnp.asarray(rng.standard_normal((1, 64, 2, 64)) * 0.01, jnp.float16)
    v = jnp.asarray(np.where(np.arange(64) % 2, 250.0, -250.0)[None, :, None, None] * np.ones((1, 64, 2, 64)),
                    jnp.float16)
    cot = jnp.full(q.shape, 250.0, jnp.float32)
    kernel = _kernel(platform)

    def grads(fn, args, dtype):
        def loss(*a):
            return jnp.sum(fn(*a, dtype=dtype)[0].astype(jnp.float32) * cot)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)

    with jax.default_matmul_precision("highest"):
        want = grads(xla_attention, tuple(x.astype(jnp.float32) for x in (q, k, v)), jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        got = grads(kernel, (q, k, v), jnp.float16)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert relative_error(g, w) <= TOLERANCE["float16"], (name, relative_error(g, w))


X64_SCRIPT = textwrap.dedent("""
    import warnings, jax, jax.numpy as jnp, ejkernel
    from ejkernel.errors import FallbackWarning
    warnings.simplefilter("error", FallbackWarning)
    q = jax.random.normal(jax.random.key(0), (1, 256, 4, 64), jnp.float32).astype(jnp.bfloat16)
    for platform in ("triton", "mosaic_gpu", "cudnn"):
        f = lambda q: ejkernel.attention(q, q, q, causal=True, platform=platform)[0].astype(jnp.float32).sum()
        print(platform, bool(jnp.isfinite(jax.grad(f)(q)).all()))
""")


def test_every_gpu_kernel_runs_with_x64_enabled():
    env = dict(os.environ, JAX_ENABLE_X64="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    result = subprocess.run([sys.executable, "-c", X64_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["triton", "True", "mosaic_gpu", "True", "cudnn", "True"]


def test_auto_splits_a_call_between_the_fastest_forward_and_the_fastest_training_kernel():
    """On the H200 the committed table measured the Mosaic-GPU forward ahead of cuDNN's at D256 S512, and
    cuDNN's forward+backward far ahead: an undifferentiated call runs the first, a differentiated one the
    second (``registry.Decision.forward``, ``ops/attention/split.py``), and both match the oracle."""
    if jax.devices()[0].device_kind != "NVIDIA H200":
        pytest.skip(f"the committed table that splits this call is the H200's, not the {jax.devices()[0].device_kind}'s")
    kernel = ejkernel.get_kernel("attention")
    case = CheckCase("gpu-split", 2, 512, 512, 8, 8, 256)
    args = make_inputs(case, 3)
    decision = kernel.explain(**args, dtype="bfloat16")
    assert decision.forward is not None and decision.forward.platform != decision.chosen.platform, str(decision)
    errors = assert_matches_oracle(kernel, case, "bfloat16", TOLERANCE["bfloat16"], 3, jit=True)  # the training kernel
    cot = jax.random.normal(jax.random.key(10), (2, 512, 8, 256))
    ref_out, _ = oracle(args, cot)
    arrays = {name: x for name, x in args.items() if isinstance(x, jax.Array)}
    static = {name: x for name, x in args.items() if name not in arrays}
    forward = jax.jit(lambda a: kernel(**a, **static, dtype="bfloat16")[0])  # never differentiated: the forward's kernel
    out = forward(arrays)
    assert relative_error(out, ref_out) <= TOLERANCE["bfloat16"], errors
