"""Registry entry of the chunked XLA attention: chosen over the dense reference for large score matrices.

The dense reference stays the choice (and the oracle) while its ``[B, Hq, Sq, Skv]`` score matrix is
small: below the device's ``chunk_policy`` limit (2**23 elements on a CPU, 2**29 on an accelerator), or
smaller than K and V themselves (decoding), the dense path is as fast or faster and also returns the
weights. Above it, the chunked path serves the call in O(Sq + Skv) memory and returns ``(output, None)``.
"""

from __future__ import annotations

from ejkernel.kernels._xla.attention.chunk_policy import dense_score_elements, input_elements, policy_for
from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures
from ejkernel.registry import KernelSpec, current_platform


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


def _build(interpret: bool):
    del interpret  # plain XLA has no interpret mode
    from ejkernel.kernels._xla.attention.chunked import attention

    return attention


SPEC = KernelSpec(
    name="attention",
    platform="xla",
    variant="chunked",
    priority=10,
    devices=frozenset({"cpu", "cuda", "rocm", "tpu"}),
    build=_build,
    capabilities=AttentionCapabilities(
        dtypes=frozenset({"float16", "bfloat16", "float32"}),
        softmax_dtypes=frozenset({"float32"}),
        extra_check=dense_is_small,
    ),
    description="chunked XLA attention (online softmax over kv chunks, O(S) memory); returns no weights",
)
