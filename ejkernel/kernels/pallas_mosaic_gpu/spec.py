"""Registry record of the Mosaic-GPU flash attention (platform "mosaic_gpu", Hopper GPUs).

Importing this module does not import Pallas: ``build`` loads the kernel on first use. What it serves is
``capabilities.CAPABILITIES``; ``available`` accepts compute capability 9.x only (wgmma, TMA and register
reallocation are Hopper's; Blackwell has its own instructions). It ranks between Triton (100) and cuDNN
(110): above the Triton kernel it is meant to beat, below cuDNN where cuDNN equals our semantics. A call
naming it that it cannot serve goes to Triton, then XLA.
"""

from __future__ import annotations

from ejkernel.kernels.pallas_mosaic_gpu.capabilities import CAPABILITIES
from ejkernel.platform import cuda_major_reason
from ejkernel.registry import KernelSpec, lazy_build, with_lse

__all__ = ["SPEC", "SPEC_WITH_LSE", "SPECS", "HOPPER"]

HOPPER = 9


def _available() -> str | None:
    """``None`` on a CUDA GPU of compute capability 9.x, else why not."""
    return cuda_major_reason(HOPPER)


_INTERFACE = "ejkernel.kernels.pallas_mosaic_gpu.interface"


SPEC = KernelSpec(
    name="attention",
    platform="mosaic_gpu",
    variant="default",
    priority=105,
    devices=frozenset({"cuda"}),
    build=lazy_build(_INTERFACE, "registered_attention"),
    capabilities=CAPABILITIES,
    uses_pallas=True,
    description="Pallas Mosaic-GPU flash attention for Hopper: TMA ring, wgmma, warp specialisation; "
    "causal/window skipping, GQA, packing; native backward up to D128, Triton's at D256",
    available=_available,
    falls_back_to=("triton",),
)

#: The same kernel as ``attention_with_lse``: ``(output, lse [B, Sq, Hq])``, differentiable in both.
SPEC_WITH_LSE = with_lse(SPEC, _INTERFACE)

SPECS = (SPEC, SPEC_WITH_LSE)
