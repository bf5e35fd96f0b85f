"""Block sizes of the Mosaic-GPU flash attention: a documented heuristic per head dim (``docs/mosaic_gpu.rst``).

One CTA holds ``2 * block_q`` query rows, ``block_q`` per consumer warpgroup (wgmma's M is 64 per
warpgroup), and a producer warpgroup streams ``block_k``-key blocks of K and V into a ring of ``stages``
shared-memory slots. The heuristic keeps the ring two slots deep at least (one being read, one landing) and
everything inside Hopper's 227 KiB of shared memory per block:

=========  =======  =======  ======  ================================================
head dim   block_q  block_k  stages  shared memory (2-byte dtypes)
=========  =======  =======  ======  ================================================
64         64       128      3       Q 16 KiB + K/V 96 KiB
128        64       128      2       Q 32 KiB + K/V 128 KiB
256        64       64       2       Q 64 KiB + K/V 128 KiB
=========  =======  =======  ======  ================================================

``block_k`` is 128 where it fits (fewer, larger wgmmas; jax's own Hopper kernel and tokamax favour it at
D <= 128) and 64 at D = 256. A key sequence of at most 64 keys takes ``block_k = 64``. These are not yet
tuned on the device: ``benchmarks/mosaic_gpu_probe.py`` measures them. The backward runs the Triton
kernels, whose blocks are ``pallas_triton.blocks.choose_block_sizes``'.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ForwardBlocks", "choose_forward_blocks", "padded_head_dim", "smem_bytes", "SMEM_LIMIT", "HEAD_DIMS"]

#: Shared memory a Hopper block may use (227 KiB).
SMEM_LIMIT = 227 * 1024
#: The padded head dims the kernel compiles (multiples of the 64-element, 128-byte swizzle).
HEAD_DIMS = (64, 128, 256)


@dataclasses.dataclass(frozen=True)
class ForwardBlocks:
    """Tile sizes of the forward kernel: ``block_q`` rows per consumer warpgroup, ``block_k`` keys per block,
    ``stages`` K/V slots in shared memory; ``schedule_barrier`` alternates the two consumers' tensor-core use."""

    block_q: int = 64
    block_k: int = 128
    stages: int = 2
    schedule_barrier: bool = True

    def __post_init__(self):
        if self.block_q != 64:
            raise ValueError(f"block_q must be 64 (one wgmma M per warpgroup), got {self.block_q}")
        if self.block_k % 64 or not 64 <= self.block_k <= 256:
            raise ValueError(f"block_k must be 64, 128, 192 or 256, got {self.block_k}")
        if self.stages < 2:
            raise ValueError(f"stages must be at least 2, got {self.stages}")

    @property
    def q_multiple(self) -> int:
        """Query rows per CTA (two consumer warpgroups): the query padding multiple."""
        return 2 * self.block_q


def padded_head_dim(d: int) -> int:
    """The head dim the kernel runs at: the next of ``HEAD_DIMS`` (zeros pad Q, K and V; the output's extra
    columns are dropped)."""
    return next(h for h in HEAD_DIMS if d <= h)


def smem_bytes(head_dim: int, itemsize: int, c: ForwardBlocks) -> int:
    """Shared memory of one CTA: Q (reused for the output) of both consumers, the K/V ring, the lse rows."""
    q = 2 * c.block_q * head_dim * itemsize
    kv = 2 * c.stages * c.block_k * head_dim * itemsize
    return q + kv + 2 * c.block_q * 4


_BY_HEAD_DIM = {64: ForwardBlocks(64, 128, 3), 128: ForwardBlocks(64, 128, 2), 256: ForwardBlocks(64, 64, 2)}


def choose_forward_blocks(head_dim: int, kv_len: int) -> ForwardBlocks:
    """The heuristic's blocks for a padded head dim, narrowed for short key sequences."""
    c = _BY_HEAD_DIM[padded_head_dim(head_dim)]
    if kv_len <= 64:
        c = dataclasses.replace(c, block_k=64)
    return c
