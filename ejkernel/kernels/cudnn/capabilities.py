"""What cuDNN's fused attention serves with our semantics, forward and backward; everything else goes to
the next implementation (Triton, then XLA) before tracing.

Each line was measured on an H200 against the float32 oracle (``benchmarks/cudnn_semantics.py``;
``benchmarks/NOTES-cudnn.md``), not assumed:

- dtypes bfloat16 and float16 (cuDNN has no float32 path); head dims multiples of 8 up to 256, ``Dv == D``;
- ``Sq`` and ``Skv`` multiples of 64 (jax 0.11.2 rejects 777, 999 and 300 x 701 with "Unsupported sequence
  length"; 512 and 1024 pass);
- GQA/MQA natively;
- causal only when ``Sq == Skv``: jax.nn aligns causality top-left, ours bottom-right, and the two agree
  only on square score matrices;
- a sliding window only together with causal (cuDNN takes a left window only), same condition;
- no bias, no mask: jax.nn turns a mask into a large negative bias, so a row with no allowed key averages
  every value instead of giving zeros;
- no soft cap, sinks, dropout or narrow softmax (jax.nn has none of them).
"""

from __future__ import annotations

from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures

__all__ = ["CAPABILITIES", "MAX_HEAD_DIM", "SEQUENCE_MULTIPLE"]

MAX_HEAD_DIM = 256
SEQUENCE_MULTIPLE = 64


def _cudnn_only(f: AttentionFeatures) -> str | None:
    if f.head_dim > MAX_HEAD_DIM or f.head_dim % 8:
        return f"head_dim {f.head_dim} is not a multiple of 8 up to {MAX_HEAD_DIM} (cuDNN)"
    if f.q_len % SEQUENCE_MULTIPLE or f.kv_len % SEQUENCE_MULTIPLE:
        return f"sequence lengths ({f.q_len}, {f.kv_len}) not multiples of {SEQUENCE_MULTIPLE} (cuDNN)"
    if (f.causal or f.window is not None) and f.q_len != f.kv_len:
        return (f"causal or window with Sq {f.q_len} != Skv {f.kv_len}: cuDNN aligns them top-left, "
                "ours bottom-right")
    if f.window is not None and not f.causal:
        return "a sliding window without causal (cuDNN takes only a left window, with causal)"
    return None


CAPABILITIES = AttentionCapabilities(
    dtypes=frozenset({"bfloat16", "float16"}),
    causal=True,
    window=True,
    extra_check=_cudnn_only,
)
