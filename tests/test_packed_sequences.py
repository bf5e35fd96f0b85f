"""Packed and variable-length sequences (``q_segment_ids``/``kv_segment_ids``, ``kv_lengths``) on every backend.

Parity: each backend given the ids/lengths against the XLA reference given the equivalent dense mask
(``strategies.packing_mask``), forward and gradients, in float32 at highest precision. Rows draw several
segments, segments crossing block boundaries, empty segments, padding runs and all-padding rows; GQA,
Sq != Skv, causal/window, a user mask, a bias, sinks and the soft cap join in. Small blocks make every
sequence span several of them, so skipped, fully allowed and masked blocks all occur. A second test fills
every key no query may see with NaN and Inf: nothing may change. The shared block rules are tested on the
host against brute force.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from ejkernel.check import relative_error
from ejkernel.kernels.pallas_tpu.blocks import BlockSizes as TpuBlocks
from ejkernel.kernels.pallas_tpu.interface import flash_attention as tpu_attention
from ejkernel.kernels.pallas_triton.blocks import BlockSizes as TritonBlocks
from ejkernel.kernels.pallas_triton.blocks import PassBlocks
from ejkernel.kernels.pallas_triton.interface import flash_attention as triton_attention
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as xla_attention
from ejkernel.ops.attention import segments
from parity import forward_and_grads
from strategies import invisible_keys, packing, packing_mask, segment_row

PACKING_ARGS = ("q_segment_ids", "kv_segment_ids", "kv_lengths")
# Each pass with its own tile shape, all small: several blocks per sequence.
TRITON_BLOCKS = TritonBlocks(PassBlocks(16, 32), PassBlocks(32, 16), PassBlocks(16, 16))
TPU_BLOCKS = TpuBlocks(128, 128, 128, 128)


def _backends():
    """name -> (attention function taking the reference's arguments, shapes to draw, hypothesis examples)."""
    small = ((2, 40, 56, 4, 2, 16), (2, 33, 33, 2, 2, 8))  # several 16-blocks, ragged tails, GQA, Sq != Skv
    return {
        "xla": (xla_attention, small, examples(0.5)),
        "chunked": (functools.partial(chunked_attention, block_q=16, block_kv=16), small, examples(0.2)),
        "triton": (functools.partial(triton_attention, block_sizes=TRITON_BLOCKS, interpret=True), small, examples(0.3)),
        # 128-blocks (the TPU's least): ~2-3 blocks per sequence, ragged tails.
        "pallas_tpu": (functools.partial(tpu_attention, block_sizes=TPU_BLOCKS, interpret=True),
                       ((2, 200, 300, 4, 2, 16), (1, 260, 260, 2, 2, 8)), examples(0.2)),
    }


BACKENDS = _backends()


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _inputs(shape, seed, with_bias=False, with_mask=False, with_sinks=False):
    b, sq, skv, hq, hkv, d = shape
    rngs = [np.random.default_rng([seed, i]) for i in range(6)]  # distinct streams for q, k, v, ...
    args = {"query": _normal(rngs[0], (b, sq, hq, d)), "key": _normal(rngs[1], (b, skv, hkv, d)),
            "value": _normal(rngs[2], (b, skv, hkv, d))}
    if with_bias:
        args["bias"] = _normal(rngs[3], (1, hkv, sq, skv))
    if with_mask:
        args["attention_mask"] = jnp.asarray(rngs[4].random((b, 1, sq, skv)) < 0.8)
    if with_sinks:
        args["softmax_aux"] = _normal(rngs[5], (hq, 2))
    return args


def _as_dense_mask(args, packed, q_len, kv_len):
    """``args`` with the packing replaced by the equivalent dense mask (intersected with a user mask)."""
    dense = dict(args)
    mask = jnp.asarray(packing_mask(q_len, kv_len, **packed))
    if dense.get("attention_mask") is not None:
        mask = mask & dense["attention_mask"]
    dense["attention_mask"] = mask
    return dense


def _oracle(args, cot):
    with jax.default_matmul_precision("highest"):
        return forward_and_grads(xla_attention, args, jnp.float32, cot)


def _assert_close(out, grads, ref_out, ref_grads, tolerance, what):
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{k}": relative_error(grads[k], ref_grads[k]) for k in ref_grads})
    assert all(e <= tolerance for e in errors.values()), f"{what}: {errors}"


@pytest.mark.parametrize("backend", [
    pytest.param(b, marks=pytest.mark.infs_by_design("chunked_attention also returns the -inf lse of all-padding rows"))
    if b == "chunked" else b for b in sorted(BACKENDS)])
def test_packing_matches_the_reference_with_the_dense_mask(backend):
    fn, shapes, count = BACKENDS[backend]

    @settings(max_examples=count)
    @given(st.data())
    def check(data):
        shape = data.draw(st.sampled_from(shapes), label="shape")
        b, sq, skv = shape[:3]
        packed = data.draw(packing(b, sq, skv), label="packing")
        extra = data.draw(st.fixed_dictionaries({
            "causal": st.booleans(), "sliding_window": st.none() | st.integers(2, 20),
            "logits_soft_cap": st.none() | st.just(3.0),
        }), label="features")
        operands = data.draw(st.fixed_dictionaries({
            "with_bias": st.booleans(), "with_mask": st.booleans(), "with_sinks": st.booleans(),
        }), label="operands")
        seed = data.draw(st.integers(0, 2**20), label="seed")
        args = _inputs(shape, seed, **operands) | extra
        cot = jax.random.normal(jax.random.key(seed), (b, sq, shape[3], shape[5]))
        ref_out, ref_grads = _oracle(_as_dense_mask(args, packed, sq, skv), cot)
        with jax.default_matmul_precision("highest"):
            out, grads = forward_and_grads(fn, args | {k: jnp.asarray(v) for k, v in packed.items()}, jnp.float32, cot)
        _assert_close(out, grads, ref_out, ref_grads, 1e-5, f"{backend} {shape} {extra} {operands}")

    check()


def _poisoned(x, invisible):
    """``x [B, Skv, H, D]`` with the rows of invisible keys set to NaN, +Inf and -Inf in turn."""
    fill = np.where(np.arange(x.shape[1]) % 3 == 0, np.nan, np.where(np.arange(x.shape[1]) % 3 == 1, np.inf, -np.inf))
    bad = jnp.asarray(np.broadcast_to(fill[None, :, None, None], x.shape), x.dtype)
    return jnp.where(jnp.asarray(invisible)[:, :, None, None], bad, x)


def _nan_case(layout, shape):
    """``(shape, packing)``: "packed" (segment ids with a segment no query has, padding, key lengths) or
    "decode" (one query row per head, GQA, a cache filled to different lengths)."""
    if layout == "decode":
        b, _, skv, hq, _, d = shape
        return (b, 1, skv, hq, 1, d), {"kv_lengths": np.array([skv // 2, 3], np.int32)}
    b, sq, skv = shape[:3]
    q_ids = np.zeros((b, sq), np.int32)
    q_ids[0, sq // 2:] = 1
    q_ids[1, : sq // 3] = -1
    kv_ids = np.zeros((b, skv), np.int32)
    kv_ids[0, skv // 3: skv // 2] = 7  # a segment no query has
    kv_ids[0, skv // 2:] = 1
    kv_ids[1, -5:] = -1  # padding
    return shape, {"q_segment_ids": q_ids, "kv_segment_ids": kv_ids,
                   "kv_lengths": np.array([skv - 3, skv // 2], np.int32)}


# The registry never gives a decoding call to the chunked path (its scores are smaller than K/V); the packed
# layout covers the chunked path's kv_lengths.
NAN_CASES = [(b, layout) for b in sorted(BACKENDS) for layout in ("packed", "decode") if (b, layout) != ("chunked", "decode")]


@pytest.mark.infs_by_design("its inputs hold Inf and NaN on purpose")
@pytest.mark.parametrize("backend, layout", NAN_CASES)
def test_keys_no_query_may_see_never_influence_anything(backend, layout):
    """NaN, +Inf and -Inf in K and V past ``kv_lengths``, in a segment no query has, and in padding: the output
    and every gradient are finite and match the reference on clean inputs with the dense mask (dK, dV of
    those keys exactly 0)."""
    fn, shapes, _ = BACKENDS[backend]
    shape, packed = _nan_case(layout, shapes[0])
    b, sq, skv = shape[:3]
    invisible = invisible_keys(sq, skv, **packed)
    assert invisible.any(axis=1).all() and not invisible.all(axis=1).any()
    args = _inputs(shape, 3) | {"causal": True}
    cot = jax.random.normal(jax.random.key(5), (b, sq, shape[3], shape[5]))
    ref_out, ref_grads = _oracle(_as_dense_mask(args, packed, sq, skv), cot)
    dirty = args | {k: jnp.asarray(v) for k, v in packed.items()}
    dirty |= {"key": _poisoned(args["key"], invisible), "value": _poisoned(args["value"], invisible)}
    with jax.default_matmul_precision("highest"):
        out, grads = forward_and_grads(fn, dirty, jnp.float32, cot)
    _assert_close(out, grads, ref_out, ref_grads, 1e-5, f"{backend} {layout}")
    for name in ("key", "value"):
        assert np.all(np.asarray(grads[name])[invisible] == 0)


@settings(max_examples=examples(3.0))
@given(st.data())
def test_block_relation_matches_brute_force(data):
    """``segments.block_ranges``/``block_relation`` classify a tile as brute force does: ``some`` is False only
    where no pair matches, ``every`` only where every pair does."""
    q_len, kv_len = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50))
    block_q, block_k = data.draw(st.sampled_from((1, 4, 16))), data.draw(st.sampled_from((1, 8, 16)))
    q_ids = data.draw(segment_row(q_len))[None]
    kv_ids = data.draw(segment_row(kv_len))[None]
    pairs = packing_mask(q_len, kv_len, q_ids, kv_ids)[0, 0]
    q_lo, q_hi, q_one = (x[0][:, None] for x in segments.block_ranges(q_ids, block_q))
    kv_lo, kv_hi, kv_one = (x[0][None] for x in segments.block_ranges(kv_ids, block_k))
    some, every = segments.block_relation(q_lo, q_hi, q_one, kv_lo, kv_hi, kv_one)
    for i in range(some.shape[0]):
        for j in range(some.shape[1]):
            tile = pairs[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
            assert bool(some[i, j]) or not tile.any()
            assert bool(every[i, j]) == tile.all()  # exact: all pairs match iff one id, the same, no padding
            if q_lo[i, 0] == q_hi[i, 0] and kv_lo[0, j] == kv_hi[0, j]:  # one real id each: skipping is exact
                assert bool(some[i, j]) == tile.any()


@settings(max_examples=examples(3.0))
@given(st.data())
def test_block_spans_hold_every_block_some_pair_may_match_and_narrowing_keeps_them(data):
    """``segments.block_spans`` against brute force: every tile that may hold a matching pair has its column
    block inside its row block's span, and the span starts and ends at such tiles; ``narrow_to_span`` keeps
    exactly the blocks of a loop range that are in the span, the interior inside it."""
    q_len, kv_len = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 50))
    block_q, block_k = data.draw(st.sampled_from((1, 4, 16))), data.draw(st.sampled_from((1, 8, 16)))
    q_ids, kv_ids = data.draw(segment_row(q_len))[None], data.draw(segment_row(kv_len))[None]
    q_ranges, kv_ranges = segments.block_ranges(q_ids, block_q), segments.block_ranges(kv_ids, block_k)
    some, every = segments.block_relation(*(r[:, :, None] for r in q_ranges), *(r[:, None, :] for r in kv_ranges))
    for rows, cols, table, full in ((q_ranges, kv_ranges, some[0], every[0]), (kv_ranges, q_ranges, some[0].T, every[0].T)):
        first, end, whole = (x[0] for x in segments.block_spans(rows, cols))
        for i, row in enumerate(table):
            hits = np.flatnonzero(row)
            if hits.size:
                assert (first[i], end[i]) == (hits[0], hits[-1] + 1)
                assert bool(whole[i]) == bool(full[i, first[i]:end[i]].all())
            else:
                assert first[i] == end[i] == whole[i] == 0
            n = len(row)
            lo, hi = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=2)))
            ilo, ihi = sorted(data.draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2)))
            cut = segments.narrow_to_span((lo, ilo, ihi, hi), first[i], end[i])
            assert cut[0] <= cut[1] <= cut[2] <= cut[3]
            assert set(range(cut[0], cut[3])) == set(range(lo, hi)) & set(range(first[i], end[i]))
            assert set(range(cut[1], cut[2])) <= set(range(ilo, ihi))
            assert not (set(range(lo, hi)) - set(range(cut[0], cut[3]))) & set(hits.tolist())


@settings(max_examples=examples(1.0))
@given(st.data())
def test_visible_kv_ids_marks_exactly_the_keys_no_query_may_see(data):
    q_len, kv_len = data.draw(st.sampled_from((1, 17))), data.draw(st.sampled_from((9, 40)))  # few compiles
    packed = data.draw(packing(2, q_len, kv_len))
    expected = invisible_keys(q_len, kv_len, **packed)
    for xp in (np, jnp):
        ids = segments.visible_kv_ids(*(None if packed.get(k) is None else xp.asarray(packed[k]) for k in PACKING_ARGS),
                                      kv_len)
        np.testing.assert_array_equal(np.asarray(ids) < 0, expected)
        if "kv_segment_ids" in packed:
            kept = ~expected
            np.testing.assert_array_equal(np.asarray(ids)[kept], packed["kv_segment_ids"][kept])
    if q_len == kv_len and "kv_segment_ids" in packed:  # one array for both sides: the O(S) path
        same = packed["kv_segment_ids"]
        for xp in (np, jnp):
            ids = xp.asarray(same)
            got = segments.visible_kv_ids(ids, ids, None if packed.get("kv_lengths") is None
                                          else xp.asarray(packed["kv_lengths"]), kv_len)
            want = segments.visible_kv_ids(ids, xp.asarray(np.array(same)), None if packed.get("kv_lengths") is None
                                           else xp.asarray(packed["kv_lengths"]), kv_len)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


_B, _SQ, _SKV = 2, 5, 7


@pytest.mark.parametrize("bad, error, words", [
    ({"q_segment_ids": np.zeros((_B, _SQ), np.int32)}, ValueError, "q_segment_ids was given without kv_segment_ids"),
    ({"kv_segment_ids": np.zeros((_B, _SKV), np.int32)}, ValueError, "kv_segment_ids was given without q_segment_ids"),
    ({"q_segment_ids": np.zeros((_B, _SKV), np.int32), "kv_segment_ids": np.zeros((_B, _SKV), np.int32)},
     ValueError, "q_segment_ids must have shape"),
    ({"q_segment_ids": np.zeros((_B, _SQ), np.int32), "kv_segment_ids": np.zeros((1, _SKV), np.int32)},
     ValueError, "kv_segment_ids must have shape"),
    ({"q_segment_ids": np.zeros((_B, _SQ), np.float32), "kv_segment_ids": np.zeros((_B, _SKV), np.int32)},
     TypeError, "q_segment_ids must be an integer array"),
    ({"q_segment_ids": np.zeros((_B, _SQ), bool), "kv_segment_ids": np.zeros((_B, _SKV), bool)},
     TypeError, "q_segment_ids must be an integer array"),
    ({"kv_lengths": np.zeros((_B, 1), np.int32)}, ValueError, "kv_lengths must have shape"),
    ({"kv_lengths": np.zeros((_B,), np.float32)}, TypeError, "kv_lengths must be an integer array"),
    ({"kv_lengths": np.array([3, _SKV + 1])}, ValueError, r"kv_lengths must be in \[0, kv_len=7\]"),
    ({"kv_lengths": np.array([-1, 2])}, ValueError, r"kv_lengths must be in \[0, kv_len=7\]"),
])
def test_bad_packing_arguments_name_the_argument(bad, error, words):
    q, k = jnp.zeros((_B, _SQ, 2, 4)), jnp.zeros((_B, _SKV, 2, 4))
    with pytest.raises(error, match=words):
        xla_attention(q, k, k, **bad)


def test_packing_arguments_are_keyword_only_and_traced_lengths_are_clipped():
    """Positionally the seed's sixteen parameters; under ``jit`` a length past ``Skv`` means every key."""
    q, k = jnp.ones((_B, _SQ, 2, 4)), jnp.ones((_B, _SKV, 2, 4))
    with pytest.raises(TypeError):
        xla_attention(q, k, k, None, None, None, True, None, None, None, None, None, None, 0.0, False, None, None)
    run = jax.jit(functools.partial(xla_attention, dtype=jnp.float32))
    clipped = run(q, k, k, kv_lengths=jnp.array([_SKV + 5, -2]))[1]
    np.testing.assert_array_equal(np.asarray(clipped[0] > 0), True)
    np.testing.assert_array_equal(np.asarray(clipped[1]), 0)


def test_the_tpu_kernel_skips_the_tiles_a_packed_batch_rules_out():
    """Eight documents of ragged lengths packed in a row of 1024 (causal), beside a row cut by ``kv_lengths``:
    the forward kernel's own visit counter equals the host-side count of the shared rules, and the packing
    skips most of what causal alone would visit."""
    from ejkernel.kernels.pallas_tpu.flash import visit_counts
    from ejkernel.kernels.pallas_tpu.interface import plan_for
    from ejkernel.ops.attention.validation import validate_attention

    b, s, h, d, block = 2, 1024, 1, 8, 128
    docs = np.repeat(np.arange(8, dtype=np.int32), [100, 160, 90, 130, 150, 128, 140, 126])
    q_ids = np.stack([docs, np.zeros(s, np.int32)])
    lengths = np.array([s, 300], np.int32)
    q = jnp.zeros((b, s, h, d), jnp.float32)
    packed = {"q_segment_ids": jnp.asarray(q_ids), "kv_segment_ids": jnp.asarray(q_ids), "kv_lengths": jnp.asarray(lengths)}
    features = validate_attention(q, q, q, causal=True, dtype=jnp.float32, **packed)
    plan = plan_for(features, TPU_BLOCKS, True)
    ids = (packed["q_segment_ids"], segments.visible_kv_ids(q_ids, q_ids, lengths, s), packed["kv_lengths"])
    counted = np.asarray(visit_counts(plan, q, q, q, ids)).sum(axis=(1, 2))  # [B]
    expected = segments.visited_tiles(s, s, block, block, True, None, q_ids, q_ids, lengths).sum(axis=(1, 2))
    causal_only = segments.visited_tiles(s, s, block, block, True, None, kv_lengths=np.array([s, s])).sum(axis=(1, 2))
    np.testing.assert_array_equal(counted, expected)
    assert causal_only.tolist() == [36, 36]
    # Row 0: the 8 diagonal tiles and the 9 below it whose blocks share a document (worked out by hand from
    # the boundaries 100, 260, 350, 480, 630, 758, 898); row 1: one document, keys 0..299 (3 key blocks).
    assert expected.tolist() == [17, 21]


@pytest.mark.parametrize("causal", [False, True])
def test_triton_documents_aligned_to_the_blocks_take_the_untested_loops(causal):
    """Row 0: three documents of 32 (every Triton block here lies in one document, so its loops run with no
    per-tile test: ``block_spans``' ``whole``); row 1: documents that cut blocks (the tested loops). Both
    against the dense mask, forward and gradients."""
    b, s, hq, hkv, d = 2, 96, 4, 2, 16
    ids = np.stack([np.repeat(np.arange(3), 32), np.repeat(np.arange(4), [20, 30, 25, 21])]).astype(np.int32)
    packed = {"q_segment_ids": ids, "kv_segment_ids": ids}
    for c in (TRITON_BLOCKS.forward, TRITON_BLOCKS.dkv, TRITON_BLOCKS.dq):
        q_ranges, kv_ranges = segments.block_ranges(ids, c.block_q), segments.block_ranges(ids, c.block_k)
        for whole in (segments.block_spans(q_ranges, kv_ranges)[2], segments.block_spans(kv_ranges, q_ranges)[2]):
            assert whole[0].all() and not whole[1].all()
    args = _inputs((b, s, s, hq, hkv, d), seed=11) | {"causal": causal}
    cot = jax.random.normal(jax.random.key(12), (b, s, hq, d))
    ref_out, ref_grads = _oracle(_as_dense_mask(args, packed, s, s), cot)
    fn = functools.partial(triton_attention, block_sizes=TRITON_BLOCKS, interpret=True)
    with jax.default_matmul_precision("highest"):
        out, grads = forward_and_grads(fn, args | {k: jnp.asarray(v) for k, v in packed.items()}, jnp.float32, cot)
    _assert_close(out, grads, ref_out, ref_grads, 1e-5, f"triton aligned documents causal={causal}")
