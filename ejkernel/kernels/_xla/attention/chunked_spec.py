"""Registry entry of the chunked XLA attention: chosen over the dense reference for large score matrices.

The dense reference stays the choice (and the oracle) while its ``[B, Hq, Sq, Skv]`` score matrix is
small: below ``DENSE_SCORE_LIMIT`` elements it is as fast or faster and returns the weights. At and above
it, the chunked path serves the call in O(Sq + Skv) memory and returns ``(output, None)``.
"""

from __future__ import annotations

from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures
from ejkernel.registry import KernelSpec

# B * Hq * Sq * Skv at which the chunked path takes over: B1 H8 at S = 4096 (a 512 MiB float32 score
# matrix per copy). Measured on the 2-core CPU (benchmarks/results/chunked_cpu.txt): below it the dense
# path is faster; from S = 4096 the dense backward needs several GiB and the chunked one tens of MiB.
DENSE_SCORE_LIMIT = 8 * 4096 * 4096


def dense_is_small(f: AttentionFeatures) -> str | None:
    """Refuses calls whose dense score matrix is below ``DENSE_SCORE_LIMIT`` elements."""
    elements = f.batch * f.num_q_heads * f.q_len * f.kv_len
    if elements < DENSE_SCORE_LIMIT:
        return (
            f"dense score matrix of {elements} elements is below {DENSE_SCORE_LIMIT}: "
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
