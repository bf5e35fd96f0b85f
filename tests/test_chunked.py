"""The chunked XLA attention against the dense reference: forward, gradients, lse, skipping, dispatch."""

from __future__ import annotations

import functools
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ejkernel
from ejkernel.check import relative_error
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.xla import chunk_policy, chunked, chunked_tiles, spec
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as reference
from ejkernel.kernels.xla.spec import CHUNKED as SPEC
from ejkernel.ops.attention.masks import allowed, normalize_window
from ejkernel.ops.attention.merge import merge_partials

F32_TOL = 2e-5
BF16_TOL = 2e-2
DIFF = ("query", "key", "value", "bias", "softmax_aux")


def make_case(seed, batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, v_head_dim,
              bias=None, mask=None, sinks=None, empty_row=False):
    """Inputs with distinct keys; ``bias``/``mask`` are (batch, heads) layouts like ("B", "kv")."""
    ks = jax.random.split(jax.random.key(seed), 7)
    heads = {"q": num_q_heads, "kv": num_kv_heads, "1": 1}

    def operand_shape(layout):
        return (batch if layout[0] == "B" else 1, heads[layout[1]], q_len, kv_len)

    args = {
        "query": jax.random.normal(ks[0], (batch, q_len, num_q_heads, head_dim)),
        "key": jax.random.normal(ks[1], (batch, kv_len, num_kv_heads, head_dim)),
        "value": jax.random.normal(ks[2], (batch, kv_len, num_kv_heads, v_head_dim)),
    }
    if bias is not None:
        args["bias"] = jax.random.normal(ks[3], operand_shape(bias))
    if mask is not None:
        m = jax.random.bernoulli(ks[4], 0.75, operand_shape(mask))
        if empty_row:  # a row with no allowed key at all
            m = m.at[:, :, q_len // 2, :].set(False)
        args["attention_mask"] = m
    if sinks == "per_head":
        args["softmax_aux"] = jax.random.normal(ks[5], (num_q_heads, 2))
    elif sinks == "shared":
        args["softmax_aux"] = jax.random.normal(ks[5], (3,))
    cotangent = jax.random.normal(ks[6], (batch, q_len, num_q_heads, v_head_dim))
    return args, cotangent


def jitted(fn=chunked_attention, **static):
    """``fn`` compiled with the Python keyword arguments ``static`` fixed."""
    return jax.jit(functools.partial(fn, **static))


def out_and_grads(fn, args, cotangent, **kwargs):
    diff = {k: args[k] for k in DIFF if k in args}
    rest = {k: v for k, v in args.items() if k not in diff}

    @jax.jit
    def run(diff, rest, cotangent):
        out, vjp = jax.vjp(lambda d: fn(**d, **rest, **kwargs)[0], diff)
        (grads,) = vjp(cotangent.astype(out.dtype))
        return out, grads

    return run(diff, rest, cotangent)


def oracle(args, cotangent, **kwargs):
    """The dense reference in float64 (x64 on inside only), as NumPy arrays.

    Not float32: a shared sink's gradient sums every row's term with cancellation, and the float32
    reference rounds it several times further from float64 than the chunked path does (2.7e-5 against
    7.7e-6 relative on shape (1, 77, 131, 4, 2, 16, 8), causal, window 24, shared sinks, seed 1052).
    """
    with jax.enable_x64(True):
        wide = {k: jnp.asarray(np.asarray(x, np.float64)) if jnp.issubdtype(x.dtype, jnp.floating) else x
                for k, x in args.items()}
        result = out_and_grads(reference, wide, jnp.asarray(np.asarray(cotangent, np.float64)), dtype=jnp.float64,
                               softmax_dtype=jnp.float64, **kwargs)
        return jax.tree.map(np.asarray, result)


def assert_matches(got, want, tol):
    (out, grads), (ref_out, ref_grads) = got, want
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{k}": relative_error(grads[k], ref_grads[k]) for k in ref_grads})
    assert set(grads) == set(ref_grads)
    assert all(e <= tol for e in errors.values()), errors


# (batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, v_head_dim): ragged and Sq != Skv.
SHAPES = (
    (2, 64, 64, 4, 4, 16, 16),
    (1, 77, 131, 4, 2, 16, 8),
    (2, 96, 50, 4, 1, 8, 16),
    (1, 1, 100, 6, 3, 16, 16),
    (1, 130, 130, 2, 2, 32, 32),
)
WINDOWS = (None, 24, (40, 0), (5, 17))
LAYOUTS = (None, ("B", "q"), ("1", "kv"), ("B", "1"), ("1", "1"))


@settings(deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    blocks=st.sampled_from(((16, 32), (32, 16), (64, 48))),
    causal=st.booleans(),
    window=st.sampled_from(WINDOWS),
    cap=st.sampled_from((None, 2.0)),
    bias=st.sampled_from(LAYOUTS),
    mask=st.sampled_from(LAYOUTS),
    sinks=st.sampled_from((None, "per_head", "shared")),
    scale=st.sampled_from((None, 0.3)),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_f32(shape, blocks, causal, window, cap, bias, mask, sinks, scale, seed):
    args, cot = make_case(seed, *shape, bias=bias, mask=mask, sinks=sinks, empty_row=True)
    kw = dict(causal=causal, sliding_window=window, logits_soft_cap=cap, softmax_scale=scale)
    got = out_and_grads(chunked_attention, args, cot, dtype=jnp.float32, block_q=blocks[0], block_kv=blocks[1], **kw)
    assert_matches(got, oracle(args, cot, **kw), F32_TOL)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_matches_reference_half(dtype):
    args, cot = make_case(3, 2, 100, 150, 4, 2, 32, 32, bias=("1", "kv"), mask=("B", "1"), sinks="per_head")
    kw = dict(causal=True, sliding_window=(64, 8), logits_soft_cap=4.0)
    got = out_and_grads(chunked_attention, args, cot, dtype=dtype, block_q=32, block_kv=48, **kw)
    assert got[0].dtype == jnp.dtype(dtype)
    assert_matches(got, oracle(args, cot, **kw), BF16_TOL if dtype == "bfloat16" else 5e-3)


def test_registered_attention_returns_no_weights_and_has_reference_signature():
    assert inspect.signature(chunked.attention) == inspect.signature(reference)
    args, _ = make_case(0, 1, 40, 40, 2, 2, 16, 16)
    out, weights = chunked.attention(**args, causal=True)
    assert weights is None and out.dtype == jnp.bfloat16
    registered = SPEC.build(False)(ejkernel.get_kernel("attention").bind(**args, causal=True))
    assert registered[1] is None and np.array_equal(np.asarray(registered[0], np.float32), np.asarray(out, np.float32))


def test_rows_without_keys_are_zero_with_zero_finite_gradients():
    # Sq > Skv with causal: the first Sq - Skv queries see no key; one more row is masked out entirely.
    args, cot = make_case(1, 1, 90, 50, 2, 1, 16, 16, mask=("1", "1"), empty_row=True)
    got = out_and_grads(chunked_attention, args, cot, dtype=jnp.float32, block_q=32, block_kv=16, causal=True)
    out, grads = got
    assert np.all(np.asarray(out[:, :40]) == 0) and np.all(np.asarray(out[:, 45]) == 0)
    assert np.all(np.asarray(grads["query"][:, :40]) == 0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())
    assert_matches(got, oracle(args, cot, causal=True), F32_TOL)


def dense_lse(args, **kw):
    """float64 NumPy log-sum-exp of every row's allowed logits (no cap/bias), sinks included."""
    q = np.asarray(args["query"], np.float64)
    k = np.asarray(args["key"], np.float64)
    b, sq, hq, d = q.shape
    skv, hkv = k.shape[1], k.shape[2]
    k = np.repeat(k, hq // hkv, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * d**-0.5
    ok = np.broadcast_to(allowed(np.arange(sq)[:, None], np.arange(skv)[None], sq, skv, kw.get("causal", False), None), s.shape)
    s = np.where(ok, s, -np.inf)
    if "softmax_aux" in args:
        aux = np.broadcast_to(np.asarray(args["softmax_aux"], np.float64), (hq, args["softmax_aux"].shape[-1]))
        s = np.concatenate([s, np.broadcast_to(aux[None, :, None, :], (b, hq, sq, aux.shape[-1]))], axis=-1)
    with np.errstate(divide="ignore"):
        m = np.max(s, axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        return (np.log(np.sum(np.exp(s - m), axis=-1, keepdims=True)) + m)[..., 0]


@pytest.mark.infs_by_design("it asks for the -inf lse of rows that see no key")
def test_lse_is_the_row_log_sum_exp_and_includes_sinks_once():
    args, _ = make_case(2, 2, 70, 90, 4, 2, 16, 16, sinks="per_head")
    for blocks in ((16, 16), (70, 90)):
        _, lse = jitted(dtype=jnp.float32, causal=True, block_q=blocks[0], block_kv=blocks[1])(**args)
        np.testing.assert_allclose(np.asarray(lse), dense_lse(args, causal=True), rtol=1e-5, atol=1e-5)
    _, lse = jitted(dtype=jnp.float32, causal=True)(args["query"][:, :10], args["key"][:, :1], args["value"][:, :1])
    assert np.all(np.isneginf(np.asarray(lse[:, :, :9])))  # rows that see no key


def test_partials_over_disjoint_keys_merge_to_the_full_result():
    args, _ = make_case(4, 2, 48, 100, 4, 2, 16, 16)
    q, k, v = args["query"], args["key"], args["value"]
    fn = jitted(dtype=jnp.float32, block_q=16, block_kv=16)
    full_out, full_lse = fn(q, k, v)
    out_a, lse_a = fn(q, k[:, :37], v[:, :37])
    out_b, lse_b = fn(q, k[:, 37:], v[:, 37:])
    # merge_partials wants lse shaped like out without its last axis: [B, Sq, Hq].
    out, lse = merge_partials(out_a, lse_a.transpose(0, 2, 1), out_b, lse_b.transpose(0, 2, 1))
    np.testing.assert_allclose(np.asarray(out), np.asarray(full_out), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lse.transpose(0, 2, 1)), np.asarray(full_lse), rtol=1e-5, atol=1e-5)


def test_gradient_through_lse():
    args, _ = make_case(5, 1, 40, 60, 2, 1, 8, 8, bias=("1", "q"), sinks="shared")
    ct = jax.random.normal(jax.random.key(9), (1, 2, 40))

    def chunked_loss(q, k, bias, aux):
        _, lse = chunked_attention(q, k, args["value"], bias=bias, softmax_aux=aux, dtype=jnp.float32,
                                   causal=True, block_q=16, block_kv=16)
        return jnp.sum(lse * ct)

    def dense_loss(q, k, bias, aux):
        s = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, 2, axis=2)) * 8**-0.5 + bias
        s = jnp.where(jnp.tril(jnp.ones((40, 60), bool), 20), s, -jnp.inf)
        s = jnp.concatenate([s, jnp.broadcast_to(aux, (1, 2, 40, aux.shape[0]))], axis=-1)
        return jnp.sum(jax.nn.logsumexp(s, axis=-1) * ct)

    a = (args["query"], args["key"], args["bias"], args["softmax_aux"])
    with jax.default_matmul_precision("highest"):
        want = jax.jit(jax.grad(dense_loss, argnums=(0, 1, 2, 3)))(*a)
    got = jax.jit(jax.grad(chunked_loss, argnums=(0, 1, 2, 3)))(*a)
    for g, w in zip(got, want, strict=True):
        assert relative_error(g, w) <= F32_TOL


@pytest.mark.parametrize("causal,window", [(True, None), (False, (20, 3)), (True, 9), (False, (0, 0))])
@pytest.mark.parametrize("lengths,blocks", [((100, 70), (16, 32)), ((33, 200), (8, 24)), ((64, 64), (64, 16))])
def test_skipped_chunks_are_exactly_the_fully_masked_ones(causal, window, lengths, blocks):
    q_len, kv_len = lengths
    window = normalize_window(window)
    plan = chunked_tiles.Plan(1, 1, 1, q_len, kv_len, blocks[0], blocks[1], 1.0, None, causal, window, "float32", 0.0)
    ok = np.asarray(allowed(np.arange(q_len)[:, None], np.arange(kv_len)[None], q_len, kv_len, causal, window))
    for i in range(plan.num_q_blocks):
        rows = ok[i * blocks[0]:(i + 1) * blocks[0]]
        want = [c for c in range(plan.num_kv_blocks) if rows[:, c * blocks[1]:(c + 1) * blocks[1]].any()]
        first, stop = (int(x) for x in chunked_tiles.kv_chunk_range(jnp.int32(i), plan))
        assert list(range(first, stop)) == want
    for c in range(plan.num_kv_blocks):
        cols = ok[:, c * blocks[1]:(c + 1) * blocks[1]]
        want = [i for i in range(plan.num_q_blocks) if cols[i * blocks[0]:(i + 1) * blocks[0]].any()]
        first, stop = (int(x) for x in chunked_tiles.q_chunk_range(jnp.int32(c), plan))
        assert list(range(first, stop)) == want


def test_composes_with_jit_and_vmap():
    args, _ = make_case(6, 1, 40, 56, 2, 2, 8, 8, bias=("1", "q"))
    stacked = {k: jnp.stack([v, v * 0.5]) for k, v in args.items()}
    fn = jax.jit(jax.vmap(lambda a: chunked_attention(**a, dtype=jnp.float32, causal=True, block_q=16, block_kv=16)[0]))
    got = fn(stacked)
    for n in range(2):
        want = reference(**{k: v[n] for k, v in stacked.items()}, dtype=jnp.float32, causal=True)[0]
        assert relative_error(got[n], want) <= F32_TOL


def test_decoding_stays_dense():
    # One query row against 2**20 keys: 2**23 logits, past the CPU limit, but fewer than K and V hold.
    q = jax.ShapeDtypeStruct((1, 1, 8, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 1 << 20, 2, 64), jnp.bfloat16)
    decision = ejkernel.explain(q, kv, kv)
    assert decision.chosen.variant == "default"
    assert "no larger than K and V" in str(decision)


def test_accelerator_policy(monkeypatch):
    monkeypatch.setattr(spec, "current_platform", lambda: "cuda")
    assert _explain(8192, heads=4).chosen.variant == "default"  # 2**28 logits: below the accelerator's limit
    assert _explain(8192, heads=8).chosen.variant == "chunked"  # 2**29: at it
    assert "on cuda" in str(_explain(4096))


@pytest.mark.parametrize("platform, batch, heads, seq, want", [
    ("cpu", 1, 8, 4096, (512, 256)),
    ("cpu", 16, 16, 4096, (16, 256)),  # 16 * 16 * 16 * 256 = 2**20 logits: the CPU tile budget
    ("cuda", 4, 16, 4096, (2048, 1024)),
    ("cuda", 16, 16, 1024, (512, 1024)),
    ("tpu", 1, 8, 100, (100, 100)),  # clipped to the sequences
])
def test_default_blocks(platform, batch, heads, seq, want):
    f = features_of(batch, seq, heads)
    assert chunk_policy.default_blocks(f, chunk_policy.policy_for(platform)) == want


def features_of(batch, seq, heads):
    sds = jax.ShapeDtypeStruct((batch, seq, heads, 64), jnp.bfloat16)
    return ejkernel.explain(sds, sds, sds).features


def _explain(seq, heads=8, **kwargs):
    sds = jax.ShapeDtypeStruct((1, seq, heads, 64), jnp.bfloat16)
    return ejkernel.explain(sds, sds, sds, **kwargs)


def test_dispatch_switches_at_the_documented_size():
    assert chunk_policy.CPU.dense_score_limit == 8 * 1024 * 1024
    assert _explain(1024).chosen.variant == "chunked"
    assert _explain(1023).chosen.variant == "default"
    assert _explain(1024, heads=4).chosen.variant == "default"
    assert _explain(16384, platform="xla").chosen.variant == "chunked"
    assert _explain(16384, softmax_dtype=jnp.bfloat16).chosen.variant == "default"  # float32 softmax only
    assert "below" in str(_explain(128))
    kernel = ejkernel.get_kernel("attention")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # switching between XLA variants is no fallback
        args, _ = make_case(0, 1, 32, 32, 2, 2, 16, 16)
        out, weights = kernel(**args)
    assert weights is not None and out.shape == (1, 32, 2, 16)
