"""The static description of one attention call, and what an implementation can serve.

``AttentionFeatures`` is computed from shapes, dtypes and Python arguments only, so dispatch is decided
before tracing. ``AttentionCapabilities`` is what an implementation declares; ``unsupported_reasons``
compares the two and says, in words, everything that stands in the way. A capability covers the forward
*and* the backward pass: a kernel that cannot differentiate a feature must not claim it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["AttentionFeatures", "AttentionCapabilities", "ALL_LAYOUTS"]

from ejkernel.ops.attention.layouts import OperandLayout

#: Every ``(batch, heads)`` broadcast class of a bias or mask.
ALL_LAYOUTS: frozenset[OperandLayout] = frozenset((b, h) for b in ("B", "1") for h in ("q", "kv", "1"))


@dataclasses.dataclass(frozen=True)
class AttentionFeatures:
    """Everything about a call that decides which implementation may serve it."""

    batch: int
    q_len: int
    kv_len: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    input_dtype: str
    dtype: str
    softmax_dtype: str
    softmax_scale: float
    bias: OperandLayout | None = None
    mask: OperandLayout | None = None
    causal: bool = False
    window: tuple[int, int] | None = None
    logits_soft_cap: float | None = None
    num_sinks: int = 0
    sinks_per_head: bool = False
    dropout: bool = False
    dropout_prob: float = 0.0  # 0.0 whenever ``dropout`` is False
    # The weights asked for: True (required), False (none), None (the seed's rule: where they are formed).
    return_weights: bool | None = None
    segment_ids: bool = False  # q_segment_ids and kv_segment_ids (always both)
    kv_lengths: bool = False

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def describe(self) -> str:
        parts = [
            f"B{self.batch} Sq{self.q_len} Skv{self.kv_len} Hq{self.num_q_heads} Hkv{self.num_kv_heads}",
            f"D{self.head_dim}" + (f" Dv{self.v_head_dim}" if self.v_head_dim != self.head_dim else ""),
            self.dtype,
        ]
        if self.causal:
            parts.append("causal")
        if self.window is not None:
            parts.append(f"window{self.window}")
        if self.bias is not None:
            parts.append(f"bias{self.bias}")
        if self.mask is not None:
            parts.append(f"mask{self.mask}")
        if self.logits_soft_cap is not None:
            parts.append("soft_cap")
        if self.num_sinks:
            parts.append(f"sinks{'[Hq,n]' if self.sinks_per_head else '[n]'}")
        if self.dropout:
            parts.append("dropout")
        if self.return_weights:
            parts.append("return_weights")
        if self.segment_ids:
            parts.append("segment_ids")
        if self.kv_lengths:
            parts.append("kv_lengths")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class AttentionCapabilities:
    """What one implementation serves, forward and backward together. Every feature is opt-in.

    A field left at its default declares the feature *unsupported* (no layouts, ``False``), so a feature
    added to ``AttentionFeatures`` later is never silently claimed by a backend that predates it. The
    defaults serve only a plain call: float32/bfloat16/float16, any head dim, ``Dv == D``, float32 softmax.
    ``weights`` says the implementation returns the ``[B, Hq, Sq, Skv]`` weights a call with
    ``return_weights=True`` asks for (only the dense XLA reference forms them).
    ``head_dims`` of ``None`` means any head dim. ``extra_check`` may veto a call for a reason the fields
    cannot express (it returns a sentence, or ``None`` when the call is fine).
    """

    dtypes: frozenset[str] = frozenset({"float32", "bfloat16", "float16"})
    head_dims: frozenset[int] | None = None
    different_v_head_dim: bool = False
    bias_layouts: frozenset[OperandLayout] = frozenset()
    mask_layouts: frozenset[OperandLayout] = frozenset()
    bias_with_mask: bool = False
    causal: bool = False
    window: bool = False
    logits_soft_cap: bool = False
    sinks: bool = False
    dropout: bool = False
    segment_ids: bool = False
    kv_lengths: bool = False
    softmax_dtypes: frozenset[str] = frozenset({"float32"})
    weights: bool = False
    extra_check: Callable[[AttentionFeatures], str | None] | None = None

    def unsupported_reasons(self, f: AttentionFeatures) -> list[str]:
        """Every reason this implementation cannot serve ``f``; empty when it can."""
        reasons = []
        if f.dtype not in self.dtypes:
            reasons.append(f"dtype {f.dtype} not in {sorted(self.dtypes)}")
        if self.head_dims is not None and f.head_dim not in self.head_dims:
            reasons.append(f"head_dim {f.head_dim} not in {sorted(self.head_dims)}")
        if self.head_dims is not None and f.v_head_dim not in self.head_dims:
            reasons.append(f"value head_dim {f.v_head_dim} not in {sorted(self.head_dims)}")
        if not self.different_v_head_dim and f.v_head_dim != f.head_dim:
            reasons.append(f"value head_dim {f.v_head_dim} != query head_dim {f.head_dim}")
        if f.bias is not None and f.bias not in self.bias_layouts:
            reasons.append(f"bias layout (batch {f.bias[0]}, heads {f.bias[1]}) unsupported")
        if f.mask is not None and f.mask not in self.mask_layouts:
            reasons.append(f"attention_mask layout (batch {f.mask[0]}, heads {f.mask[1]}) unsupported")
        if f.bias is not None and f.mask is not None and not self.bias_with_mask:
            reasons.append("bias together with attention_mask unsupported")
        if f.causal and not self.causal:
            reasons.append("causal unsupported")
        if f.window is not None and not self.window:
            reasons.append("sliding_window unsupported")
        if f.logits_soft_cap is not None and not self.logits_soft_cap:
            reasons.append("logits_soft_cap unsupported")
        if f.num_sinks and not self.sinks:
            reasons.append("softmax_aux (sinks) unsupported")
        if f.dropout and not self.dropout:
            reasons.append("dropout unsupported")
        if f.return_weights and not self.weights:
            reasons.append("return_weights=True unsupported (the weights are never formed)")
        if f.segment_ids and not self.segment_ids:
            reasons.append("q_segment_ids/kv_segment_ids unsupported")
        if f.kv_lengths and not self.kv_lengths:
            reasons.append("kv_lengths unsupported")
        if f.softmax_dtype not in self.softmax_dtypes:
            reasons.append(f"softmax_dtype {f.softmax_dtype} not in {sorted(self.softmax_dtypes)}")
        if self.extra_check is not None:
            extra = self.extra_check(f)
            if extra:
                reasons.append(extra)
        return reasons
