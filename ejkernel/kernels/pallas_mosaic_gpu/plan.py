"""The static plan of one call as the Mosaic-GPU kernel sees it: true and padded sizes, features."""

from __future__ import annotations

import dataclasses

__all__ = ["Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one call as the kernel sees it (padded sizes included)."""

    batch: int
    q_len: int
    kv_len: int
    q_len_pad: int
    kv_len_pad: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int  # padded (D == Dv)
    softmax_scale: float
    causal: bool = False
    window: tuple[int, int] | None = None
    logits_soft_cap: float | None = None
    segments: bool = False  # q_segment_ids/kv_segment_ids given (``packing``)
    lengths: bool = False  # kv_lengths given
    interpret: bool = False

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads
