"""The static configuration shared by the forward and backward kernels of one call."""

from __future__ import annotations

import dataclasses
from typing import Any

from ejkernel.kernels.pallas_tpu.blocks import BlockSizes
from ejkernel.ops.attention.precision import matmul_precision

__all__ = ["Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one call, as the kernels see it.

    Lengths are the true (unpadded) ones: the arrays handed to the kernels are padded to multiples of
    ``BlockSizes.q_multiple`` / ``kv_multiple``. ``window`` is the call's, already clamped by validation
    (``masks.clamp_window``). ``bias_layout``/``mask_layout`` are ``(batch, heads)`` broadcast classes of
    ``AttentionFeatures`` ("B"|"1", "q"|"kv"|"1"), read through ``layouts.operand_index``.
    """

    q_len: int
    kv_len: int
    num_q_heads: int
    num_kv_heads: int
    softmax_scale: float
    causal: bool
    window: tuple[int, int] | None
    logits_soft_cap: float | None
    has_sinks: bool
    bias_layout: tuple[str, str] | None
    mask_layout: tuple[str, str] | None
    dtype: str
    blocks: BlockSizes
    interpret: Any = False
    count_visits: bool = False
    bias_full: bool = False  # the bias is [B, Hq, ...] (no broadcast axis): its gradient needs no reduction
    segments: bool = False  # q_segment_ids/kv_segment_ids given (``packing``)
    lengths: bool = False  # kv_lengths given

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def precision(self) -> Any:
        """``precision.matmul_precision``: full float32 products for float32 (the MXU's default rounds operands
        to bfloat16) unless the user asked for less with ``jax.default_matmul_precision``."""
        return matmul_precision(self.dtype)
