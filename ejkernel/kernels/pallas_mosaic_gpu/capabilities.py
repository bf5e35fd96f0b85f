"""What the Mosaic-GPU flash attention serves, forward and backward together; any other call goes to the
next implementation (Triton, then XLA) before tracing:

- dtypes bfloat16 and float16 (wgmma's 16-bit operands; float32 goes to Triton);
- head dims up to 256 with ``Dv == D`` (padded inside to 64, 128 or 256, the multiples of the 128-byte
  swizzle);
- causal and sliding window (fully masked blocks skipped, edge blocks masked element by element), GQA/MQA
  without K/V repetition, any ``Sq``/``Skv`` (padded to block multiples, the padding masked);
- soft cap (its tanh spelled with ``exp2``: ``logits.tanh_from_exp2``) and sinks (folded into the kernels'
  output and log-sum-exp by ``merge.add_sinks``, their gradient by differentiating that merge);
- segment ids and key lengths (``packing``: the ranges cut to each CTA's and consumer's span, masked by
  the ids in shared memory; keys no query may see zeroed in K and V before the kernels);
- not decoding: a call with at most ``DECODE_MAX_ROWS`` query rows per kv head (``Sq x group``) goes to
  Triton's decode forward, which folds the GQA group into one query block and splits the keys, where this
  kernel would stream K/V once per query head into 128-row CTAs holding a few real rows;
- not yet: bias, mask, dropout, a narrow softmax.

The backward is the native kernels (``backward.py``) at head dims up to 128 and the Triton backend's above;
both serve all of the above.
"""

from __future__ import annotations

from ejkernel.kernels.pallas_triton.blocks import DECODE_MAX_ROWS
from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures

__all__ = ["CAPABILITIES", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256


def _head_dims_and_decoding(f: AttentionFeatures) -> str | None:
    if f.head_dim > MAX_HEAD_DIM:
        return f"head_dim {f.head_dim} above {MAX_HEAD_DIM} does not fit the Mosaic-GPU kernel's shared memory"
    if f.q_len * f.group_size <= DECODE_MAX_ROWS:
        return (f"decoding (Sq x group = {f.q_len * f.group_size} <= {DECODE_MAX_ROWS} query rows per kv head): "
                "Triton's decode forward folds the group and splits the keys")
    return None


CAPABILITIES = AttentionCapabilities(
    dtypes=frozenset({"bfloat16", "float16"}),
    head_dims=None,
    different_v_head_dim=False,
    causal=True,
    window=True,
    logits_soft_cap=True,
    sinks=True,
    segment_ids=True,
    kv_lengths=True,
    softmax_dtypes=frozenset({"float32"}),
    extra_check=_head_dims_and_decoding,
)
