"""The static configuration shared by the forward and backward kernels of one call."""

from __future__ import annotations

import dataclasses
from typing import Any

from ejkernel.kernels.pallas_tpu.blocks import BlockSizes

__all__ = ["Plan", "kv_head"]


def kv_head(q_head: Any, group: int) -> Any:
    """The kv head that query head ``q_head`` reads: ``q_head // group``.

    A truncating division (heads are non-negative): ``//`` on traced int32 lowers through ``sign``,
    whose Mosaic rule asks for an attached TPU, which breaks compiling on a host without one.
    """
    if group == 1:
        return q_head
    if isinstance(q_head, int):
        return q_head // group
    import jax

    return jax.lax.div(q_head, jax.numpy.int32(group))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one call, as the kernels see it.

    Lengths are the true (unpadded) ones: the arrays handed to the kernels are padded to multiples of
    ``blocks.q_multiple`` / ``blocks.kv_multiple``. ``window`` is clamped to ``q_len + kv_len`` (wider
    windows mean the same) so that index arithmetic stays inside int32. ``bias_layout``/``mask_layout`` are
    ``(batch, heads)`` broadcast classes of ``AttentionFeatures`` ("B"|"1", "q"|"kv"|"1").
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

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def precision(self) -> Any:
        """Full float32 products for float32 (the MXU's default rounds operands to bfloat16)."""
        import jax

        return jax.lax.Precision.HIGHEST if self.dtype == "float32" else None

    def operand_index(self, layout: tuple[str, str], batch: Any, q_head: Any) -> tuple[Any, Any]:
        """Block indices (batch, head) of a bias/mask with ``layout`` for query head ``q_head``."""
        b = batch if layout[0] == "B" else 0
        if layout[1] == "q":
            h = q_head
        elif layout[1] == "kv":
            h = kv_head(q_head, self.group_size)
        else:
            h = 0
        return b, h
