"""Registry record of the Pallas Mosaic-TPU flash attention (platform "pallas_tpu", alias "pallas").

Importing this module does not import Pallas: ``build`` loads the kernel on first use. What it serves is
``capabilities.CAPABILITIES``.
"""

from __future__ import annotations

import dataclasses

from ejkernel.kernels.pallas_tpu.capabilities import CAPABILITIES
from ejkernel.registry import KernelSpec

__all__ = ["SPEC", "SPEC_WITH_LSE", "SPECS"]


def _build(interpret: bool):
    from ejkernel.kernels.pallas_tpu.interface import registered_attention

    return registered_attention(interpret)


def _build_with_lse(interpret: bool):
    from ejkernel.kernels.pallas_tpu.interface import registered_attention_with_lse

    return registered_attention_with_lse(interpret)


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

#: The same kernel as ``attention_with_lse``: ``(output, lse [B, Sq, Hq])``, differentiable in both.
SPEC_WITH_LSE = dataclasses.replace(SPEC, name="attention_with_lse", build=_build_with_lse)

SPECS = (SPEC, SPEC_WITH_LSE)
