"""Regression tests for defects of the XLA paths (dense reference and chunked); each failed before its fix.

Each test's docstring says what the cause was. The last tests pin that both paths work under
``jax_enable_x64``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.check import relative_error
from ejkernel.kernels.xla import chunked
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCKS = dict(block_q=16, block_kv=16)  # several chunks on the small shapes below


def _normal(seed, *shapes, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return tuple(jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes, strict=True))


def _qkv(seed=0, b=1, sq=40, skv=48, hq=4, hkv=2, d=16):
    return _normal(seed, (b, sq, hq, d), (b, skv, hkv, d), (b, skv, hkv, d))


def _dense(*args, **kwargs):
    return reference(*args, **kwargs)[0]


def _chunked(*args, **kwargs):
    return chunked_attention(*args, **kwargs, **BLOCKS)[0]


PATHS = {"dense": _dense, "chunked": _chunked}


# --- a. shard_map with the default check_vma ------------------------------------------------------------

SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import ejkernel
    from ejkernel.kernels.xla.chunked import chunked_attention

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("batch", "heads"))
    heads = P("batch", None, "heads", None)

    def check(name, fn, args, in_specs):
        def loss(f):
            return lambda *a: jnp.sum(f(*a) ** 2)
        sharded = shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=heads)  # check_vma left at its default
        argnums = tuple(range(len(args)))
        with jax.default_matmul_precision("highest"):
            got = jax.jit(jax.value_and_grad(loss(sharded), argnums=argnums))(*args)
            want = jax.jit(jax.value_and_grad(loss(fn), argnums=argnums))(*args)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            assert err < 1e-5, (name, err)
        print("ok", name)

    ks = jax.random.split(jax.random.key(0), 6)
    q = jax.random.normal(ks[0], (4, 40, 8, 16))
    k = jax.random.normal(ks[1], (4, 56, 4, 16))
    v = jax.random.normal(ks[2], (4, 56, 4, 16))
    bias = jax.random.normal(ks[3], (4, 8, 40, 56))
    sinks = jax.random.normal(ks[4], (8, 2))
    mask = jax.random.bernoulli(ks[5], 0.8, (1, 1, 40, 56))  # closed over: the same on every device

    def every_feature(q, k, v, bias, sinks):
        return chunked_attention(q, k, v, bias=bias, attention_mask=mask, softmax_aux=sinks, causal=True,
                                 sliding_window=(30, 5), logits_soft_cap=5.0, dtype=jnp.float32,
                                 block_q=16, block_kv=16)[0]

    check("chunked", every_feature, (q, k, v, bias, sinks), (heads, heads, heads, P("batch", "heads"), P("heads")))

    # Each device's call, B2 Sq1024 Hq4, has 2**23 logits: the automatic dispatch picks the chunked path.
    q, k, v = (jax.random.normal(key, (4, 1024, 8, 16)) for key in ks[:3])
    local = jax.ShapeDtypeStruct((2, 1024, 4, 16), jnp.float32)
    assert ejkernel.explain(local, local, local).chosen.variant == "chunked"

    def auto(q, k, v):
        return ejkernel.attention(q, k, v, causal=True, dtype=jnp.float32)[0]

    check("auto", auto, (q, k, v), (heads, heads, heads))
    """
)


