"""Named shape grids for ``ejkernel bench`` and the parser of a custom ``--shape``.

A shape is ``[B, Sq, Hq, D]`` queries against ``[B, Skv, Hkv, D]`` keys and values. Each one carries the
grid it came from, a ``series`` (which line of a plot it belongs to) and ``x`` (its position along that
line, a sequence length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["BenchShape", "GRIDS", "GRID_DESCRIPTIONS", "build_grid", "parse_shape", "filter_shapes"]


@dataclasses.dataclass(frozen=True)
class BenchShape:
    batch: int
    q_len: int
    kv_len: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    grid: str = "custom"
    series: str = ""
    forward_only: bool = False  # decode steps: the backward pass is not what anyone runs

    def __post_init__(self) -> None:
        dims = (self.batch, self.q_len, self.kv_len, self.num_q_heads, self.num_kv_heads, self.head_dim)
        if min(dims) < 1:
            raise ValueError(f"every dimension must be >= 1, got {dims}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads={self.num_q_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def x(self) -> int:
        """Position along a plot's sequence axis: the key length (the query length of a decode step is 1)."""
        return self.kv_len

    @property
    def label(self) -> str:
        seq = f"S{self.q_len}" if self.q_len == self.kv_len else f"Sq{self.q_len} Skv{self.kv_len}"
        heads = (
            f"H{self.num_q_heads}"
            if self.num_q_heads == self.num_kv_heads
            else f"H{self.num_q_heads}/{self.num_kv_heads}"
        )
        return f"B{self.batch} {seq} {heads} D{self.head_dim}"


FA3_TOKENS = 16384
FA3_HIDDEN = 2048
FA3_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
FA3_HEAD_DIMS = (64, 128, 256)


def fa3_grid() -> list[BenchShape]:
    """FlashAttention-3's grid: 16k tokens (B = 16384 / S), hidden 2048 (H = 2048 / D), MHA."""
    return [
        BenchShape(FA3_TOKENS // s, s, s, FA3_HIDDEN // d, FA3_HIDDEN // d, d, "fa3", f"D{d}")
        for d in FA3_HEAD_DIMS
        for s in FA3_SEQ_LENS
    ]


def decode_grid() -> list[BenchShape]:
    """One query token against caches of 1k .. 128k keys; Llama-like GQA (32 query heads, 8 kv heads)."""
    return [BenchShape(8, 1, 1024 * 2**i, 32, 8, 128, "decode", "B8 H32/8 D128", forward_only=True) for i in range(8)]


def gqa_grid() -> list[BenchShape]:
    """GQA ratios 1, 4 and 8 at the FA3 grid's D=128 geometry (16 query heads, 16k tokens)."""
    return [
        BenchShape(FA3_TOKENS // s, s, s, 16, 16 // ratio, 128, "gqa", f"G{ratio} D128")
        for ratio in (1, 4, 8)
        for s in (1024, 4096, 16384)
    ]


def small_grid() -> list[BenchShape]:
    """Shapes small enough that launch and dispatch overhead dominate (and that run fast on a CPU)."""
    return [BenchShape(1, s, s, 4, 4, 64, "small", "B1 H4 D64") for s in (64, 128, 256, 512)]


GRIDS = {"fa3": fa3_grid, "decode": decode_grid, "gqa": gqa_grid, "small": small_grid}
GRID_DESCRIPTIONS = {name: (fn.__doc__ or "").strip().splitlines()[0].rstrip(".") for name, fn in GRIDS.items()}


def build_grid(name: str) -> list[BenchShape]:
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; known: {sorted(GRIDS)}")
    return GRIDS[name]()


def parse_shape(text: str) -> BenchShape:
    """``"B,Sq,Skv,Hq,Hkv,D"`` (e.g. ``"2,1024,1024,16,4,128"``) as a custom shape."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 6 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--shape wants six positive integers B,Sq,Skv,Hq,Hkv,D; got {text!r}")
    b, sq, skv, hq, hkv, d = (int(p) for p in parts)
    return BenchShape(b, sq, skv, hq, hkv, d, "custom", f"custom D{d}")


def filter_shapes(
    shapes: Iterable[BenchShape],
    *,
    max_seq: int | None = None,
    min_seq: int | None = None,
    head_dims: Iterable[int] | None = None,
) -> list[BenchShape]:
    """Shapes whose longest sequence lies in ``[min_seq, max_seq]`` and whose head dim is listed."""
    dims = set(head_dims) if head_dims else None
    kept = []
    for s in shapes:
        longest = max(s.q_len, s.kv_len)
        if max_seq is not None and longest > max_seq:
            continue
        if min_seq is not None and longest < min_seq:
            continue
        if dims is not None and s.head_dim not in dims:
            continue
        kept.append(s)
    return kept
