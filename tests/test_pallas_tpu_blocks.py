"""Block sizes and block skipping of the TPU flash attention, checked against the one mask definition.

Pure Python/NumPy: the skip predicates must be exact (a visited tile holds an allowed pair, a skipped
one holds none, an unmasked one holds only allowed pairs), the dk/dv kernel's per-key-block ranges must
agree with the forward's per-query-block ranges, and the heuristic must respect lanes and VMEM.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from ejkernel.kernels.pallas_tpu import blocks
from ejkernel.ops.attention.masks import allowed

WINDOWS = (None, 0, 5, (40, 0), (0, 40), (7, 130), (300, 300))


def _allowed_grid(q_len, kv_len, causal, window):
    q = np.arange(q_len)[:, None]
    k = np.arange(kv_len)[None, :]
    ok = allowed(q, k, q_len, kv_len, causal, window)
    return np.broadcast_to(np.asarray(ok, bool), (q_len, kv_len))


@settings(max_examples=examples(4))
@given(
    q_len=st.sampled_from([1, 100, 128, 129, 300, 513]),
    kv_len=st.sampled_from([1, 127, 128, 300, 700]),
    block_q=st.sampled_from([128, 256]),
    block_k=st.sampled_from([128, 256, 512]),
    causal=st.booleans(),
    window=st.sampled_from(WINDOWS),
)
def test_skip_predicates_are_exact(q_len, kv_len, block_q, block_k, causal, window):
    window = None if window is None else ((window, window) if isinstance(window, int) else window)
    grid = _allowed_grid(q_len, kv_len, causal, window)
    args = (block_q, block_k, q_len, kv_len, causal, window)
    num_q, num_k = -(-q_len // block_q), -(-kv_len // block_k)
    uniform = blocks.uniform_mask_need(*args, False)
    for qb, kb in itertools.product(range(num_q), range(num_k)):
        tile = grid[qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k]
        visited = bool(blocks.block_visited(qb, kb, *args))
        assert visited == bool(tile.any()), (qb, kb)
        ragged = (kb + 1) * block_k > kv_len
        needs_mask = blocks.block_needs_mask(qb, kb, *args, False)
        if visited and not needs_mask:
            assert tile.all() and not ragged
        if needs_mask is False:
            assert not ragged
        if visited and uniform is not None:  # the kernels' one static branch is every visited tile's
            assert needs_mask == uniform, (qb, kb)
        assert blocks.block_needs_mask(qb, kb, *args, True)  # with an attention_mask every tile is masked
        # The dk/dv kernel walks query blocks per key block: the same set of tiles.
        lo, _, _, hi = blocks.q_block_range(kb, *args)
        assert visited == (lo <= qb < hi)
    assert blocks.uniform_mask_need(*args, True) is True
    assert blocks.count_visited_blocks(q_len, kv_len, block_q, block_k, causal, window) == sum(
        bool(grid[qb * block_q:(qb + 1) * block_q, kb * block_k:(kb + 1) * block_k].any())
        for qb, kb in itertools.product(range(num_q), range(num_k))
    )


def test_plain_grid_is_statically_unmasked():
    """No causal/window and whole key blocks: the kernels compile the mask-free branch only; a ragged
    key block or a causal diagonal needs the per-tile choice."""
    assert blocks.uniform_mask_need(512, 256, 1000, 1024, False, None, False) is False
    assert blocks.uniform_mask_need(512, 256, 1000, 1000, False, None, False) is None
    assert blocks.uniform_mask_need(128, 128, 512, 512, True, None, False) is None


def test_index_maps_clamp_skipped_steps_to_a_visited_block():
    """``clamp_to_visited`` (the K/V and Q index maps) sends every step to a visited block, never out of range."""
    q_len, kv_len, bq, bk, window = 300, 700, 128, 128, (40, 0)
    num_k = -(-kv_len // bk)
    for qb in range(-(-q_len // bq)):
        lo, _, _, hi = blocks.kv_block_range(qb, bq, bk, q_len, kv_len, True, window)
        for kb in range(num_k):
            clamped = int(blocks.clamp_to_visited(kb, lo, hi, num_k))
            assert lo <= clamped < hi and (clamped == kb) == (lo <= kb < hi)


def test_causal_visits_about_half_the_blocks():
    n, b = 8192, 128
    full = blocks.count_visited_blocks(n, n, b, b, False, None)
    causal = blocks.count_visited_blocks(n, n, b, b, True, None)
    assert full == (n // b) ** 2
    assert causal == (n // b) * (n // b + 1) // 2
    assert 0.5 <= causal / full <= 0.51
    local = blocks.count_visited_blocks(n, n, b, b, True, (256, 0))
    assert local <= 4 * (n // b)  # a window visits O(S) tiles


def test_heuristic_lanes_and_vmem():
    for q_len, kv_len, d, itemsize, bias, mask in itertools.product(
        (1, 100, 1000, 8192), (1, 300, 8192), (64, 128, 256, 512), (2, 4), (0, 4), (False, True)
    ):
        bs = blocks.choose_block_sizes(q_len, kv_len, d, d, itemsize, bias, mask)
        for size in (bs.block_q, bs.block_k, bs.block_q_bwd, bs.block_k_bwd):
            assert size % blocks.LANES == 0 and 128 <= size <= 512
        fwd = blocks.vmem_bytes("forward", bs.block_q, bs.block_k, d, d, itemsize, bias, mask)
        bwd = [blocks.vmem_bytes(k, bs.block_q_bwd, bs.block_k_bwd, d, d, itemsize, bias, mask) for k in ("dq", "dkv")]
        smallest = min(bs.block_q, bs.block_k, bs.block_q_bwd, bs.block_k_bwd) == 128
        assert max(fwd, *bwd) <= blocks.VMEM_BUDGET or smallest
    assert blocks.choose_block_sizes(4096, 4096, 128, 128, 2) == blocks.BlockSizes(512, 512, 512, 512)
    # float32 at D=256 with a float32 bias and a mask: the backward tiles shrink to fit the budget.
    assert blocks.choose_block_sizes(4096, 4096, 256, 256, 4, 4, True) == blocks.BlockSizes(512, 512, 256, 512)
    small = blocks.choose_block_sizes(77, 131, 64, 64, 2)
    assert (small.block_q, small.block_k) == (128, 256)


def test_block_sizes_are_validated():
    with pytest.raises(ValueError, match="multiple of 128"):
        blocks.BlockSizes(block_q=100)
    with pytest.raises(ValueError, match="multiple of 128"):
        blocks.BlockSizes(block_k_bwd=0)
    assert blocks.BlockSizes(384, 256, 128, 512).q_multiple == 384
    assert blocks.BlockSizes(384, 256, 128, 512).kv_multiple == 512
