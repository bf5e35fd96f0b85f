"""Registry entry of the XLA reference: runs everywhere, serves every call, lowest priority."""

from __future__ import annotations

from ejkernel.ops.attention.features import AttentionCapabilities
from ejkernel.registry import KernelSpec

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})


def _build(interpret: bool):
    del interpret  # plain XLA has no interpret mode
    from ejkernel.kernels._xla.attention._interface import attention

    return attention


SPEC = KernelSpec(
    name="attention",
    platform="xla",
    variant="default",
    priority=0,
    devices=frozenset({"cpu", "cuda", "rocm", "tpu"}),
    build=_build,
    capabilities=AttentionCapabilities(dtypes=_FLOATS, softmax_dtypes=_FLOATS),
    description="dense XLA reference; materialises the [B, Hq, Sq, Skv] weights; the parity oracle",
)
