"""Registry record of the Pallas Mosaic-TPU flash attention (platform "pallas_tpu", alias "pallas").

Importing this module does not import Pallas: ``build`` loads the kernel on first use. What it serves is
``capabilities.CAPABILITIES``.
"""

from __future__ import annotations

from ejkernel.kernels.pallas_tpu.capabilities import CAPABILITIES
from ejkernel.registry import KernelSpec, lazy_build, with_lse

__all__ = ["SPEC", "SPEC_WITH_LSE", "SPECS"]

_INTERFACE = "ejkernel.kernels.pallas_tpu.interface"


SPEC = KernelSpec(
    name="attention",
    platform="pallas_tpu",
    variant="default",
    priority=100,
    devices=frozenset({"tpu"}),
    build=lazy_build(_INTERFACE, "registered_attention"),
    capabilities=CAPABILITIES,
    uses_pallas=True,
    description="Pallas Mosaic-TPU flash attention: O(S) memory, causal/window block skipping, GQA without K/V repetition",
)

#: The same kernel as ``attention_with_lse``: ``(output, lse [B, Sq, Hq])``, differentiable in both.
SPEC_WITH_LSE = with_lse(SPEC, _INTERFACE)

SPECS = (SPEC, SPEC_WITH_LSE)
