"""Block sizes, their VMEM cost, and which (query block, key block) pairs the kernels visit.

Block sizes: the logits tile ``[block_q, block_k]`` puts keys along the 128 lanes and queries along the
sublanes, so both are multiples of 128 (queries as well, because the dk/dv kernel contracts over the query
axis, i.e. transposes the tile). The heuristic (``choose_block_sizes``) takes the largest of 512, 256, 128
that does not exceed the padded sequence, then halves the larger of the two until the estimated VMEM of
every kernel (``vmem_bytes``) fits ``VMEM_BUDGET``, which sits below the 16 MiB that Mosaic scopes by
default on v5e (v6e's compile allows its whole 128 MiB). Sequences are padded up to a multiple of their block; padded keys are
masked inside the kernel and padded queries are sliced away, so the caller never sees them.

Skipping (``docs/design.rst``, *Kernels*): which pairs are visited and which need a mask is the shared
rule ``masks.key_blocks`` (and its transpose ``masks.query_blocks``). A pair is *visited* when causal/window
allow at least one (real query, real key) in it; the others are skipped in the forward and in both backward
kernels, and their index maps point at an already resident block (``clamp_to_visited``) so that no DMA is
issued either. A visited pair *needs a mask* unless it is interior: causal/window allow every pair in it, it
holds no padded key, and there is no ``attention_mask``. The same functions serve the kernels (on traced
int32 scalars), the index maps, and ``count_visited_blocks`` (on NumPy arrays) that the tests compare
against the kernel's own visit counter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ejkernel.ops.attention.masks import key_blocks, query_blocks

__all__ = [
    "LANES",
    "BlockSizes",
    "choose_block_sizes",
    "vmem_bytes",
    "VMEM_BUDGET",
    "round_up",
    "kv_block_range",
    "q_block_range",
    "clamp_to_visited",
    "block_visited",
    "block_needs_mask",
    "uniform_mask_need",
    "count_visited_blocks",
]

LANES = 128
VMEM_BUDGET = 14 * 2**20
_CANDIDATES = (512, 256, 128)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes: ``block_q``/``block_k`` for the forward, ``*_bwd`` for both backward kernels.

    Every size must be a positive multiple of 128.
    """

    block_q: int = 128
    block_k: int = 128
    block_q_bwd: int = 128
    block_k_bwd: int = 128

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
            size = getattr(self, name)
            if not isinstance(size, int) or size <= 0 or size % LANES:
                raise ValueError(f"{name} must be a positive multiple of {LANES}, got {size!r}")

    @property
    def q_multiple(self) -> int:
        """The query length is padded to a multiple of this (forward and backward blocks both divide it)."""
        return math.lcm(self.block_q, self.block_q_bwd)

    @property
    def kv_multiple(self) -> int:
        return math.lcm(self.block_k, self.block_k_bwd)


def vmem_bytes(
    kernel: str, block_q: int, block_k: int, head_dim: int, v_head_dim: int, itemsize: int,
    bias_itemsize: int = 0, has_mask: bool = False,
) -> int:
    """Estimated VMEM of one kernel (``"forward"``, ``"dq"``, ``"dkv"``, ``"dbias"``) for one block configuration.

    Pipelined operands count twice (double buffering); the float32 ``[block_q, block_k]`` temporaries
    (logits, probabilities, their gradients and transposes) are counted explicitly.
    """
    tile = block_q * block_k
    operands = 2 * tile * bias_itemsize + (2 * tile if has_mask else 0)
    q_side = 2 * block_q * head_dim * itemsize
    kv_side = 2 * block_k * (head_dim + v_head_dim) * itemsize
    row_stats = 2 * block_q * LANES * 4  # one lane-replicated float32 row statistic, double-buffered
    if kernel == "forward":
        out = 2 * block_q * v_head_dim * itemsize + row_stats
        scratch = block_q * v_head_dim * 4 + 2 * block_q * LANES * 4
        temporaries = 4 * tile * 4
        inputs = q_side + kv_side
    elif kernel == "dq":
        inputs = q_side + kv_side + 2 * block_q * v_head_dim * itemsize + 2 * row_stats
        out = 2 * block_q * head_dim * itemsize + (2 * tile * 4 if bias_itemsize else 0)
        scratch = block_q * head_dim * 4
        temporaries = 6 * tile * 4
    elif kernel == "dkv":
        inputs = q_side + kv_side + 2 * block_q * v_head_dim * itemsize + 2 * row_stats
        out = 2 * block_k * (head_dim + v_head_dim) * itemsize
        scratch = block_k * (head_dim + v_head_dim) * 4
        temporaries = 8 * tile * 4
    elif kernel == "dbias":  # only with a broadcast bias: its gradient tile is summed in VMEM
        inputs = q_side + kv_side + 2 * block_q * v_head_dim * itemsize + 2 * row_stats
        out = 2 * tile * bias_itemsize
        scratch = tile * 4
        temporaries = 5 * tile * 4
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return inputs + operands + out + scratch + temporaries


