"""Registry entry of the chunked XLA attention: chosen over the dense reference for large score matrices.

The dense reference stays the choice (and the oracle) while its ``[B, Hq, Sq, Skv]`` score matrix is
small: below ``DENSE_SCORE_LIMIT`` elements both paths are quick and the dense one also returns the
weights. At and above it, the chunked path serves the call in O(Sq + Skv) memory, faster, and returns
``(output, None)``.
"""

from __future__ import annotations

from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures
from ejkernel.registry import KernelSpec

# B * Hq * Sq * Skv at which the chunked path takes over: B1 H8 at S = 1024 (a 32 MiB float32 score
# matrix). Measured on the 2-core CPU (benchmarks/results/chunked_cpu.txt, B1 H8 D64 bfloat16): from
# S = 1024 on the chunked forward+backward is about 3x faster and the dense path's compiled memory grows
# 4x per doubling (it no longer fits 24 GiB at S = 16384); below it both take a few milliseconds, so
# the dense path keeps them and returns the weights as well.
DENSE_SCORE_LIMIT = 8 * 1024 * 1024


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