def test_chunked_path_composes_with_shard_map_and_the_default_check_vma():
    """Cause: the loops' initial carries (``jnp.zeros``/``jnp.full``) varied over no mesh axis while the
    carries their bodies return vary over the inputs' axes, so ``scan``/``fori_loop`` refused them ("carry
    input and carry output must have equal types"). Sharded code broke as soon as a call grew past the
    dispatch threshold. A subprocess: the device count must be set before JAX starts."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "chunked", "ok", "auto"]


# --- b. float16 backward ----------------------------------------------------------------------------------

def _grads(fn, args, cotangent, **kwargs):
    def loss(*a):
        return jnp.sum(fn(*a, **kwargs).astype(jnp.float32) * cotangent)

    return jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)


# The float32 gradients' distance to the float16 one: the dense path's autodiff; the chunked path's delta
# = rowsum(dO·O) comes from an output whose weights met V in float16, which cancels where |V| is far above
# its spread (FlashAttention's delta; the same before the fix, and not an overflow).
FLOAT16_GRAD_TOL = {"dense": 5e-3, "chunked": 8e-2}


@pytest.mark.parametrize("path", PATHS)
def test_float16_backward_keeps_its_products_in_float32(path):
    """Cause: the dense path cast the weights to float16 before the product with V, so autodiff formed their
    cotangent dO·Vᵀ in float16; past 65504 it was inf and dQ, dK came out NaN although the inputs are finite
    and every float32 gradient fits in float16. The chunked path forms dO·Vᵀ in float32 (checked too)."""
    q, k, v = _qkv(1, sq=32, skv=32, hq=2, hkv=2)
    v = 100.0 + v  # dO·Vᵀ ≈ 16 * 100 * 100 = 1.6e5 > 65504, while the gradients stay below 1e3
    rounded = tuple(x.astype(jnp.float16).astype(jnp.float32) for x in (q, k, v))
    cotangent = jnp.full(q.shape, 100.0)
    with jax.default_matmul_precision("highest"):
        want = _grads(_dense, rounded, cotangent, dtype=jnp.float32, causal=True)
    assert max(float(jnp.max(jnp.abs(g))) for g in want) < 1e3
    got = _grads(PATHS[path], rounded, cotangent, dtype=jnp.float16, causal=True)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert relative_error(g, w) <= FLOAT16_GRAD_TOL[path], (name, relative_error(g, w))


@pytest.mark.parametrize("path", PATHS)
def test_float16_score_gradient_past_its_range(path):
    """Cause: the chunked backward cast dS = P * (dO·Vᵀ - delta) to float16 for dQ = dS·K and dK = dSᵀ·Q.
    With two keys of opposite values dS is ~5e5 (past 65504) while dQ and dK stay below 4e3: inf, then NaN.
    Now in float16 the two dS products take float32 operands (``precision.score_gradient_dtype``; the
    Pallas-Triton backward's test is in ``test_triton_attention.py``)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 4, 1, 16)) * 0.01, jnp.float16)
    k = jnp.asarray(rng.standard_normal((1, 2, 1, 16)) * 0.01, jnp.float16)
    v = jnp.asarray(np.stack([np.full(16, 250.0), np.full(16, -250.0)])[None, :, None, :], jnp.float16)
    cotangent = jnp.full(q.shape, 250.0)
    wide = tuple(x.astype(jnp.float32) for x in (q, k, v))
    with jax.default_matmul_precision("highest"):
        want = _grads(_dense, wide, cotangent, dtype=jnp.float32)
    assert max(float(jnp.max(jnp.abs(g))) for g in want) < 4e3
    got = _grads(PATHS[path], (q, k, v), cotangent, dtype=jnp.float16)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert relative_error(g, w) <= 5e-3, (name, relative_error(g, w))


# --- c. softmax_dtype narrower than float32 ---------------------------------------------------------------

def test_float16_softmax_subtracts_the_row_max_before_narrowing():
    """Cause: the logits were cast to ``softmax_dtype`` before the row max was subtracted, so logits past
    65504 became inf (NaN out) and a row biased by -1e5 everywhere became -inf (all zeros); the max is now
    taken and subtracted in float32 and only the shifted logits are narrowed."""
    q, k, v = _qkv(2)
    half = dict(dtype=jnp.float32, softmax_dtype=jnp.float16)
    # Scale 1e4: logits of ~1e4, each row is one-hot on its largest logit.
    out = _dense(q, k, v, softmax_scale=1e4, **half)
    want = _dense(q, k, v, softmax_scale=1e4, dtype=jnp.float32)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-3)
    # A bias of -1e5 on every key of a row shifts the whole row: its softmax is unchanged.
    bias = jnp.full((1, 1, 40, 48), -1e5)
    _, weights = reference(q, k, v, bias=bias, **half)
    _, want = reference(q, k, v, bias=bias, dtype=jnp.float32)  # the same logits, rounded near 1e5 alike
    np.testing.assert_allclose(np.asarray(weights, np.float32), want, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(jnp.sum(weights.astype(jnp.float32), -1), 1.0, rtol=2e-3)


# --- d. jax.debug_infs ------------------------------------------------------------------------------------

REGISTERED = {"dense": lambda *a, **kw: reference(*a, **kw)[0], "chunked": lambda *a, **kw: chunked.attention(*a, **kw)[0]}


@pytest.mark.parametrize("path", REGISTERED)
@pytest.mark.parametrize("empty_row", [False, True])
def test_debug_infs_passes_a_masked_call_with_a_finite_result(path, empty_row):
    """Cause: the dense path replaced masked logits by -inf before the row max, and the chunked path's
    per-chunk lse was -inf on the rows a clamped last chunk does not own (and on empty rows), so
    ``jax.debug_infs`` raised ``FloatingPointError`` on calls whose result is finite;
    ``jax.nn.dot_product_attention`` passes the same call. Masked logits now stand at float32's lowest
    value, masked weights are zeroed as before, and the chunked core holds an empty row's lse as a finite
    stand-in (``-inf`` only in a returned lse). Run eagerly: under ``jit`` only the outputs are checked.
    Lengths past the CPU's default chunks (512 x 256), so that the chunked path visits several."""
    q, k, v = _qkv(3, sq=520, skv=280, hq=2, hkv=1)
    mask = jnp.asarray(np.random.default_rng(3).random((1, 1, 520, 280)) < 0.7)
    mask = mask.at[..., :, 0].set(True)
    if empty_row:
        mask = mask.at[..., 7, :].set(False)
    fn = REGISTERED[path]
    kw = dict(attention_mask=mask, dtype=jnp.float32)
    want = fn(q, k, v, **kw)
    want_grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, **kw) ** 2), argnums=(0, 1, 2))(q, k, v)
    with jax.debug_infs(True):
        out = fn(q, k, v, **kw)
        grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, **kw) ** 2), argnums=(0, 1, 2))(q, k, v)
        if not empty_row:  # the same call passes jax.nn's attention
            jax.nn.dot_product_attention(q, k, v, mask=mask).block_until_ready()
    np.testing.assert_array_equal(out, want)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_array_equal(g, w)
    if empty_row:
        assert np.all(np.asarray(out[:, 7]) == 0) and np.all(np.asarray(grads[0][:, 7]) == 0)


