"""The Triton kernel's decoding forward (GQA group folded into the query rows, keys split over programs).

Same oracle and tolerances as ``test_triton_attention``: forward and gradients (the backward is the ordinary
kernels') against the float32 XLA reference, in interpret mode on the CPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from ejkernel.check import CheckCase, make_inputs, relative_error
from ejkernel.kernels.pallas_triton.blocks import (
    DECODE_MAX_ROWS,
    MIN_BLOCKS_PER_SPLIT,
    BlockSizes,
    PassBlocks,
    decode_splits,
)
from ejkernel.kernels.pallas_triton.interface import decode_plan, flash_attention, plan_for
from ejkernel.kernels.xla.reference import attention as xla_attention
from ejkernel.ops.attention.validation import validate_attention
from test_triton_attention import _assert_matches_oracle

# Key blocks of 16 so that a few hundred keys make many blocks to split.
DECODE = BlockSizes(PassBlocks(16, 16), PassBlocks(16, 16), PassBlocks(16, 16))


def _with_splits(splits):
    config = dataclasses.replace(DECODE, kv_splits=splits)

    def fn(**kwargs):
        return flash_attention(**kwargs, block_sizes=config, interpret=True)

    return fn


def _plan(case, splits, dtype="float32"):
    f = validate_attention(**make_inputs(case), dtype=dtype)
    p, c = plan_for(f, dataclasses.replace(DECODE, kv_splits=splits), interpret=True)
    return decode_plan(f, p, c)


CASES = [
    CheckCase("gqa4-sq1", batch=2, q_len=1, kv_len=300, num_q_heads=8, num_kv_heads=2, head_dim=64),
    CheckCase("gqa2-sq3-causal", batch=2, q_len=3, kv_len=250, num_q_heads=4, num_kv_heads=2, head_dim=32, causal=True),
    CheckCase("mqa-sq5-window", batch=1, q_len=5, kv_len=200, num_q_heads=4, num_kv_heads=1, head_dim=32,
              causal=True, sliding_window=(50, 0)),
    CheckCase("mha-split-softcap", batch=2, q_len=1, kv_len=130, num_q_heads=3, num_kv_heads=3, head_dim=16,
              logits_soft_cap=3.0, softmax_scale=0.4),
    CheckCase("sinks-per-head", batch=2, q_len=2, kv_len=300, num_q_heads=8, num_kv_heads=2, head_dim=32,
              sinks="per_head", causal=True),
    CheckCase("shared-sinks-dv", batch=1, q_len=1, kv_len=180, num_q_heads=6, num_kv_heads=3, head_dim=24,
              v_head_dim=40, sinks="shared"),
    # A padding mask per batch (the batched-decoding case), a per-query-head bias, a per-kv-head mask.
    CheckCase("mask-B,1", batch=2, q_len=1, kv_len=300, num_q_heads=8, num_kv_heads=2, head_dim=32, mask_shape="B,1"),
    CheckCase("bias-B,q+mask-1,kv", batch=2, q_len=3, kv_len=200, num_q_heads=4, num_kv_heads=2, head_dim=32,
              bias_shape="B,q", mask_shape="1,kv", causal=True, sinks="shared"),
    CheckCase("bias-1,kv+mask-B,q", batch=1, q_len=2, kv_len=150, num_q_heads=6, num_kv_heads=3, head_dim=16,
              bias_shape="1,kv", mask_shape="B,q", logits_soft_cap=2.0),
    CheckCase("bias-B,1", batch=2, q_len=1, kv_len=100, num_q_heads=4, num_kv_heads=1, head_dim=16, bias_shape="B,1"),
    # A window narrower than a split: most splits hold no allowed key and must weigh nothing.
    CheckCase("empty-splits", batch=1, q_len=1, kv_len=320, num_q_heads=4, num_kv_heads=2, head_dim=16,
              sliding_window=(20, 0)),
]


# Every case in float32; bfloat16 (its rounding, not new code paths) on two, to keep CI's interpret time down.
@pytest.mark.parametrize(
    "case, dtype",
    [(c, "float32") for c in CASES] + [(CASES[0], "bfloat16"), (CASES[4], "bfloat16")],
    ids=lambda x: getattr(x, "name", x),
)
def test_decoding_matches_the_oracle(case, dtype):
    plan = _plan(case, 4, dtype)
    assert plan is not None and plan[0].kv_splits == 4 and plan[0].pack == case.num_q_heads // case.num_kv_heads
    _assert_matches_oracle(_with_splits(4), case, dtype)


def test_decoding_under_jax_enable_x64():
    """The packed rows' positions, the split ranges and the merge keep their dtypes with x64 on."""
    with jax.enable_x64(True):
        _assert_matches_oracle(_with_splits(4), CASES[7], "float32")


