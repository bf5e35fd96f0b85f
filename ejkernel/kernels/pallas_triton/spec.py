"""Registry record of the Pallas-Triton flash attention (platform "triton", NVIDIA GPUs).

Importing this module does not import Pallas: ``build`` loads the kernel on first use. What it serves is
``capabilities.CAPABILITIES``; ``available`` rejects GPUs below compute capability 8.0 (no bf16 tensor
cores for Triton there).
"""

from __future__ import annotations

from ejkernel.kernels.pallas_triton.capabilities import CAPABILITIES
from ejkernel.platform import cuda_capability_reason
from ejkernel.registry import KernelSpec, lazy_build, with_lse

__all__ = ["SPEC", "SPEC_WITH_LSE", "SPECS"]


def _available() -> str | None:
    """``None`` on a CUDA GPU of compute capability >= 8.0, else why not."""
    return cuda_capability_reason(8)


_INTERFACE = "ejkernel.kernels.pallas_triton.interface"


SPEC = KernelSpec(
    name="attention",
    platform="triton",
    variant="default",
    priority=100,
    devices=frozenset({"cuda"}),
    build=lazy_build(_INTERFACE, "registered_attention"),
    capabilities=CAPABILITIES,
    uses_pallas=True,
    description="Pallas-Triton flash attention: causal/window block skipping, GQA without K/V repetition, "
    "bias/mask/sinks/soft cap with gradients",
    available=_available,
)

#: The same kernel as ``attention_with_lse``: ``(output, lse [B, Sq, Hq])``, differentiable in both.
SPEC_WITH_LSE = with_lse(SPEC, _INTERFACE)

SPECS = (SPEC, SPEC_WITH_LSE)
