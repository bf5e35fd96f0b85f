"""When the chunked XLA path takes over from the dense one, and with which chunk sizes, per device kind.

Both were measured: on a 2-core CPU (``benchmarks/chunked_cpu.py``) and on an H100
(``benchmarks/chunked_gpu.py``). They differ by two orders of magnitude: a CPU is fastest with small tiles
that stay in cache, while a GPU pays a launch per loop step, so small tiles make the chunked path 4-8x
slower than the dense one there, and tiles of ~10^8 logits make it about as fast.
"""

from __future__ import annotations

import dataclasses

from ejkernel.ops.attention.features import AttentionFeatures

__all__ = ["ChunkPolicy", "policy_for", "dense_score_elements", "input_elements", "default_blocks"]


@dataclasses.dataclass(frozen=True)
class ChunkPolicy:
    """``dense_score_limit``: B*Hq*Sq*Skv from which the chunked path serves ``attention`` (see
    ``spec.dense_is_small``); ``tile_elements``: the most float32 logits one default tile holds (B*Hq*block_q*block_kv);
    ``block_kv``: the default key chunk; ``max_block_q``: the default query chunk before halving."""

    dense_score_limit: int
    tile_elements: int
    block_kv: int
    max_block_q: int


# CPU (B1 H8 D64): from S = 1024 the chunked forward+backward is ~3x faster than dense; 512 x 256 tiles
# (4 MiB of logits at most) were fastest.
CPU = ChunkPolicy(dense_score_limit=1 << 23, tile_elements=1 << 20, block_kv=256, max_block_q=512)
# H100 (bf16, D128): with 2048 x 1024 tiles the chunked path is within 1.1x of dense XLA at B4 S4096 H16
# using 1/6 of its memory; below 2**29 logits (a 2 GiB float32 score matrix) chunking costs up to 1.4x
# time for memory an accelerator has. TPUs use the same policy (not measured: TPUs get Pallas kernels).
ACCELERATOR = ChunkPolicy(dense_score_limit=1 << 29, tile_elements=1 << 27, block_kv=1024, max_block_q=2048)


def policy_for(platform: str) -> ChunkPolicy:
    """The policy of a ``registry.current_platform()`` name: ``cpu`` or any accelerator."""
    return CPU if platform == "cpu" else ACCELERATOR


def dense_score_elements(f: AttentionFeatures) -> int:
    return f.batch * f.num_q_heads * f.q_len * f.kv_len


def input_elements(f: AttentionFeatures) -> int:
    """Elements of K and V: a dense score matrix smaller than these (decoding) is never worth chunking."""
    return f.batch * f.kv_len * f.num_kv_heads * (f.head_dim + f.v_head_dim)


def default_blocks(f: AttentionFeatures, policy: ChunkPolicy) -> tuple[int, int]:
    """``(block_q, block_kv)``: the policy's key chunk; the query chunk halved (down to 16) until one tile
    holds at most ``tile_elements`` logits, so many heads or a large batch keep tiles small."""
    block_kv = min(policy.block_kv, f.kv_len)
    block_q = policy.max_block_q
    while block_q > 16 and f.batch * f.num_q_heads * block_q * block_kv > policy.tile_elements:
        block_q //= 2
    return min(block_q, f.q_len), block_kv