def test_one_split_and_automatic_splits():
    case = CASES[0]
    _assert_matches_oracle(_with_splits(1), case, "float32")
    _assert_matches_oracle(_with_splits(None), case, "float32")
    assert _plan(case, None)[0].kv_splits == decode_splits(2 * 2, 304 // 16)


def test_which_calls_decode():
    base = CASES[0]
    assert _plan(base, None) is not None
    too_many_rows = dataclasses.replace(base, q_len=DECODE_MAX_ROWS // 4 + 1)
    assert _plan(too_many_rows, None) is None
    assert _plan(dataclasses.replace(base, bias_shape="B,q"), None)[0].bias_layout == ("B", "kv")
    assert _plan(dataclasses.replace(base, mask_shape="1,1"), None)[0].mask_layout == ("1", "1")
    mha_short = CheckCase("mha", batch=1, q_len=1, kv_len=40, num_q_heads=2, num_kv_heads=2, head_dim=16)
    assert _plan(mha_short, None) is None  # nothing to fold, too few key blocks to split


def test_decode_splits_fill_the_device_and_keep_blocks_per_split():
    assert decode_splits(64, 2048) == 1  # B8 x Hkv8: enough programs already
    assert decode_splits(8, 2048) == 8  # B1 x Hkv8: 64 programs
    assert decode_splits(4, 3 * MIN_BLOCKS_PER_SPLIT) == 3
    assert decode_splits(1, 10**6) == 64


def test_a_single_key():
    """One key: every weight is 1, so dQ and dK are exactly 0 and the oracle's are rounding noise (~1e-7),
    which a relative error cannot compare; they are checked against 0 instead."""
    case = CheckCase("one-key", batch=2, q_len=1, kv_len=1, num_q_heads=4, num_kv_heads=1, head_dim=16)
    args = make_inputs(case, 3)
    cot = jax.random.normal(jax.random.key(9), (2, 1, 4, 16))

    def loss(q, k, v):
        out = _with_splits(None)(query=q, key=k, value=v, dtype=jnp.float32)[0]
        return jnp.sum(out * cot), out

    (_, out), (dq, dk, dv) = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        args["query"], args["key"], args["value"])
    np.testing.assert_allclose(out, jnp.broadcast_to(args["value"], out.shape), rtol=1e-6)
    np.testing.assert_allclose(dv, cot.sum(2, keepdims=True), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(dq))) < 1e-5 and float(jnp.max(jnp.abs(dk))) < 1e-5


def test_a_lone_key_beside_sinks():
    """One key and sinks (or two keys, one at p = 0.93): dS = p (dP - delta) with p near 1 cancels ~12x, and delta = rowsum(dO * O) comes from
    the bf16 output (FlashAttention-2's preprocessing), so bf16 gradients are up to ~3 % off the float32
    oracle there, 4-5x the XLA reference's own bf16 error (docs/triton.rst, precision). Exact in float32."""
    case = CheckCase("lone-key", batch=1, q_len=1, kv_len=1, num_q_heads=2, num_kv_heads=2, head_dim=16,
                     bias_shape="B,q", sinks="per_head")
    _assert_matches_oracle(_with_splits(1), case, "float32", 178)


