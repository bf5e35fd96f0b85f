"""The Mosaic-GPU (Hopper) flash attention in Mosaic-GPU's CPU interpreter, against the float32 oracle.

The interpreter runs the warp-specialised kernel itself (three warpgroups, the TMA ring and every barrier
simulated, phases checked at deallocation); only its two products are spelled as ``lax.dot_general`` of
the shared-memory tiles instead of ``wgmma`` (``compat``: the interpreter has no transposed or register
wgmma operand). The native Mosaic-GPU backward (dK/dV and dQ kernels, the default at head dims up to 128)
runs in Mosaic-GPU's interpreter the same way as the forward; the Triton backward (the default at D256,
or ``backward="triton"``) in Pallas' interpreter.

The interpreter takes ~10 s per small call, too slow for hypothesis: a few hand-picked cases instead, each
spanning several key blocks with a ragged tail, together covering causal (with empty rows), a window,
non-causal, GQA and MQA, head dims 64 and 128, bfloat16 and float16, forward and gradients. The tolerances
are ``tests/test_triton_attention.py``'s (what the 16-bit dtypes promise against the float32 oracle).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel.check import CheckCase, make_inputs
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.pallas_mosaic_gpu import blocks
from ejkernel.kernels.pallas_mosaic_gpu.backward import FLOAT16_ROW_LIMIT, accumulate_score_gradient
from ejkernel.kernels.pallas_mosaic_gpu.interface import flash_attention, flash_attention_with_lse
from ejkernel.kernels.pallas_mosaic_gpu.spec import SPEC
from parity import assert_matches_oracle

TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3}
# 64-key blocks: more blocks per call at the interpreter's small sizes.
NARROW = blocks.ForwardBlocks(block_q=64, block_k=64, stages=2)
# The same, with causal query blocks launched in index order (``heavy_first`` off).
NARROW_IN_ORDER = blocks.ForwardBlocks(block_q=64, block_k=64, stages=2, heavy_first=False)


# The native backward with 64-wide streamed tiles: several per CTA at these sizes.
NARROW_BACKWARD = blocks.BackwardBlocks(dkv_block_q=64, dkv_stages=2, dq_block_k=64, dq_stages=2)


def _narrow(forward_blocks=NARROW):
    """The forward with the Triton backward (the D256 default), named: the native one has its own cases."""
    return functools.partial(flash_attention, forward_blocks=forward_blocks, backward="triton", interpret=True)


def _native_backward(**kwargs):
    return flash_attention(
        **kwargs, forward_blocks=NARROW, backward="mosaic", backward_blocks=NARROW_BACKWARD, interpret=True
    )


def _registered():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return ejkernel.get_kernel("attention", "mosaic_gpu", interpret=True)


CASES = [
    # Sq < Skv, causal bottom-right, GQA, ragged: 2 CTAs, 5 key blocks, the last one cut.
    (
        CheckCase(
            "causal-gqa", batch=1, q_len=200, kv_len=300, num_q_heads=2, num_kv_heads=1, head_dim=64, causal=True
        ),
        "bfloat16",
    ),
    # Sq > Skv causal: the first 70 rows see no key (out 0, lse -inf, zero gradients); float16.
    (
        CheckCase(
            "causal-empty-rows", batch=1, q_len=200, kv_len=130, num_q_heads=1, num_kv_heads=1, head_dim=64, causal=True
        ),
        "float16",
    ),
    # A two-sided window: blocks skipped on both sides, edge blocks masked, interior ones not.
    (
        CheckCase(
            "window",
            batch=1,
            q_len=256,
            kv_len=256,
            num_q_heads=1,
            num_kv_heads=1,
            head_dim=64,
            sliding_window=(40, 70),
        ),
        "bfloat16",
    ),
    # Soft cap (saturating: scale 0.5 against a cap of 5) and per-head sinks, causal GQA with Sq > Skv: the
    # first rows see no key, so their output is 0 and their lse the sinks' alone. Triton backward at D256.
    (
        CheckCase(
            "softcap-sinks-d256",
            batch=1,
            q_len=150,
            kv_len=130,
            num_q_heads=2,
            num_kv_heads=1,
            head_dim=256,
            causal=True,
            logits_soft_cap=5.0,
            softmax_scale=0.5,
            sinks="per_head",
        ),
        "bfloat16",
    ),
]


# One causal case runs its query blocks in launch order, the others heavy first (the default).
IN_ORDER = {"causal-empty-rows"}


@pytest.mark.parametrize("case,dtype", CASES, ids=[c.name for c, _ in CASES])
def test_parity_narrow_blocks(case, dtype):
    forward_blocks = NARROW_IN_ORDER if case.name in IN_ORDER else NARROW
    assert_matches_oracle(_narrow(forward_blocks), case, dtype, TOLERANCE[dtype])


def test_heavy_first_reverses_causal_query_blocks_only():
    from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
    from ejkernel.kernels.pallas_mosaic_gpu.tiles import heavy_first

    causal = Plan(1, 512, 512, 512, 512, 1, 1, 64, 0.125, causal=True)
    window = dataclasses.replace(causal, causal=False, window=(64, 0))
    assert [int(heavy_first(causal, i, 4, True)) for i in range(4)] == [3, 2, 1, 0]
    assert [int(heavy_first(causal, i, 4, False)) for i in range(4)] == [0, 1, 2, 3]
    assert [int(heavy_first(window, i, 4, True)) for i in range(4)] == [0, 1, 2, 3]


NATIVE_BACKWARD_CASES = [
    # Causal GQA (the group summed inside the dK/dV kernel): 2 dQ CTAs of 128 rows, 3 dK/dV CTAs of 128
    # keys, 64-wide streamed tiles, both sequences ragged.
    (
        CheckCase(
            "causal-gqa", batch=1, q_len=200, kv_len=300, num_q_heads=2, num_kv_heads=1, head_dim=64, causal=True
        ),
        "bfloat16",
    ),
    # A window with Sq > Skv: the first 40 rows see no key (zero dQ), tiles skipped on both sides; float16
    # (the dS products' row scaling).
    (
        CheckCase(
            "window-empty-rows",
            batch=1,
            q_len=260,
            kv_len=190,
            num_q_heads=1,
            num_kv_heads=1,
            head_dim=64,
            sliding_window=(40, 30),
        ),
        "float16",
    ),
    # Soft cap and shared sinks through the native backward (the cap's gradient in both kernels), float16,
    # non-causal GQA, ragged.
    (
        CheckCase(
            "softcap-sinks",
            batch=1,
            q_len=140,
            kv_len=200,
            num_q_heads=2,
            num_kv_heads=1,
            head_dim=64,
            logits_soft_cap=5.0,
            softmax_scale=0.5,
            sinks="shared",
        ),
        "float16",
    ),
    # Non-causal MQA at D=128, three query heads per kv head.
    (
        CheckCase("plain-mqa-d128", batch=1, q_len=150, kv_len=190, num_q_heads=3, num_kv_heads=1, head_dim=128),
        "float16",
    ),
]


# The interpreter takes about a minute per case: the CI profile runs the first three (bf16 GQA, float16 with
# empty rows, soft cap with sinks), the thorough profile every case.
if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "thorough":
    NATIVE_BACKWARD_CASES = NATIVE_BACKWARD_CASES[:3]


@pytest.mark.parametrize("case,dtype", NATIVE_BACKWARD_CASES, ids=[c.name for c, _ in NATIVE_BACKWARD_CASES])
def test_native_backward_parity(case, dtype):
    assert_matches_oracle(_native_backward, case, dtype, TOLERANCE[dtype])


def test_float16_score_gradient_rows_past_the_range_are_scaled():
    """A dS row far past float16's range keeps float16's relative accuracy (as float32 operands would);
    a row within it is cast unscaled (interpret path: the same arithmetic as the device's)."""
    key_ds, key_b = jax.random.split(jax.random.key(3))
    ds = jax.random.normal(key_ds, (64, 64), jnp.float32) * jnp.array([1e6] * 32 + [1.0] * 32)[:, None]
    b = jax.random.normal(key_b, (64, 64), jnp.float32).astype(jnp.float16)
    acc = jnp.ones((64, 64), jnp.float32)
    got = accumulate_score_gradient(acc, ds, b, interpret=True)
    want = acc + ds @ b.astype(jnp.float32)
    assert float(jnp.max(jnp.abs(ds[:32]))) > 2 * FLOAT16_ROW_LIMIT
    assert bool(jnp.all(jnp.isfinite(got)))
    rel = jnp.max(jnp.abs(got - want), axis=1) / jnp.max(jnp.abs(want), axis=1)
    assert float(jnp.max(rel)) < 5e-3
    unscaled = acc[32:] + ds[32:].astype(jnp.float16).astype(jnp.float32) @ b.astype(jnp.float32)
    assert float(jnp.max(jnp.abs(got[32:] - unscaled))) < 1e-4


def test_backward_choice_is_checked():
    case = CheckCase("choice", batch=1, q_len=128, kv_len=128, num_q_heads=1, num_kv_heads=1, head_dim=64)
    args = make_inputs(case)
    with pytest.raises(ValueError, match="backward must be one of"):
        flash_attention(**args, dtype="bfloat16", backward="cudnn", interpret=True)
    with pytest.raises(TypeError, match="BackwardBlocks"):
        flash_attention(**args, dtype="bfloat16", backward="mosaic", backward_blocks=object(), interpret=True)
    big = make_inputs(CheckCase("d256", batch=1, q_len=128, kv_len=128, num_q_heads=1, num_kv_heads=1, head_dim=256))
    with pytest.raises(NotImplementedError, match="up to 128"):
        flash_attention(**big, dtype="bfloat16", backward="mosaic", interpret=True)


@pytest.mark.parametrize("head_dim, backward", [(64, "mosaic"), (96, "mosaic"), (128, "mosaic"), (256, "triton")])
def test_the_default_backward_is_native_where_it_serves_the_head_dim(head_dim, backward):
    from ejkernel.kernels.pallas_mosaic_gpu.interface import plan_for

    sds = jax.ShapeDtypeStruct((1, 64, 1, head_dim), jnp.bfloat16)
    f = ejkernel.explain(sds, sds, sds).features
    assert plan_for(f, None, None, interpret=True)[1].backward_kernels == backward
    assert plan_for(f, None, None, interpret=True, backward="triton")[1].backward_kernels == "triton"


def test_parity_through_the_registry_default_blocks():
    """Non-causal MQA at D=128 with the heuristic's 128-key blocks (two, the second ragged), float16."""
    case = CheckCase("plain-mqa-d128", batch=1, q_len=100, kv_len=190, num_q_heads=2, num_kv_heads=1, head_dim=128)
    kernel = _registered()
    assert kernel.explain(**make_inputs(case), dtype="float16").chosen.platform == "mosaic_gpu"
    assert_matches_oracle(kernel, case, "float16", TOLERANCE["float16"])


def test_lse_is_natural_and_minus_inf_for_empty_rows():
    case = CheckCase("lse", batch=1, q_len=80, kv_len=40, num_q_heads=1, num_kv_heads=1, head_dim=64, causal=True)
    args = make_inputs(case)
    out, lse = flash_attention_with_lse(**args, dtype="bfloat16", interpret=True)
    _, want = ejkernel.get_kernel("attention_with_lse", "xla")(**args, dtype="bfloat16")
    assert lse.shape == (1, 80, 1) and lse.dtype == jnp.float32
    assert bool(jnp.all(jnp.isneginf(lse[0, :40]))) and bool(jnp.all(out[0, :40] == 0))
    assert bool(jnp.all(jnp.isneginf(want[0, :40])))
    assert float(jnp.max(jnp.abs(lse[0, 40:] - want[0, 40:]))) < 2e-2


def _decide(**overrides):
    case = CheckCase("cap", batch=1, q_len=64, kv_len=64, num_q_heads=2, num_kv_heads=1, head_dim=64)
    args = make_inputs(case)
    args.update(overrides.pop("args", {}), **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        return ejkernel.get_kernel("attention", interpret=True).explain(**args)


def test_served_calls_pick_mosaic_gpu_and_the_rest_go_elsewhere():
    """With ``interpret=True`` every Pallas backend can run here, so "auto" ranks mosaic_gpu (105) first; a
    feature it does not declare hands the call on before tracing (on a Hopper GPU: to triton)."""
    assert SPEC.priority == 105
    assert _decide(dtype="bfloat16", causal=True).chosen.platform == "mosaic_gpu"
    sinks = {"softmax_aux": jnp.zeros((2,), jnp.float32)}
    assert _decide(dtype="bfloat16", logits_soft_cap=5.0, args=sinks).chosen.platform == "mosaic_gpu"
    ids = jnp.zeros((1, 64), jnp.int32)
    packed = {"q_segment_ids": ids, "kv_segment_ids": ids, "kv_lengths": jnp.array([40], jnp.int32)}
    assert _decide(dtype="bfloat16", causal=True, args=packed).chosen.platform == "mosaic_gpu"
    bias = jnp.zeros((1, 2, 64, 64), jnp.float32)
    for overrides, reason in [
        ({"dtype": "bfloat16", "args": {"bias": bias}}, "bias"),
        ({"dtype": "float32"}, "dtype float32"),
        ({"dtype": "bfloat16", "args": {"query": jnp.zeros((1, 1, 2, 64), jnp.float32)}}, "decoding"),
    ]:
        decision = _decide(**overrides)
        assert decision.chosen.platform not in ("mosaic_gpu", "xla"), str(decision)
        assert any(label == "mosaic_gpu" and reason in why for label, why in decision.rejected), str(decision)


def test_named_platform_falls_back_with_a_warning_that_says_why():
    case = CheckCase("bias", batch=1, q_len=64, kv_len=64, num_q_heads=2, num_kv_heads=1, head_dim=64, bias_shape="1,q")
    args = make_inputs(case)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, _ = ejkernel.attention(**args, dtype="bfloat16", platform="mosaic_gpu", interpret=True)
    messages = [str(w.message) for w in record if issubclass(w.category, FallbackWarning)]
    # Its declared fallback (``falls_back_to``) is Triton, then XLA: Triton serves a bias.
    assert len(messages) == 1 and "triton serves this call" in messages[0] and "bias" in messages[0], messages
    want, _ = ejkernel.attention(**args, dtype="bfloat16", platform="triton", interpret=True)
    assert bool(jnp.all(out == want))


def test_not_available_without_a_hopper_gpu():
    assert "GPU" in (SPEC.available() or "") or "compute capability" in (SPEC.available() or "")
    assert SPEC.hardware_reason("cpu", interpret=False) is not None
    assert SPEC.hardware_reason("cpu", interpret=True) is None


def test_entry_point_refuses_what_it_does_not_serve():
    case = CheckCase("dv", batch=1, q_len=128, kv_len=128, num_q_heads=1, num_kv_heads=1, head_dim=64, v_head_dim=32)
    with pytest.raises(NotImplementedError, match="value head_dim"):
        flash_attention(**make_inputs(case), dtype="bfloat16", interpret=True)


def test_block_heuristic_fits_shared_memory():
    for d in blocks.HEAD_DIMS:
        c = blocks.choose_forward_blocks(d, 4096)
        assert blocks.smem_bytes(d, 2, c) <= blocks.SMEM_LIMIT, (d, c)
    assert blocks.choose_forward_blocks(128, 50).block_k == 64
    assert blocks.padded_head_dim(96) == 128
    with pytest.raises(ValueError, match="block_k"):
        blocks.ForwardBlocks(block_k=96)
    for d in blocks.NATIVE_BACKWARD_HEAD_DIMS:
        c = blocks.choose_backward_blocks(d)
        assert blocks.dkv_smem_bytes(d, 2, c) <= blocks.SMEM_LIMIT, (d, c)
        assert blocks.dq_smem_bytes(d, 2, c) <= blocks.SMEM_LIMIT, (d, c)
    with pytest.raises(ValueError, match="dq_block_k"):
        blocks.BackwardBlocks(dq_block_k=96)


def test_jit_of_the_registered_kernel():
    case = CheckCase("jit", batch=1, q_len=128, kv_len=128, num_q_heads=1, num_kv_heads=1, head_dim=64, causal=True)
    args = make_inputs(case)
    kernel = _registered()
    q, k, v = args["query"], args["key"], args["value"]
    out = jax.jit(lambda q, k, v: kernel(q, k, v, causal=True, dtype="bfloat16")[0])(q, k, v)
    want = ejkernel.attention(q, k, v, causal=True, dtype="bfloat16", platform="xla")[0]
    assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - want.astype(jnp.float32)))) < 2e-2


