"""Registry record of the Pallas Mosaic-TPU flash attention (platform "pallas_tpu", alias "pallas").

Importing this module does not import Pallas: ``build`` loads the kernel on first use. What it serves is
``capabilities.CAPABILITIES``.
"""

from __future__ import annotations

from ejkernel.kernels.pallas_tpu.capabilities import CAPABILITIES
from ejkernel.registry import KernelSpec

__all__ = ["SPEC", "SPECS"]


def _build(interpret: bool):
    from ejkernel.kernels.pallas_tpu.interface import registered_attention

    return registered_attention(interpret)


SPEC = KernelSpec(
    name="attention",
    platform="pallas_tpu",
    variant="default",
    priority=100,
    devices=frozenset({"tpu"}),
    build=_build,
    capabilities=CAPABILITIES,
    uses_pallas=True,
    description="Pallas Mosaic-TPU flash attention: O(S) memory, causal/window block skipping, GQA without K/V repetition",
)

SPECS = (SPEC,)