@settings(max_examples=examples(1))
@given(
    batch=st.integers(1, 2),
    q_len=st.integers(1, 4),
    kv_len=st.integers(1, 260),
    heads=st.sampled_from([(4, 1), (4, 2), (6, 3), (2, 2)]),
    causal=st.booleans(),
    window=st.sampled_from([None, 8, (30, 0)]),
    sinks=st.sampled_from([None, "per_head"]),
    bias=st.sampled_from([None, "B,q", "1,kv", "1,1"]),
    mask=st.sampled_from([None, "B,1", "1,q", "B,kv"]),
    splits=st.integers(1, 6),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_random_decoding_calls(batch, q_len, kv_len, heads, causal, window, sinks, bias, mask, splits, dtype, seed):
    if dtype != "float32":  # few keys, one taking ~all the weight: test_a_lone_key_beside_sinks
        kv_len = max(kv_len, 16)
    case = CheckCase("random-decode", batch, q_len, kv_len, heads[0], heads[1], 16, causal=causal,
                     sliding_window=window, sinks=sinks, bias_shape=bias, mask_shape=mask)
    _assert_matches_oracle(_with_splits(splits), case, dtype, seed)


@pytest.mark.parametrize("features", [{}, {"mask": (2, 1), "bias": (1, 8)}, {"sinks": True, "causal": True}],
                         ids=["plain", "mask+bias", "sinks"])
def test_decoding_lowers_for_cuda_on_cpu(features):
    """The packed, split forward (and the ordinary backward) lower through Pallas' Triton backend."""
    spec = jax.ShapeDtypeStruct
    b, skv, hq, hkv, d = 2, 5000, 8, 2, 128
    q, k, v = spec((b, 1, hq, d), jnp.bfloat16), spec((b, skv, hkv, d), jnp.bfloat16), spec((b, skv, hkv, d), jnp.bfloat16)
    extra = {}
    if "mask" in features:
        extra["attention_mask"] = spec((*features["mask"], 1, skv), jnp.bool_)
        extra["bias"] = spec((*features["bias"], 1, skv), jnp.bfloat16)
    if features.get("sinks"):
        extra["softmax_aux"] = spec((hq, 2), jnp.float32)
    causal = features.get("causal", False)
    config = dataclasses.replace(DECODE, kv_splits=4)

    def loss(q, k, v, extra):
        return flash_attention(q, k, v, **extra, causal=causal, block_sizes=config)[0].astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v, extra).lower(lowering_platforms=("cuda",)).as_text()
    assert "ejk_flash_fwd" in text and "ejk_flash_dkv" in text and "ejk_flash_dq" in text


def test_key_lengths_across_key_splits_ignore_the_cache_past_them():
    """``kv_lengths`` on the split decoding forward: splits wholly past a row's length are empty (merged as
    such), and NaN/Inf past the length reach nothing."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 1, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 200, 1, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 200, 1, 16)), jnp.float32)
    lengths = jnp.array([37, 150])
    blocks = BlockSizes(PassBlocks(16, 16), PassBlocks(16, 16), PassBlocks(16, 16), kv_splits=5)
    k_dirty, v_dirty = k.at[0, 37:].set(jnp.nan), v.at[0, 37:].set(jnp.inf).at[1, 150:].set(jnp.nan)
    with jax.default_matmul_precision("highest"):
        out = flash_attention(q, k_dirty, v_dirty, kv_lengths=lengths, causal=True, dtype=jnp.float32,
                              block_sizes=blocks, interpret=True)[0]
        ref = xla_attention(q, k, v, kv_lengths=lengths, causal=True, dtype=jnp.float32)[0]
    assert relative_error(out, ref) < 1e-5
