"""Block arithmetic, configuration table and CUDA lowering of the Triton flash attention (CPU only).

- ``tiles.key_blocks``/``query_blocks`` (the shared ``masks`` ranges on the plan's sizes, rows mapped to
  positions in the decoding layout) against brute force over ``masks.allowed`` on padded lengths: exactly
  the blocks holding an allowed pair of a real query and a real key are visited, interior blocks need no
  mask (every real query's pairs allowed, no padded key), and the forward's and the dK/dV kernel's views
  visit the same (query block, key block) pairs. Padded query rows are not visited for their own sake: they
  carry a zero cotangent and the backward recomputes their ``p`` as 0 (``flash._kernel_lse``).
- ``jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))`` works on a CPU jaxlib for every config
  class the kernel claims (forward and backward), and rejects a non-power-of-2 block.
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
from ejkernel.kernels.pallas_triton import blocks as configs
from ejkernel.kernels.pallas_triton.blocks import BlockSizes, PassBlocks, choose_block_sizes
from ejkernel.kernels.pallas_triton.forward import forward_call
from ejkernel.kernels.pallas_triton.interface import flash_attention
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.kernels.pallas_triton.tiles import key_blocks, query_blocks
from ejkernel.ops.attention.masks import allowed


def _problem(q_len, kv_len, bq, bk, causal, window, pack, extra_q, extra_k):
    """A plan whose padded lengths are block multiples plus ``extra_*`` blocks of pure padding (a pass's
    blocks can be smaller than the plan's padding multiple); ``q_len`` positions of ``pack`` rows each."""
    def pad(n, block, extra):
        return (-(-n // block) + extra) * block

    return Plan(batch=1, q_len=q_len, kv_len=kv_len, q_len_pad=pad(q_len * pack, bq, extra_q),
                kv_len_pad=pad(kv_len, bk, extra_k), num_q_heads=pack, num_kv_heads=1, head_dim=16,
                v_head_dim=16, softmax_scale=1.0, causal=causal, window=window, pack=pack)


def _tiles(matrix, bq, bk):
    """``[rows, keys]`` as ``[query block, key block, bq, bk]``."""
    nq, nk = matrix.shape[0] // bq, matrix.shape[1] // bk
    return matrix.reshape(nq, bq, nk, bk).transpose(0, 2, 1, 3)


@settings(max_examples=examples(10))  # NumPy only: a hundred draws take seconds
@given(
    q_len=st.integers(1, 150),
    kv_len=st.integers(1, 150),
    bq=st.sampled_from([16, 32]),
    bk=st.sampled_from([16, 32]),
    causal=st.booleans(),
    window=st.none() | st.tuples(st.integers(0, 60), st.integers(0, 60)),
    dense=st.booleans(),
    pack=st.sampled_from([1, 1, 3, 4]),
    extra_q=st.integers(0, 1),
    extra_k=st.integers(0, 1),
)
def test_block_ranges_match_brute_force(q_len, kv_len, bq, bk, causal, window, dense, pack, extra_q, extra_k):
    if pack > 1:  # the decoding layout serves few positions
        q_len = 1 + q_len % 12
    p = _problem(q_len, kv_len, bq, bk, causal, window, pack, extra_q, extra_k)
    row = np.arange(p.q_len_pad)[:, None]
    kj = np.arange(p.kv_len_pad)[None, :]
    real = (row < q_len * pack) & (kj < kv_len)
    ok = real & np.asarray(allowed(row // pack, kj, q_len, kv_len, causal, window))
    nq, nk = p.q_len_pad // bq, p.kv_len_pad // bk
    has = _tiles(ok, bq, bk).any((2, 3))
    # Interior: every pair of a real query with a key is allowed and no key is padding.
    full = _tiles(ok | ((row >= q_len * pack) & (kj < kv_len)), bq, bk).all((2, 3))
    visited_fwd = np.zeros((nq, nk), bool)
    for qb in range(nq):
        lo, ilo, ihi, hi = (int(x) for x in key_blocks(p, jnp.int32(qb * bq), bq, bk, dense))
        assert lo <= ilo <= ihi <= hi and (lo == hi or 0 <= lo and hi <= nk), "a block outside the padding"
        visited_fwd[qb, lo:hi] = True
        assert full[qb, ilo:ihi].all(), "an interior block needs a mask"
        if dense:
            assert ilo == ihi
    np.testing.assert_array_equal(visited_fwd, has, "visited blocks != blocks with an allowed pair")
    if pack > 1:  # the dK/dV kernel runs on the standard layout only
        return
    visited_dkv = np.zeros((nq, nk), bool)
    for kb in range(nk):
        lo, ilo, ihi, hi = (int(x) for x in query_blocks(p, jnp.int32(kb * bk), bk, bq, dense))
        assert lo <= ilo <= ihi <= hi and (lo == hi or 0 <= lo and hi <= nq), "a block outside the padding"
        visited_dkv[lo:hi, kb] = True
        assert full[ilo:ihi, kb].all(), "an interior block needs a mask"
        if dense:
            assert ilo == ihi
    np.testing.assert_array_equal(visited_dkv, visited_fwd, "the two views visit different pairs")


def test_pass_config_rejects_non_power_of_2_and_table_is_consistent():
    with pytest.raises(ValueError, match="power of 2"):
        PassBlocks(48, 64)
    for (d, itemsize), cfg in configs._TABLE.items():
        for p in (cfg.forward, cfg.dkv, cfg.dq):
            assert p.num_warps in (4, 8) and p.num_stages in (2, 3, 4), (d, itemsize, p)
    c = choose_block_sizes(96, 96, 10, 1000, 2)
    assert c.forward.block_q == 16 and c.forward.block_k <= 128
    long_row, short = choose_block_sizes(128, 128, 4096, 4096, 2, causal=True), choose_block_sizes(128, 128, 512, 512, 2, causal=True)
    assert short.forward == PassBlocks(64, 64, 4, 3) and short.dkv == long_row.dkv
    assert long_row.forward == PassBlocks(128, 128, 8, 3)
    assert choose_block_sizes(128, 128, 512, 512, 4, causal=True) == choose_block_sizes(128, 128, 512, 512, 4)  # f32: one row
    dense = choose_block_sizes(128, 128, 4096, 4096, 2, dense_tiles=True)
    assert all(p.block_k <= 64 and p.num_stages <= 2 for p in (dense.forward, dense.dkv, dense.dq))
    wide = choose_block_sizes(256, 256, 4096, 4096, 2, dense_tiles=True)  # D256 + bias/mask: 32-key blocks
    assert all(p.block_q <= 64 and p.block_k <= 32 and p.num_stages <= 2 for p in (wide.forward, wide.dkv, wide.dq))


# One entry per configuration class the kernel claims: head dims (incl. padded 96/192), dtypes, features.
LOWER_CASES = [
    dict(d=64, dtype=jnp.bfloat16),
    dict(d=96, dtype=jnp.bfloat16, causal=True),
    dict(d=128, dtype=jnp.bfloat16, sliding_window=(100, 20)),
    dict(d=192, dtype=jnp.float16, causal=True, sliding_window=64),
    dict(d=256, dtype=jnp.bfloat16, causal=True),
    dict(d=128, dtype=jnp.float32, logits_soft_cap=5.0),
    dict(d=256, dtype=jnp.float32),
    dict(d=128, dv=64, dtype=jnp.bfloat16, bias=(1, 2), mask=(2, 1)),
    dict(d=256, dtype=jnp.bfloat16, bias=(2, 4), mask=(1, 2)),
    dict(d=64, dtype=jnp.bfloat16, sinks=(4, 2), causal=True, hkv=1),
    dict(d=128, dtype=jnp.bfloat16, sinks=(3,), logits_soft_cap=30.0, bias=(1, 1)),
    dict(d=128, dtype=jnp.bfloat16, segments=True, causal=True),  # packed rows: lax.cond skips, scalar loads
    dict(d=64, dtype=jnp.bfloat16, segments=True, kv_lengths=True, bias=(1, 2), sliding_window=(64, 8)),
    dict(d=128, dtype=jnp.bfloat16, kv_lengths=True, causal=True, sq=1),  # the decoding forward, key lengths
]


@pytest.mark.parametrize("case", LOWER_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items() if k != "dtype") + f"-{jnp.dtype(c['dtype']).name}")
def test_lowers_for_cuda_on_cpu(case):
    case = dict(case)
    d, dv, dtype = case.pop("d"), case.pop("dv", None), case.pop("dtype")
    hkv = case.pop("hkv", 2)
    b, sq, skv, hq = 2, case.pop("sq", 1000), 777, 4
    spec = jax.ShapeDtypeStruct
    q, k, v = spec((b, sq, hq, d), dtype), spec((b, skv, hkv, d), dtype), spec((b, skv, hkv, dv or d), dtype)
    extra = {}
    if "bias" in case:
        bb, bh = case.pop("bias")
        extra["bias"] = spec((bb, bh, sq, skv), dtype)
    if "mask" in case:
        mb, mh = case.pop("mask")
        extra["attention_mask"] = spec((mb, mh, sq, skv), jnp.bool_)
    if "sinks" in case:
        extra["softmax_aux"] = spec(case.pop("sinks"), jnp.float32)
    ids = {}
    if case.pop("segments", False):
        ids = {"q_segment_ids": spec((b, sq), jnp.int32), "kv_segment_ids": spec((b, skv), jnp.int32)}
    if case.pop("kv_lengths", False):
        ids["kv_lengths"] = spec((b,), jnp.int32)

    mask = extra.pop("attention_mask", None)

    def loss(q, k, v, extra, mask, ids):
        return flash_attention(q, k, v, mask, **extra, **ids, dtype=dtype, **case)[0].astype(jnp.float32).sum()

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    lowered = jax.jit(grad).trace(q, k, v, extra, mask, ids).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count("ejk_flash_fwd") >= 1 and "ejk_flash_dkv" in text and "ejk_flash_dq" in text


def test_lowering_rejects_non_power_of_2_blocks():
    bad = PassBlocks(32, 32)
    object.__setattr__(bad, "block_q", 48)  # bypass the dataclass check: the lowering must refuse too
    p = Plan(batch=1, q_len=96, kv_len=96, q_len_pad=96, kv_len_pad=96, num_q_heads=1, num_kv_heads=1,
                head_dim=32, v_head_dim=32, softmax_scale=1.0)
    x = jax.ShapeDtypeStruct((1, 96, 1, 32), jnp.bfloat16)
    f = jax.jit(lambda q, k, v: forward_call(p, bad, q, k, v, None, None, None))
    with pytest.raises(Exception, match="power of 2"):
        f.trace(x, x, x).lower(lowering_platforms=("cuda",))


def test_config_override_changes_nothing_but_blocks():
    q = jax.random.normal(jax.random.key(0), (1, 50, 2, 16))
    k = jax.random.normal(jax.random.key(1), (1, 60, 2, 16))
    v = jax.random.normal(jax.random.key(2), (1, 60, 2, 16))
    a = flash_attention(q, k, v, causal=True, dtype=jnp.float32, interpret=True)[0]
    small = BlockSizes(PassBlocks(16, 16), PassBlocks(16, 16), PassBlocks(16, 16))
    c = flash_attention(q, k, v, causal=True, dtype=jnp.float32, block_sizes=small, interpret=True)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5)
    assert dataclasses.is_dataclass(small)
