"""Block sizes, their VMEM cost, and which (query block, key block) pairs the kernels visit.

Block sizes: the logits tile ``[block_q, block_k]`` puts keys along the 128 lanes and queries along the
sublanes, so both are multiples of 128 (queries as well, because the dk/dv kernel contracts over the query
axis, i.e. transposes the tile). The heuristic (``choose_block_sizes``) takes the largest of 512, 256, 128
that does not exceed the padded sequence, then halves the larger of the two until the estimated VMEM of
every kernel (``vmem_bytes``) fits ``VMEM_BUDGET``, which sits below the 16 MiB that Mosaic scopes by
default on v5e (v6e's compile allows its whole 128 MiB). Sequences are padded up to a multiple of their block; padded keys are
masked inside the kernel and padded queries are sliced away, so the caller never sees them.

Skipping: a pair is *visited* when causal/window allow at least one (real query, real key) in it; the
others are skipped in the forward and in both backward kernels, and their index maps point at an already
resident block so that no DMA is issued either. A visited pair *needs a mask* unless causal/window allow
every pair in it, it holds no padded key, and there is no ``attention_mask``. The same functions serve the
kernels (on traced int32 scalars), the index maps, and ``count_visited_blocks`` (on Python ints) that the
tests compare against the kernel's own visit counter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ejkernel.ops.attention.masks import block_fully_allowed, key_range, query_range

__all__ = [
    "LANES",
    "BlockSizes",
    "choose_block_sizes",
    "vmem_bytes",
    "VMEM_BUDGET",
    "round_up",
    "kv_block_range",
    "q_block_range",
    "query_range",
    "block_visited",
    "block_needs_mask",
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


def _min(a: Any, b: Any) -> Any:
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return min(a, b)
    return np.minimum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else _jnp().minimum(a, b)


def _max(a: Any, b: Any) -> Any:
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return max(a, b)
    return np.maximum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else _jnp().maximum(a, b)


def _jnp():
    import jax.numpy as jnp

    return jnp


def kv_block_range(q_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int, causal: bool,
                   window: tuple[int, int] | None) -> tuple[Any, Any]:
    """Inclusive ``[first, last]`` key blocks visited by query block ``q_block``; ``first > last`` if none."""
    q_lo = q_block * block_q
    q_hi = _min(q_lo + (block_q - 1), q_len - 1)
    k_lo, k_hi = key_range(q_lo, q_hi, q_len, kv_len, causal, window)
    k_lo = _max(k_lo, 0)
    k_hi = _min(k_hi, kv_len - 1)
    first = _div(k_lo, block_k)
    last = _div(_max(k_hi, 0), block_k)
    # A query block made only of padding, or a key range that is empty, visits nothing.
    empty = (q_lo >= q_len) | (k_lo > k_hi)
    return first, _where(empty, first - 1, last)


def q_block_range(kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int, causal: bool,
                  window: tuple[int, int] | None) -> tuple[Any, Any]:
    """Inclusive ``[first, last]`` query blocks that visit key block ``kv_block``; ``first > last`` if none."""
    k_lo = kv_block * block_k
    k_hi = _min(k_lo + (block_k - 1), kv_len - 1)
    q_lo, q_hi = query_range(k_lo, k_hi, q_len, kv_len, causal, window)
    q_lo = _max(q_lo, 0)
    q_hi = _min(q_hi, q_len - 1)
    first = _div(q_lo, block_q)
    last = _div(_max(q_hi, 0), block_q)
    empty = (k_lo >= kv_len) | (q_lo > q_hi)
    return first, _where(empty, first - 1, last)


def _div(x: Any, block: int) -> Any:
    """``x // block`` for ``x >= 0``. Traced values use a truncating division: ``//`` on int32 lowers
    through ``sign``, whose Mosaic rule needs a TPU to be attached."""
    if isinstance(x, (int, np.integer, np.ndarray)):
        return x // block
    import jax

    return jax.lax.div(x, jax.numpy.int32(block))


def _where(cond: Any, a: Any, b: Any) -> Any:
    if isinstance(cond, (bool, np.bool_)):
        return a if cond else b
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return _jnp().where(cond, a, b)


def block_visited(q_block: Any, kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int,
                  causal: bool, window: tuple[int, int] | None) -> Any:
    """Whether the kernels compute the pair (the one skip predicate of forward and backward)."""
    first, last = kv_block_range(q_block, block_q, block_k, q_len, kv_len, causal, window)
    return (kv_block >= first) & (kv_block <= last)


def block_needs_mask(q_block: Any, kv_block: Any, block_q: int, block_k: int, q_len: int, kv_len: int,
                     causal: bool, window: tuple[int, int] | None, has_mask: bool) -> Any:
    """Whether a visited pair must be masked element by element (see the module docstring)."""
    if has_mask:
        return True
    q_lo = q_block * block_q
    q_hi = _min(q_lo + (block_q - 1), q_len - 1)
    k_lo = kv_block * block_k
    k_hi = k_lo + (block_k - 1)
    # With kv_len a multiple of block_k no visited tile holds a padded key (statically known).
    ragged = False if kv_len % block_k == 0 else k_hi >= kv_len
    if not causal and window is None:
        return ragged
    full = block_fully_allowed(q_lo, q_hi, k_lo, k_hi, q_len, kv_len, causal, window)
    return ragged | ~full if not isinstance(full, (bool, np.bool_)) else (ragged | (not full))


def count_visited_blocks(q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool,
                         window: tuple[int, int] | None) -> int:
    """How many (query block, key block) pairs one (batch, head) visits, from the kernels' predicate."""
    num_q = round_up(q_len, block_q) // block_q
    num_k = round_up(kv_len, block_k) // block_k
    qb = np.arange(num_q)[:, None]
    kb = np.arange(num_k)[None, :]
    return int(np.sum(block_visited(qb, kb, block_q, block_k, q_len, kv_len, causal, window)))
