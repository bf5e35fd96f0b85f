"""The Pallas-TPU flash attention against the XLA oracle, on the CPU in interpret mode.

Parity: forward output and gradients w.r.t. query, key, value, bias and sinks, against the XLA reference
at float32 and highest precision (bfloat16 within 1e-2, float32 within 1e-5 relative to the largest
reference value). Most runs use Pallas' generic interpreter (``interpret=True``); some use the TPU
interpreter (``pltpu.InterpretParams()``), which simulates VMEM/DMA and raises on out-of-bounds reads.
A hypothesis test draws configurations: where the kernel claims support it must match the oracle, where
it does not the registry must route to XLA and the result must be XLA's own.
"""

from __future__ import annotations

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import ejkernel
from conftest import examples
from ejkernel.check import CheckCase, make_inputs, relative_error
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.pallas_tpu import blocks
from ejkernel.kernels.pallas_tpu.blocks import BlockSizes
from ejkernel.kernels.pallas_tpu.flash import visit_counts
from ejkernel.kernels.pallas_tpu.interface import flash_attention, flash_attention_with_lse, plan_for
from ejkernel.kernels.pallas_tpu.spec import CAPABILITIES, SPEC
from ejkernel.kernels.xla.reference import attention as xla_attention
from ejkernel.ops.attention.merge import merge_partials
from ejkernel.ops.attention.validation import validate_attention
from parity import assert_matches_oracle, forward_and_grads

TOLERANCE = {"bfloat16": 1e-2, "float32": 1e-5}


@pytest.fixture(autouse=True)
def _reset_tpu_interpreter():
    yield
    pltpu.reset_tpu_interpret_mode_state()