PACKING_CASES = [
    # Packed causal GQA rows, 3 documents of random lengths and a padding tail, Sq == Skv (one id array):
    # spans cut both the CTA's and each consumer's ranges, documents cross the 64-row blocks; float16.
    (
        CheckCase("packed-causal-gqa", batch=2, q_len=200, kv_len=200, num_q_heads=2, num_kv_heads=1, head_dim=64,
                  causal=True, packed_docs=3),
        "float16",
    ),
    # Segment ids with kv_lengths and Sq != Skv, non-causal, soft cap: the ids and the length both end
    # ranges; bfloat16.
    (
        CheckCase("packed+lengths", batch=2, q_len=200, kv_len=330, num_q_heads=1, num_kv_heads=1, head_dim=64,
                  packed_docs=3, kv_lengths=True, logits_soft_cap=5.0),
        "bfloat16",
    ),
    # Key lengths alone, causal GQA (Sq < Skv): the ranges end at each row's length.
    (
        CheckCase("lengths-causal", batch=2, q_len=200, kv_len=300, num_q_heads=2, num_kv_heads=1, head_dim=64,
                  causal=True, kv_lengths=True),
        "float16",
    ),
]


# About a minute each in the interpreter: the CI profile runs the first two (segment ids with and without key
# lengths), the thorough profile every case.
if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "thorough":
    PACKING_CASES = PACKING_CASES[:2]