def _fit(
    kernels: tuple[str, ...], q_len: int, kv_len: int, head_dim: int, v_head_dim: int, itemsize: int,
    bias_itemsize: int, has_mask: bool,
) -> tuple[int, int]:
    block_q = next(c for c in _CANDIDATES if c <= round_up(q_len, LANES) or c == LANES)
    block_k = next(c for c in _CANDIDATES if c <= round_up(kv_len, LANES) or c == LANES)

    def fits(bq: int, bk: int) -> bool:
        return all(
            vmem_bytes(k, bq, bk, head_dim, v_head_dim, itemsize, bias_itemsize, has_mask) <= VMEM_BUDGET
            for k in kernels
        )

    while not fits(block_q, block_k) and max(block_q, block_k) > LANES:
        if block_q >= block_k:
            block_q //= 2
        else:
            block_k //= 2
    return block_q, block_k


def choose_block_sizes(
    q_len: int, kv_len: int, head_dim: int, v_head_dim: int, itemsize: int,
    bias_itemsize: int = 0, has_mask: bool = False,
) -> BlockSizes:
    """The documented heuristic (module docstring): largest tiles that fit the VMEM budget.

    """
    args = (q_len, kv_len, head_dim, v_head_dim, itemsize, bias_itemsize, has_mask)
    block_q, block_k = _fit(("forward",), *args)
    block_q_bwd, block_k_bwd = _fit(("dq", "dkv", "dbias") if bias_itemsize else ("dq", "dkv"), *args)
    return BlockSizes(block_q, block_k, block_q_bwd, block_k_bwd)


# --- which blocks are visited -----------------------------------------------------------------------


def kv_block_range(q_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int, causal: bool,
                   window: tuple[int, int] | None, dense: bool = False, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """Key blocks ``(lo, interior_lo, interior_hi, hi)`` of query block ``q_block`` (``masks.key_blocks``,
    ending at the row's ``kv_length`` when given).

    Blocks ``[lo, hi)`` are visited; ``[interior_lo, interior_hi)`` need no per-element mask.
    """
    q_first = q_block * block_q
    return key_blocks(q_first, q_first + (block_q - 1), block_k, q_len, kv_len, causal, window, dense, kv_length)


def q_block_range(kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int, causal: bool,
                  window: tuple[int, int] | None, dense: bool = False, kv_length: Any = None) -> tuple[Any, Any, Any, Any]:
    """Query blocks ``(lo, interior_lo, interior_hi, hi)`` that see key block ``kv_block``
    (``masks.query_blocks``): the transpose of ``kv_block_range``, for the dk/dv kernel's index maps."""
    k_first = kv_block * block_k
    return query_blocks(k_first, k_first + (block_k - 1), block_q, q_len, kv_len, causal, window, dense, kv_length)


def clamp_to_visited(block: Any, lo: Any, hi: Any, num_blocks: int) -> Any:
    """``block`` clamped into the visited ``[lo, hi)`` (and ``[0, num_blocks)``): an index map sends a skipped
    step to a block that is already resident, so the pipeline issues no DMA for it."""
    import jax.numpy as jnp

    first = jnp.clip(lo, 0, num_blocks - 1)
    last = jnp.clip(jnp.maximum(hi - 1, first), 0, num_blocks - 1)
    return jnp.clip(block, first, last)


def _inside(x: Any, lo: Any, hi: Any) -> Any:
    return (x >= lo) & (x < hi)


def block_visited(q_block: Any, kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int,
                  causal: bool, window: tuple[int, int] | None, kv_length: Any = None) -> Any:
    """Whether the kernels compute the pair (the one skip predicate of forward and backward; segment ids
    add theirs, ``packing.tile_predicates``)."""
    lo, _, _, hi = kv_block_range(q_block, block_q, block_k, q_len, kv_len, causal, window, kv_length=kv_length)
    return _inside(kv_block, lo, hi)


def block_needs_mask(q_block: Any, kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int,
                     causal: bool, window: tuple[int, int] | None, has_mask: bool, kv_length: Any = None) -> Any:
    """Whether a visited pair must be masked element by element: it is not interior (see the module
    docstring); with an ``attention_mask`` every pair is."""
    _, interior_lo, interior_hi, _ = kv_block_range(q_block, block_q, block_k, q_len, kv_len, causal, window,
                                                    dense=has_mask, kv_length=kv_length)
    interior = _inside(kv_block, interior_lo, interior_hi)
    return not interior if isinstance(interior, (bool, np.bool_)) else ~interior


def uniform_mask_need(block_q: int, block_k: int, q_len: int, kv_len: int, causal: bool,
                      window: tuple[int, int] | None, has_mask: bool) -> bool | None:
    """``True`` when every visited pair of the grid needs a mask, ``False`` when none does, ``None`` when it
    varies: decided on the host from ``kv_block_range`` over every query block, so that a kernel whose tiles
    are all alike compiles one branch only."""
    num_q = -(-q_len // block_q)
    lo, interior_lo, interior_hi, hi = (
        np.asarray(x) for x in kv_block_range(np.arange(num_q), block_q, block_k, q_len, kv_len, causal, window,
                                              dense=has_mask)
    )
    visited = hi > lo
    interior = (interior_hi - interior_lo)[visited]
    if np.all(interior == (hi - lo)[visited]):
        return False
    if np.all(interior == 0):
        return True
    return None


def count_visited_blocks(q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool,
                         window: tuple[int, int] | None) -> int:
    """How many (query block, key block) pairs one (batch, head) visits, from the kernels' predicate."""
    num_q = round_up(q_len, block_q) // block_q
    lo, _, _, hi = kv_block_range(np.arange(num_q), block_q, block_k, q_len, kv_len, causal, window)
    return int(np.sum(np.asarray(hi) - np.asarray(lo)))
