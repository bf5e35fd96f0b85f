"""What the Pallas Mosaic-TPU flash attention serves, forward and backward together; any other call goes
to XLA before tracing:

- dtypes bfloat16 and float32 (float16: the TPU has no float16 matmul path in Mosaic, so it is declared
  unsupported rather than silently upcast);
- every head dim (a block spans the whole head dim, which Mosaic tiles for any size), ``Dv != D``;
- causal, sliding window, soft cap, sinks ``[Hq, n]`` and ``[n]``, bias and boolean mask of every
  ``[B|1, Hq|Hkv|1]`` layout (with gradients for bias and sinks), any ``Sq``/``Skv``;
- segment ids and key lengths (``packing``: tiles they rule out skipped, tiles they fully allow unmasked,
  key blocks past a row's length never fetched);
- not dropout: the TPU interpreter's ``prng_random_bits`` returns zeros on the CPU, so an in-kernel PRNG
  could not be tested here; such calls fall back to XLA instead of being ignored;
- softmax in float32 only.
"""

from __future__ import annotations

from ejkernel.ops.attention.features import ALL_LAYOUTS, AttentionCapabilities

__all__ = ["CAPABILITIES"]

CAPABILITIES = AttentionCapabilities(
    dtypes=frozenset({"bfloat16", "float32"}),
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
)
