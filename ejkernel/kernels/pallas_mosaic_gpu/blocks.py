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
tuned on the device: ``benchmarks/mosaic_gpu_probe.py`` measures them.

The backward's blocks: the Triton backward (the default) takes ``pallas_triton.blocks.choose_block_sizes``';
the native one (``backward.py``) takes ``BackwardBlocks`` from ``choose_backward_blocks``. Each of its two
kernels gives each of two consumer warpgroups ``OWNED_ROWS = 64`` rows it keeps (keys in dK/dV, queries in
dQ: wgmma's M) and streams tiles of the other side through a ring. What bounds them is registers, not
shared memory: a dK/dV warpgroup holds dK and dV (``D/2`` float32 registers a thread each) plus the two
``[64, streamed]`` float32 tiles Sᵀ and dPᵀ (``streamed/2`` each); a dQ warpgroup dQ plus S and dP:

=========  =================  ==========  ================  =========  ===============================
head dim   dK/dV: streamed q  stages      dQ: streamed keys  stages     registers a thread (dK/dV, dQ)
=========  =================  ==========  ================  =========  ===============================
64         64                 3           128               2          64 + 64 = 128, 32 + 128 = 160
128        64                 2           128               2          128 + 64 = 192, 64 + 128 = 192
=========  =================  ==========  ================  =========  ===============================

Head dim 256 is not served natively: dK and dV alone would take 256 registers a thread (the limit is 255,
232 after the producer's share), so it keeps the Triton backward.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ForwardBlocks",
    "BackwardBlocks",
    "choose_forward_blocks",
    "choose_backward_blocks",
    "padded_head_dim",
    "smem_bytes",
    "dkv_smem_bytes",
    "dq_smem_bytes",
    "SMEM_LIMIT",
    "HEAD_DIMS",
    "NATIVE_BACKWARD_HEAD_DIMS",
    "OWNED_ROWS",
]

#: Shared memory a Hopper block may use (227 KiB).
SMEM_LIMIT = 227 * 1024
#: The padded head dims the kernel compiles (multiples of the 64-element, 128-byte swizzle).
HEAD_DIMS = (64, 128, 256)
#: The padded head dims the native backward compiles (see the module docstring for 256).
NATIVE_BACKWARD_HEAD_DIMS = (64, 128)
#: Rows a backward consumer warpgroup keeps (one wgmma M).
OWNED_ROWS = 64


@dataclasses.dataclass(frozen=True)
class ForwardBlocks:
    """Tile sizes of the forward kernel: ``block_q`` rows per consumer warpgroup, ``block_k`` keys per block,
    ``stages`` K/V slots in shared memory; ``schedule_barrier`` alternates the two consumers' tensor-core use;
    ``heavy_first`` launches a causal call's last query blocks (the most keys) first (``tiles.heavy_first``);
    ``persistent_ctas`` (0: one CTA per query block) runs that many CTAs, each looping over every
    ``persistent_ctas``-th (batch, head, query block), so that the producer streams the next block's K/V
    while the consumers write the last one's output."""

    block_q: int = 64
    block_k: int = 128
    stages: int = 2
    schedule_barrier: bool = True
    heavy_first: bool = True
    persistent_ctas: int = 0

    def __post_init__(self):
        if self.block_q != 64:
            raise ValueError(f"block_q must be 64 (one wgmma M per warpgroup), got {self.block_q}")
        if self.block_k % 64 or not 64 <= self.block_k <= 256:
            raise ValueError(f"block_k must be 64, 128, 192 or 256, got {self.block_k}")
        if self.stages < 2:
            raise ValueError(f"stages must be at least 2, got {self.stages}")
        if self.persistent_ctas < 0:
            raise ValueError(f"persistent_ctas must be 0 (a grid over the query blocks) or positive, got "
                             f"{self.persistent_ctas}")

    @property
    def q_multiple(self) -> int:
        """Query rows per CTA (two consumer warpgroups): the query padding multiple."""
        return 2 * self.block_q


@dataclasses.dataclass(frozen=True)
class BackwardBlocks:
    """Tile sizes of the native backward. dK/dV: each consumer keeps ``OWNED_ROWS`` keys and streams
    ``dkv_block_q``-query tiles of Q, dO, lse and delta through ``dkv_stages`` slots; dQ: each consumer
    keeps ``OWNED_ROWS`` queries and streams ``dq_block_k``-key tiles of K and V through ``dq_stages``;
    ``dq_heavy_first`` as ``ForwardBlocks.heavy_first`` for the dQ kernel (the dK/dV kernel's first key
    blocks are already its longest under a causal mask)."""

    dkv_block_q: int = 64
    dkv_stages: int = 2
    dq_block_k: int = 128
    dq_stages: int = 2
    dq_heavy_first: bool = True

    def __post_init__(self):
        for name in ("dkv_block_q", "dq_block_k"):
            size = getattr(self, name)
            if size not in (64, 128):  # wgmma N and K of the streamed side: a 64-element swizzle multiple
                raise ValueError(f"{name} must be 64 or 128, got {size}")
        for name in ("dkv_stages", "dq_stages"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2, got {getattr(self, name)}")

    @property
    def q_multiple(self) -> int:
        """The query padding multiple: a dQ CTA's rows, a dK/dV streamed tile."""
        return max(2 * OWNED_ROWS, self.dkv_block_q)

    @property
    def kv_multiple(self) -> int:
        """The key padding multiple: a dK/dV CTA's keys, a dQ streamed tile."""
        return max(2 * OWNED_ROWS, self.dq_block_k)


def padded_head_dim(d: int) -> int:
    """The head dim the kernel runs at: the next of ``HEAD_DIMS`` (zeros pad Q, K and V; the output's extra
    columns are dropped)."""
    return next(h for h in HEAD_DIMS if d <= h)


def smem_bytes(head_dim: int, itemsize: int, c: ForwardBlocks) -> int:
    """Shared memory of one CTA: Q (reused for the output) of both consumers, the K/V ring, the lse rows."""
    q = 2 * c.block_q * head_dim * itemsize
    kv = 2 * c.stages * c.block_k * head_dim * itemsize
    return q + kv + 2 * c.block_q * 4


def dkv_smem_bytes(head_dim: int, itemsize: int, c: BackwardBlocks) -> int:
    """Shared memory of one dK/dV CTA: both consumers' K and V, the ring of Q, dO, lse and delta."""
    owned = 2 * 2 * OWNED_ROWS * head_dim * itemsize
    ring = c.dkv_stages * (2 * c.dkv_block_q * head_dim * itemsize + 2 * c.dkv_block_q * 4)
    return owned + ring


def dq_smem_bytes(head_dim: int, itemsize: int, c: BackwardBlocks) -> int:
    """Shared memory of one dQ CTA: both consumers' Q, dO, lse and delta, the ring of K and V."""
    owned = 2 * (2 * OWNED_ROWS * head_dim * itemsize + 2 * OWNED_ROWS * 4)
    return owned + c.dq_stages * 2 * c.dq_block_k * head_dim * itemsize


_BY_HEAD_DIM = {64: ForwardBlocks(64, 128, 3), 128: ForwardBlocks(64, 128, 2), 256: ForwardBlocks(64, 64, 2)}


def choose_forward_blocks(head_dim: int, kv_len: int) -> ForwardBlocks:
    """The heuristic's blocks for a padded head dim, narrowed for short key sequences."""
    c = _BY_HEAD_DIM[padded_head_dim(head_dim)]
    if kv_len <= 64:
        c = dataclasses.replace(c, block_k=64)
    return c


_BACKWARD_BY_HEAD_DIM = {64: BackwardBlocks(64, 3, 128, 2), 128: BackwardBlocks(64, 2, 128, 2)}


def choose_backward_blocks(head_dim: int) -> BackwardBlocks:
    """The native backward's blocks for a head dim it serves (``NATIVE_BACKWARD_HEAD_DIMS`` once padded)."""
    d = padded_head_dim(head_dim)
    if d not in _BACKWARD_BY_HEAD_DIM:
        raise NotImplementedError(
            f"the native Mosaic-GPU backward serves head dims up to {max(NATIVE_BACKWARD_HEAD_DIMS)} "
            f"(dK and dV of head dim {d} do not fit a warpgroup's registers); use the Triton backward"
        )
    return _BACKWARD_BY_HEAD_DIM[d]
