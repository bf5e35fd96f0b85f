"""The static plan of one call as the Triton kernels see it: true and padded sizes, features, layout."""

from __future__ import annotations

import dataclasses

__all__ = ["Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one call as the kernels see it (padded sizes included)."""

    batch: int
    q_len: int
    kv_len: int
    q_len_pad: int
    kv_len_pad: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int  # padded
    v_head_dim: int  # padded
    softmax_scale: float
    causal: bool = False
    window: tuple[int, int] | None = None
    logits_soft_cap: float | None = None
    bias_layout: tuple[str, str] | None = None
    mask_layout: tuple[str, str] | None = None
    num_sinks: int = 0  # padded (power of 2), 0 without sinks
    segments: bool = False  # q_segment_ids/kv_segment_ids given (``packing``)
    lengths: bool = False  # kv_lengths given
    interpret: bool = False
    # Decoding layout (forward only, ``flash.decode_with_lse``): ``pack`` query rows per position (the GQA
    # group folded into the rows, so ``num_q_heads`` is then the kv head count) and the keys split into
    # ``kv_splits`` ranges, each a separate program writing a float32 partial.
    pack: int = 1
    kv_splits: int = 1

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def offset(self) -> int:
        return self.kv_len - self.q_len