def _pallas(interpret=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return ejkernel.get_kernel("attention", "pallas_tpu", interpret=interpret)


def _assert_matches_oracle(fn, case: CheckCase, dtype: str, seed: int = 0, extra=None):
    return assert_matches_oracle(fn, case, dtype, TOLERANCE[dtype], seed, extra)


ALL_FEATURES = CheckCase(
    "all", batch=2, q_len=200, kv_len=230, num_q_heads=4, num_kv_heads=2, head_dim=64, v_head_dim=32,
    causal=True, sliding_window=(150, 10), bias_shape="1,kv", mask_shape="B,1", logits_soft_cap=4.0,
    sinks="per_head", softmax_scale=0.3,
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_features_together(dtype):
    _assert_matches_oracle(_pallas(), ALL_FEATURES, dtype)


def test_tpu_interpreter_catches_nothing_out_of_bounds():
    """The TPU interpreter raises on out-of-bounds DMA: ragged lengths, clamped index maps, broadcast operands."""
    case = CheckCase("tpu-interp", batch=2, q_len=130, kv_len=260, num_q_heads=4, num_kv_heads=1, head_dim=32,
                     causal=True, sliding_window=(100, 0), bias_shape="B,kv", mask_shape="1,q", sinks="shared")
    fn = _pallas(pltpu.InterpretParams())
    _assert_matches_oracle(fn, case, "float32")


def test_tpu_interpreter_decode_and_gqa():
    case = CheckCase("decode", batch=1, q_len=1, kv_len=300, num_q_heads=4, num_kv_heads=2, head_dim=64, causal=True,
                     bias_shape="1,1")
    _assert_matches_oracle(_pallas(pltpu.InterpretParams()), case, "bfloat16")


def test_rows_without_keys_are_zero_with_zero_finite_gradients():
    # Sq > Skv with causal: the first Sq - Skv rows see no key; the mask empties one more row.
    case = CheckCase("empty-rows", batch=1, q_len=160, kv_len=40, num_q_heads=2, num_kv_heads=2, head_dim=32, causal=True)
    args = make_inputs(case)
    mask = jnp.ones((1, 1, 160, 40), bool).at[:, :, 150].set(False)
    args["attention_mask"] = mask
    out, grads = forward_and_grads(_pallas(), args, "float32", jnp.ones((1, 160, 2, 32)))
    assert np.all(np.asarray(out[:, :120]) == 0) and np.all(np.asarray(out[:, 150]) == 0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())
    assert np.all(np.asarray(grads["query"][:, :120]) == 0)
    _assert_matches_oracle(_pallas(), case, "float32", extra={"attention_mask": mask})


def test_large_sink_with_ragged_queries_has_finite_sink_gradient():
    """A sink logit above ~88.7 with ``Sq`` not a block multiple: padded rows must not enter the sink gradient.

    They carry ``lse = 0`` in the kernel layout, and ``exp(100 - 0)`` overflows float32: ``inf * 0`` was NaN.
    """
    case = CheckCase("large-sink", batch=1, q_len=130, kv_len=50, num_q_heads=2, num_kv_heads=1, head_dim=16,
                     sinks="per_head")
    aux = jnp.array([[100.0, 0.5], [0.3, -0.2]], jnp.float32)  # head 0: a sink of 100; head 1: ordinary
    args = make_inputs(case)
    args["softmax_aux"] = aux
    _, grads = forward_and_grads(_pallas(), args, "float32", jnp.ones((1, 130, 2, 16)))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())
    _assert_matches_oracle(_pallas(), case, "float32", extra={"softmax_aux": aux})


def test_lse_merges_over_disjoint_keys():
    """``flash_attention_with_lse`` over two key halves, merged, equals attention over all keys."""
    case = CheckCase("merge", batch=1, q_len=64, kv_len=300, num_q_heads=2, num_kv_heads=1, head_dim=32)
    args = make_inputs(case)
    q, k, v = args["query"], args["key"], args["value"]
    full, lse = flash_attention_with_lse(q, k, v, dtype=jnp.float32, interpret=True)
    a = flash_attention_with_lse(q, k[:, :100], v[:, :100], dtype=jnp.float32, interpret=True)
    b = flash_attention_with_lse(q, k[:, 100:], v[:, 100:], dtype=jnp.float32, interpret=True)
    merged, merged_lse = merge_partials(*a, *b)
    assert relative_error(merged, full) < 1e-5 and relative_error(merged_lse, lse) < 1e-5
    with jax.default_matmul_precision("highest"):
        logits = jnp.einsum("bqhd,bkhd->bqhk", q, jnp.repeat(k, 2, axis=2)) * 32**-0.5
    assert relative_error(lse, jax.nn.logsumexp(logits, axis=-1)) < 1e-5
    # A row with no allowed key reports -inf and a zero output (the merge rule's convention).
    _, empty_lse = flash_attention_with_lse(q, k[:, :10], v[:, :10], dtype=jnp.float32, causal=True, interpret=True)
    assert np.all(np.isneginf(np.asarray(empty_lse[:, :54]))) and np.all(np.isfinite(np.asarray(empty_lse[:, 54:])))


def test_lse_gradient():
    case = CheckCase("lse-grad", batch=1, q_len=40, kv_len=150, num_q_heads=2, num_kv_heads=2, head_dim=16, sinks="per_head")
    args = make_inputs(case)

    def loss(fn, q, k, aux):
        _, lse = fn(q, k, args["value"], softmax_aux=aux, causal=True)
        return jnp.sum(jnp.sin(lse))

    def ref(q, k, v, softmax_aux, causal):
        with jax.default_matmul_precision("highest"):
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * 16**-0.5
            s = jnp.where(jnp.arange(150)[None, :] <= jnp.arange(40)[:, None] + 110, s, -jnp.inf)
            s = jnp.concatenate([s, jnp.broadcast_to(softmax_aux[None, :, None, :], (1, 2, 40, 2))], axis=-1)
            return None, jnp.swapaxes(jax.nn.logsumexp(s, axis=-1), 1, 2)

    def kernel(*a, **kw):
        return flash_attention_with_lse(*a, **kw, dtype=jnp.float32, interpret=True)

    got = jax.grad(lambda *x: loss(kernel, *x), argnums=(0, 1, 2))(args["query"], args["key"], args["softmax_aux"])
    want = jax.grad(lambda *x: loss(ref, *x), argnums=(0, 1, 2))(args["query"], args["key"], args["softmax_aux"])
    for g, w in zip(got, want, strict=True):
        assert relative_error(g, w) < 1e-5


def test_kernel_visit_counter_matches_predicate_and_causal_halves():
    q = jax.random.normal(jax.random.key(1), (1, 512, 1, 16))
    kv = jax.random.normal(jax.random.key(2), (1, 512, 1, 16))
    args = (jnp.float32, BlockSizes(128, 128, 128, 128))
    counts = {}
    for causal, window in ((False, None), (True, None), (True, (100, 0)), (False, (0, 130))):
        f = validate_attention(q, kv, kv, causal=causal, sliding_window=window)
        plan = plan_for(f, args[1], True)
        got = int(jnp.sum(visit_counts(plan, q.astype(args[0]), kv, kv)))
        assert got == blocks.count_visited_blocks(512, 512, 128, 128, causal, plan.window)
        counts[causal, window] = got
    assert counts[False, None] == 16 and counts[True, None] == 10  # 4 * 5 / 2 of the 4 x 4 tiles
    assert counts[True, (100, 0)] == 7


def test_block_sizes_override_gives_same_result():
    case = CheckCase("blocks", batch=1, q_len=300, kv_len=270, num_q_heads=2, num_kv_heads=1, head_dim=32, causal=True,
                     bias_shape="B,q")
    args = make_inputs(case)
    base, _ = flash_attention(**args, dtype=jnp.float32, interpret=True)
    for bs in (BlockSizes(256, 128, 128, 256), BlockSizes(384, 512, 256, 128)):
        out, _ = flash_attention(**args, dtype=jnp.float32, interpret=True, block_sizes=bs)
        assert relative_error(out, base) < 1e-6


def test_jit_and_vmap_compose():
    case = CheckCase("vmap", batch=1, q_len=40, kv_len=50, num_q_heads=2, num_kv_heads=1, head_dim=16)
    args = make_inputs(case)
    stacked = {k: jnp.stack([args[k], 2 * args[k]]) for k in ("query", "key", "value")}
    fn = jax.jit(jax.vmap(lambda q, k, v: flash_attention(q, k, v, dtype=jnp.float32, causal=True, interpret=True)[0]))
    out = fn(stacked["query"], stacked["key"], stacked["value"])
    for i in range(2):
        with jax.default_matmul_precision("highest"):
            ref, _ = xla_attention(stacked["query"][i], stacked["key"][i], stacked["value"][i], dtype=jnp.float32, causal=True)
        assert relative_error(out[i], ref) < 1e-5


def test_registration_signature_and_validation():
    from ejkernel.kernels.pallas_tpu.interface import flash_attention

    params = list(inspect.signature(flash_attention).parameters.values())
    reference = list(inspect.signature(xla_attention).parameters.values())
    assert params[: len(reference)] == reference
    assert [p.name for p in params[len(reference):]] == ["block_sizes", "interpret"]
    record = next(r for r in ejkernel.list_kernels("attention") if r["platform"] == "pallas_tpu")
    assert record["priority"] == 100 and record["devices"] == ("tpu",) and record["interpretable"]
    assert SPEC.uses_pallas and SPEC.capabilities is CAPABILITIES
    q = jnp.zeros((1, 8, 3, 16))
    with pytest.raises(ValueError, match="num_q_heads"):
        flash_attention(q, jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 8, 2, 16)), interpret=True)
    out, weights = flash_attention(q, q, q, dtype=jnp.float32, interpret=True)
    assert weights is None and out.shape == (1, 8, 3, 16)


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"dtype": jnp.float16}, "dtype float16"),
        ({"softmax_dtype": jnp.bfloat16}, "softmax_dtype"),
        ({"deterministic": False, "dropout_prob": 0.3, "dropout_rng": jax.random.key(3)}, "dropout"),
    ],
)
def test_unsupported_calls_fall_back_to_xla_exactly(extra, reason):
    case = CheckCase("fallback", batch=1, q_len=20, kv_len=30, num_q_heads=2, num_kv_heads=1, head_dim=16, causal=True)
    args = make_inputs(case)
    args.update(extra)
    kernel = _pallas()
    decision = kernel.explain(**args)
    assert decision.chosen.platform == "xla" and any(reason in r for _, r in decision.rejected)
    with pytest.warns(FallbackWarning, match=reason):
        out, _ = kernel(**args)
    ref, _ = xla_attention(**args)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    with pytest.raises(NotImplementedError, match=reason):
        flash_attention(**args, interpret=True)