def _narrow_native(**kwargs):
    return flash_attention(**kwargs, forward_blocks=NARROW, backward_blocks=NARROW_BACKWARD, interpret=True)


@pytest.mark.parametrize("case,dtype", PACKING_CASES, ids=[c.name for c, _ in PACKING_CASES])
def test_packing_parity_native_backward(case, dtype):
    """Segment ids and key lengths, forward and the native backward, against the oracle (dense mask)."""
    assert_matches_oracle(_narrow_native, case, dtype, TOLERANCE[dtype])


PERSISTENT_CASES = [
    # Causal GQA over two rows: 2 x 2 heads x 3 query blocks = 12 items on 5 CTAs (two or three each, in the
    # ring's continued phases); ragged keys.
    (CheckCase("causal-gqa-b2", batch=2, q_len=300, kv_len=260, num_q_heads=2, num_kv_heads=1, head_dim=64,
               causal=True), 5),
    # Segment ids with key lengths: the ids' rings continue across items too; 3 CTAs for 4 items.
    (CheckCase("packed+lengths", batch=2, q_len=200, kv_len=200, num_q_heads=1, num_kv_heads=1, head_dim=64,
               causal=True, packed_docs=3, kv_lengths=True), 3),
    # More CTAs than items: the spare ones take none.
    (CheckCase("window-spare-ctas", batch=1, q_len=256, kv_len=256, num_q_heads=1, num_kv_heads=1, head_dim=64,
               sliding_window=(40, 70)), 4),
]
if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "thorough":  # the CI profile: the packed case (~12 s)
    PERSISTENT_CASES = PERSISTENT_CASES[1:2]


