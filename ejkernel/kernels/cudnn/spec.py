"""Registry record of cuDNN's fused attention (platform "cudnn", NVIDIA GPUs of compute capability >= 8.0).

It ranks above the Triton kernel: cuDNN was faster in every cell measured on an H100 and an H200
(``benchmarks/results``), and it serves only calls where it equals our semantics (``capabilities``).
A call naming it that it cannot serve goes to the Mosaic-GPU kernel, then Triton, then XLA (whichever run
here). Importing this module imports nothing of cuDNN; ``build`` does, on first use.
"""

from __future__ import annotations

from ejkernel.kernels.cudnn.capabilities import CAPABILITIES
from ejkernel.platform import cuda_capability_reason
from ejkernel.registry import KernelSpec, lazy_build

__all__ = ["SPEC", "SPECS"]


def _available() -> str | None:
    """``None`` on a CUDA GPU of compute capability >= 8.0 with cuDNN, else why not."""
    return cuda_capability_reason(8)


SPEC = KernelSpec(
    name="attention",
    platform="cudnn",
    variant="default",
    priority=110,
    devices=frozenset({"cuda"}),
    build=lazy_build("ejkernel.kernels.cudnn.interface", "registered_attention"),
    capabilities=CAPABILITIES,
    uses_pallas=False,
    description="cuDNN fused attention via jax.nn: causal/window on square scores, GQA; no bias, mask, "
    "sinks or soft cap",
    available=_available,
    falls_back_to=("mosaic_gpu", "triton"),
)

SPECS = (SPEC,)
