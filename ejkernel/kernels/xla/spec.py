"""Registry records of the XLA implementations: the dense reference and the chunked path.

The dense reference runs everywhere, serves every call, and has the lowest priority: it is what every
call ends up on when nothing better serves it, and the oracle the others are checked against.

The chunked path is chosen over it for large score matrices: the dense reference stays the choice while
its ``[B, Hq, Sq, Skv]`` score matrix is below the device's ``chunk_policy`` limit (2**23 elements on a
CPU, 2**29 on an accelerator), or no larger than K and V themselves (decoding), where it is as fast or
faster and also returns the weights. Above it, the chunked path serves the call in O(Sq + Skv) memory and
returns ``(output, None)``.
"""

from __future__ import annotations

from ejkernel.kernels.xla.chunk_policy import dense_score_elements, input_elements, policy_for
from ejkernel.ops.attention.features import ALL_LAYOUTS, AttentionCapabilities, AttentionFeatures
from ejkernel.platform import current_platform
from ejkernel.registry import KernelSpec

__all__ = ["REFERENCE", "CHUNKED", "SPECS", "dense_is_small"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
_EVERY_DEVICE = frozenset({"cpu", "cuda", "rocm", "tpu"})


def dense_is_small(f: AttentionFeatures) -> str | None:
    """Refuses calls whose dense score matrix is below the device's limit or below the K/V inputs' size."""
    platform = current_platform()
    limit = policy_for(platform).dense_score_limit
    elements = dense_score_elements(f)
    if elements < limit:
        return f"dense score matrix of {elements} elements is below {limit} on {platform}: the dense reference serves it"
    if elements <= input_elements(f):
        return (
            f"dense score matrix of {elements} elements is no larger than K and V ({input_elements(f)}): "
            "the dense reference serves it"
        )
    return None


def _every_feature(dtypes: frozenset[str], softmax_dtypes: frozenset[str], **extra) -> AttentionCapabilities:
    return AttentionCapabilities(
        dtypes=dtypes, different_v_head_dim=True, bias_layouts=ALL_LAYOUTS, mask_layouts=ALL_LAYOUTS,
        bias_with_mask=True, causal=True, window=True, logits_soft_cap=True, sinks=True, dropout=True,
        softmax_dtypes=softmax_dtypes, **extra,
    )


def _build_reference(interpret: bool):
    del interpret  # plain XLA has no interpret mode
    from ejkernel.kernels.xla.reference import reference_attention

    return reference_attention


def _build_chunked(interpret: bool):
    del interpret
    from ejkernel.kernels.xla.chunked import chunked_without_lse

    return chunked_without_lse


REFERENCE = KernelSpec(
    name="attention",
    platform="xla",
    variant="default",
    priority=0,
    devices=_EVERY_DEVICE,
    build=_build_reference,
    capabilities=_every_feature(_FLOATS, _FLOATS, segment_ids=True, kv_lengths=True),
    description="dense XLA reference; materialises the [B, Hq, Sq, Skv] weights; the parity oracle",
)

CHUNKED = KernelSpec(
    name="attention",
    platform="xla",
    variant="chunked",
    priority=10,
    devices=_EVERY_DEVICE,
    build=_build_chunked,
    capabilities=_every_feature(
        frozenset({"float16", "bfloat16", "float32"}), frozenset({"float32"}), extra_check=dense_is_small,
        segment_ids=True, kv_lengths=True,
    ),
    description="chunked XLA attention (online softmax over kv chunks, O(S) memory); returns no weights",
)

SPECS = (REFERENCE, CHUNKED)