def test_debug_infs_passes_the_chunked_lse_of_rows_that_see_keys():
    q, k, v = _qkv(4)
    with jax.debug_infs(True):
        _, lse = chunked_attention(q, k, v, causal=True, dtype=jnp.float32, **BLOCKS)
    assert bool(jnp.all(jnp.isfinite(lse)))


@pytest.mark.infs_by_design("it asks for the -inf lse of a row that sees no key")
def test_the_chunked_lse_of_a_row_that_sees_no_key_is_minus_inf():
    q, k, v = _qkv(4)
    _, lse = chunked_attention(q, k, v, causal=True, dtype=jnp.float32, sliding_window=(0, 0), block_q=16,
                               block_kv=16, attention_mask=jnp.zeros((1, 1, 40, 48), bool).at[..., 1:, :].set(True))
    assert bool(jnp.isneginf(lse[0, 0, 0])) and bool(jnp.all(jnp.isfinite(lse[:, :, 1:])))  # the convention


# --- e. forward-mode derivatives --------------------------------------------------------------------------

def test_chunked_forward_mode_raises_an_error_naming_the_way_out():
    """Cause: the chunked path is a ``jax.custom_vjp`` (its backward recomputes tiles, in O(S) memory), which
    JAX cannot differentiate in forward mode; ``jax.jvp``/``jax.jacfwd`` failed with JAX's bare "can't apply
    forward-mode autodiff", while the dense path, picked below the size threshold, supports them. It now
    raises a ``TypeError`` naming reverse mode and the dense reference; forward-over-reverse works."""
    q, k, v = _qkv(5, sq=20, skv=24, d=8)

    def f(q):
        return _chunked(q, k, v, causal=True, dtype=jnp.float32)

    for transform in (lambda: jax.jvp(f, (q,), (q,)), lambda: jax.jacfwd(f)(q)):
        with pytest.raises(TypeError, match="reverse mode") as info:
            transform()
        assert "ejkernel.kernels.xla.reference.attention" in str(info.value)


def test_forward_over_reverse_matches_dense():
    q, k, v = _qkv(6, b=1, sq=6, skv=8, hq=2, hkv=1, d=4)

    def loss(fn):
        return lambda q: jnp.sum(jnp.sin(fn(q, k, v, causal=True, dtype=jnp.float32)))

    with jax.default_matmul_precision("highest"):
        want = jax.hessian(loss(_dense))(q)
        got = jax.hessian(loss(lambda *a, **kw: chunked_attention(*a, **kw, block_q=4, block_kv=4)[0]))(q)
        # The dense path keeps forward mode.
        out, tangent = jax.jvp(lambda q: _dense(q, k, v, causal=True, dtype=jnp.float32), (q,), (q,))
    assert relative_error(got, want) <= 1e-5
    assert bool(jnp.all(jnp.isfinite(tangent)))


# --- jax_enable_x64 ---------------------------------------------------------------------------------------

def _every_feature(dtype, seed=7):
    q, k, v, bias = _normal(seed, (2, 24, 4, 8), (2, 40, 2, 8), (2, 40, 2, 8), (1, 2, 24, 40), dtype=dtype)
    aux = jnp.asarray([[0.5], [-1.0], [0.0], [2.0]], dtype)
    mask = jnp.asarray(np.random.default_rng(seed).random((2, 1, 24, 40)) < 0.8)
    static = dict(attention_mask=mask, causal=True, sliding_window=(20, 3), logits_soft_cap=4.0, dtype=None)
    return (q, k, v, bias, aux), static


def _out_and_grads(fn, args, static):
    def run(*a):
        return fn(*a[:3], bias=a[3], softmax_aux=a[4], **static)

    out = jax.jit(run)(*args)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a) ** 2), argnums=(0, 1, 2, 3, 4)))(*args)
    return out, grads


@pytest.mark.parametrize("path", PATHS)
def test_float32_inputs_under_enable_x64(path):
    args, static = _every_feature(jnp.float32)
    with jax.default_matmul_precision("highest"):
        want = _out_and_grads(PATHS[path], args, static)
        with jax.enable_x64(True):
            got = _out_and_grads(PATHS[path], args, static)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype == jnp.float32
        assert relative_error(g, w) <= 1e-6


def test_float64_inputs_on_the_reference_under_enable_x64():
    with jax.enable_x64(True):
        args, static = _every_feature(jnp.float64)
        got = _out_and_grads(_dense, args, {**static, "softmax_dtype": jnp.float64})
    with jax.default_matmul_precision("highest"):
        want = _out_and_grads(_dense, tuple(x.astype(jnp.float32) for x in args), static)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == jnp.float64
        assert relative_error(g, w) <= 1e-5
