"""What the Pallas-Triton flash attention serves, forward and backward together; any other call goes to XLA
before tracing:

- dtypes bfloat16, float16 and float32 (float32 runs true-fp32 dots, smaller tiles; parity ~1e-5);
- head dims up to 256 for both D and Dv (padded to a power of 2 >= 16 inside: 96 -> 128, 192 -> 256),
  ``Dv != D``; larger head dims do not fit shared memory and are declared unsupported;
- causal and sliding window (fully masked blocks skipped), GQA/MQA without K/V repetition, soft cap,
  sinks ``[Hq, n]``/``[n]``, bias and boolean mask of every ``[B|1, Hq|Hkv|1]`` layout (with gradients for
  bias and sinks), any ``Sq``/``Skv`` (padded to block multiples, the padding masked);
- segment ids and key lengths (``packing``: blocks they rule out skipped, blocks they fully allow left
  unmasked; key lengths also on the decoding path, segment ids on the ordinary kernels);
- not dropout (no in-kernel RNG whose statistics we could test in interpret mode); softmax in float32 only.
"""

from __future__ import annotations

from ejkernel.ops.attention.features import ALL_LAYOUTS, AttentionCapabilities, AttentionFeatures

__all__ = ["CAPABILITIES", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256


def _head_dims(f: AttentionFeatures) -> str | None:
    if f.head_dim > MAX_HEAD_DIM or f.v_head_dim > MAX_HEAD_DIM:
        return f"head dims ({f.head_dim}, {f.v_head_dim}) above {MAX_HEAD_DIM} do not fit the Triton kernel's tiles"
    return None


CAPABILITIES = AttentionCapabilities(
    dtypes=frozenset({"bfloat16", "float16", "float32"}),
    head_dims=None,
    different_v_head_dim=True,
    bias_layouts=ALL_LAYOUTS,
    mask_layouts=ALL_LAYOUTS,
    bias_with_mask=True,
    causal=True,
    window=True,
    logits_soft_cap=True,
    sinks=True,
    dropout=False,
    segment_ids=True,
    kv_lengths=True,
    softmax_dtypes=frozenset({"float32"}),
    extra_check=_head_dims,
)