# --- random configurations --------------------------------------------------------------------------

SHAPES = (  # (batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, v_head_dim)
    (1, 1, 200, 4, 1, 32, 32),
    (2, 77, 131, 4, 2, 64, 32),
    (1, 128, 128, 2, 2, 128, 128),
    (1, 200, 100, 6, 3, 16, 16),
    (2, 256, 300, 2, 1, 32, 64),
    (1, 300, 513, 2, 2, 24, 24),
)
LAYOUTS = (None, "B,q", "B,kv", "B,1", "1,q", "1,kv", "1,1")


@settings(max_examples=examples(1))
@given(
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from(["bfloat16", "float32"]),
    causal=st.booleans(),
    window=st.sampled_from([None, 0, 48, (100, 0), (5, 60)]),
    cap=st.sampled_from([None, 2.5]),
    sinks=st.sampled_from([None, "per_head", "shared"]),
    bias=st.sampled_from(LAYOUTS),
    mask=st.sampled_from(LAYOUTS),
    scale=st.sampled_from([None, 0.2]),
    unsupported=st.sampled_from([None, None, None, "dropout", "float16"]),
    seed=st.integers(0, 2**16),
)
def test_random_configurations(shape, dtype, causal, window, cap, sinks, bias, mask, scale, unsupported, seed):
    b, sq, skv, hq, hkv, d, dv = shape
    case = CheckCase("random", b, sq, skv, hq, hkv, d, dv, causal, window, bias, mask, cap, sinks, scale)
    extra = {}
    if unsupported == "dropout":
        extra = {"deterministic": False, "dropout_prob": 0.2, "dropout_rng": jax.random.key(seed)}
    elif unsupported == "float16":
        dtype = "float16"
    kernel = _pallas()
    args = make_inputs(case, seed)
    args.update(extra)
    features = validate_attention(**args, dtype=dtype)
    claimed = not CAPABILITIES.unsupported_reasons(features)
    decision = kernel.explain(**args, dtype=dtype)
    assert decision.chosen.platform == ("pallas_tpu" if claimed else "xla")
    if claimed:
        _assert_matches_oracle(kernel, case, dtype, seed, extra)
    else:
        cot = jax.random.normal(jax.random.key(seed + 7), (b, sq, hq, dv))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            out, grads = forward_and_grads(kernel, args, dtype, cot)
        ref_out, ref_grads = forward_and_grads(xla_attention, args, dtype, cot)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref_out))
        for k in ref_grads:
            np.testing.assert_array_equal(np.asarray(grads[k]), np.asarray(ref_grads[k]))