@pytest.mark.parametrize("case,ctas", PERSISTENT_CASES, ids=[c.name for c, _ in PERSISTENT_CASES])
def test_persistent_forward_equals_the_grid_forward(case, ctas):
    """CTAs looping over the (batch, head, query block) items compute each item as the grid's CTA does:
    output and lse are bitwise those of the grid over the items (whose parity the cases above test)."""
    args = make_inputs(case, seed=7)
    persistent = dataclasses.replace(NARROW, persistent_ctas=ctas)
    got = flash_attention_with_lse(**args, dtype="bfloat16", forward_blocks=persistent, interpret=True)
    want = flash_attention_with_lse(**args, dtype="bfloat16", forward_blocks=NARROW, interpret=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def test_persistent_ctas_must_not_be_negative():
    with pytest.raises(ValueError, match="persistent_ctas"):
        blocks.ForwardBlocks(persistent_ctas=-1)


@pytest.mark.infs_by_design("its inputs hold Inf and NaN on purpose")
def test_keys_no_query_may_see_never_influence_anything():
    """NaN and Inf in K and V past kv_lengths and in a segment no query has: output and gradients equal
    the call's on the same keys zeroed, and those keys' dK and dV are 0."""
    b, s, h, d = 1, 200, 1, 64
    q_ids = np.repeat(np.arange(2), 100)[None].astype(np.int32)
    kv_ids = q_ids.copy()
    kv_ids[0, 30:60] = 5  # a segment no query has
    lengths = np.array([170], np.int32)
    hidden = jnp.asarray((kv_ids != q_ids) | (np.arange(s)[None] >= lengths[:, None]))[:, :, None, None]
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float16) for _ in range(3))
    cot = jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float32)
    extras = {"q_segment_ids": jnp.asarray(q_ids), "kv_segment_ids": jnp.asarray(kv_ids),
              "kv_lengths": jnp.asarray(lengths), "causal": True, "dtype": "float16"}

    def grads(k, v):
        def loss(q, k, v):
            return jnp.sum(_narrow_native(query=q, key=k, value=v, **extras)[0].astype(jnp.float32) * cot)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    want, want_g = grads(*(jnp.where(hidden, 0, x) for x in (k, v)))
    got, got_g = grads(jnp.where(hidden, jnp.asarray(np.nan, k.dtype), k), jnp.where(hidden, jnp.asarray(np.inf, v.dtype), v))
    assert bool(jnp.isfinite(got)) and float(got) == float(want)
    for g, w in zip(got_g, want_g, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    for g in got_g[1:]:
        assert bool(jnp.all(jnp.where(hidden, g, 0) == 0))
