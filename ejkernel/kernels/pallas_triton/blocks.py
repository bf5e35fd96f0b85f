"""Block configurations of the Triton flash attention: a table measured on an H100, looked up by head dim and length range.

Each pass (forward, dK/dV, dQ) has its own ``PassBlocks``. The table's rows are the fastest candidates of
``ejkernel bench sweep`` on the GPU (measurements and shapes in ``benchmarks/NOTES-triton.md``); nothing is
tuned at import or trace time. Blocks are clipped to the (padded) sequence so short sequences use small
tiles.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "PassBlocks", "BlockSizes", "choose_block_sizes", "decode_splits", "next_power_of_2", "padded_head_dim",
    "DECODE_MAX_ROWS",
]


@dataclasses.dataclass(frozen=True)
class PassBlocks:
    """Tile sizes (powers of 2, at least 16) and Triton launch parameters of one kernel."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            b = getattr(self, name)
            if b < 16 or b & (b - 1):
                raise ValueError(f"{name} must be a power of 2 >= 16, got {b}")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """One ``PassBlocks`` per kernel; ``kv_splits`` fixes the decoding forward's key split (``None``: chosen
    by ``decode_splits``)."""

    forward: PassBlocks
    dkv: PassBlocks
    dq: PassBlocks
    kv_splits: int | None = None

    @property
    def q_multiple(self) -> int:
        """Sequences are padded to a multiple of every pass's query block."""
        return max(self.forward.block_q, self.dkv.block_q, self.dq.block_q)

    @property
    def kv_multiple(self) -> int:
        return max(self.forward.block_k, self.dkv.block_k, self.dq.block_k)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def padded_head_dim(d: int) -> int:
    """Triton tiles need power-of-2 sizes and dots need K >= 16: 96 -> 128, 192 -> 256, 8 -> 16."""
    return max(16, next_power_of_2(d))


# (max padded head dim, itemsize) -> BlockSizes: the fastest rows of the sweep on an H100 (bf16, B2 S8192
# H16 D128 / B4 S4096 H16 D64 / B4 S4096 H8 D256, non-causal; benchmarks/NOTES-triton.md).
_TABLE: dict[tuple[int, int], BlockSizes] = {
    (64, 2): BlockSizes(PassBlocks(64, 64, 4, 3), PassBlocks(64, 64, 4, 3), PassBlocks(128, 64, 4, 3)),
    (128, 2): BlockSizes(PassBlocks(128, 128, 8, 3), PassBlocks(32, 64, 4, 3), PassBlocks(128, 128, 8, 2)),
    # D256 backward rows from a later sweep of those passes alone: dK/dV 8 warps, dQ 64x64 2 stages.
    (256, 2): BlockSizes(PassBlocks(64, 64, 4, 3), PassBlocks(32, 64, 8, 3), PassBlocks(64, 64, 4, 2)),
    # float32 tiles take twice the shared memory (and IEEE fp32 dots): smaller tiles.
    (64, 4): BlockSizes(PassBlocks(64, 64, 4, 2), PassBlocks(64, 64, 4, 2), PassBlocks(64, 64, 4, 2)),
    (128, 4): BlockSizes(PassBlocks(64, 32, 4, 2), PassBlocks(32, 64, 4, 2), PassBlocks(64, 32, 4, 2)),
    (256, 4): BlockSizes(PassBlocks(32, 32, 4, 2), PassBlocks(32, 32, 4, 2), PassBlocks(32, 32, 4, 2)),
}

# Short sequences (max(Sq, Skv) <= SHORT_LEN), 2-byte dtypes: the passes whose winner differs from the long
# row above by more than a few percent in the S512/S1024 sweep (NOTES-triton.md). Smaller tiles win where
# a causal mask lets them skip more work; every other pass keeps its long-sequence row.
SHORT_LEN = 1024
_SHORT: dict[tuple[int, bool], dict[str, PassBlocks]] = {
    (64, True): {"dkv": PassBlocks(32, 64, 4, 3), "dq": PassBlocks(64, 32, 4, 3)},
    (128, False): {"dq": PassBlocks(64, 64, 4, 2)},
    (128, True): {"forward": PassBlocks(64, 64, 4, 3), "dq": PassBlocks(64, 64, 4, 2)},
}


def _clip(p: PassBlocks, q_len: int, kv_len: int) -> PassBlocks:
    return dataclasses.replace(
        p,
        block_q=max(16, min(p.block_q, next_power_of_2(q_len))),
        block_k=max(16, min(p.block_k, next_power_of_2(kv_len))),
    )


def _with_dense_tiles(p: PassBlocks, head_dim: int) -> PassBlocks:
    """A bias or mask tile is loaded (and pipelined) beside K/V: fewer stages and narrower key blocks.

    Head dims above 128 take 32-key blocks: on an H200, D256 with a bias and a mask at 64-key blocks asked for
    233472 bytes of shared memory, 1 KiB over the 232448 available (``benchmarks/NOTES-triton.md``).
    """
    block_q = min(p.block_q, 64) if head_dim > 128 else p.block_q
    block_k = min(p.block_k, 32 if head_dim > 128 else 64)
    return dataclasses.replace(p, block_q=block_q, block_k=block_k, num_stages=min(p.num_stages, 2))


def choose_block_sizes(head_dim: int, v_head_dim: int, q_len: int, kv_len: int, itemsize: int,
                  dense_tiles: bool = False, causal: bool = False) -> BlockSizes:
    """The table's row for the padded head dims, element size and length range, clipped to the sequences.

    ``dense_tiles``: the call has a bias or a boolean mask (their tiles need shared memory too).
    ``causal``: selects the short-sequence causal rows (measured with a causal mask).
    """
    d = max(padded_head_dim(head_dim), padded_head_dim(v_head_dim))
    row = next(k for k in (64, 128, 256) if d <= k)
    cfg = _TABLE[(row, 4 if itemsize >= 4 else 2)]
    if itemsize < 4 and max(q_len, kv_len) <= SHORT_LEN:
        cfg = dataclasses.replace(cfg, **_SHORT.get((row, causal), {}))
    passes = (cfg.forward, cfg.dkv, cfg.dq)
    if dense_tiles:
        passes = tuple(_with_dense_tiles(p, d) for p in passes)
    return BlockSizes(*(_clip(p, q_len, kv_len) for p in passes))


# Decoding (``interface.decode_plan``): at most this many query rows (Sq x GQA group) per kv head are
# folded into one query block, and the keys are split until about TARGET_PROGRAMS programs run, keeping at
# least MIN_BLOCKS_PER_SPLIT key blocks per program. Measured on an H100 (decoding, NOTES-triton.md):
# 64 unsplit programs (B8 x Hkv8) already stream K/V at 2.9 TB/s, and splitting them 5 ways was 6 % slower;
# with fewer programs than that, fewer SMs stream, which the split restores (not measured below 64).
DECODE_MAX_ROWS = 64
TARGET_PROGRAMS = 64
MIN_BLOCKS_PER_SPLIT = 8
MAX_SPLITS = 64


def decode_splits(programs: int, kv_blocks: int) -> int:
    """How many key ranges a decoding forward with ``programs`` (batch x kv head) programs splits into."""
    want = -(-TARGET_PROGRAMS // max(programs, 1))
    return max(1, min(want, kv_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
