"""The public ``attention`` entry point and ``explain``."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from ejkernel.errors import FallbackWarning
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.registry import Decision, get_kernel

__all__ = ["attention", "explain_attention"]

_PUBLIC_SIGNATURE = SIGNATURE.replace(
    parameters=[*SIGNATURE.parameters.values(), inspect.Parameter("platform", inspect.Parameter.KEYWORD_ONLY, default="auto")]
)


def attention(*args: Any, platform: str = "auto", **kwargs: Any) -> Any:
    """Attention on the best implementation for this device and these arguments.

    The parameters and semantics are the reference's (``ejkernel.kernels.xla.reference.attention``;
    ``docs/semantics.rst``), identical on every backend. ``platform`` is "auto" (the best implementation
    registered for the device JAX would use), "xla", "pallas_tpu" (alias "pallas") or "triton" (NVIDIA
    GPU). A platform that cannot run here, or cannot serve these arguments, hands the call to one that
    can (finally XLA) with a ``FallbackWarning``.

    Returns ``(output, weights)``; fused kernels return ``None`` for the weights.
    """
    kernel = get_kernel("attention", platform)
    return kernel.run(kernel.bind(*args, **kwargs), stacklevel=3)


attention.__signature__ = _PUBLIC_SIGNATURE


def explain_attention(*args: Any, platform: str = "auto", interpret: bool = False, **kwargs: Any) -> Decision:
    """Which implementation ``attention(*args, **kwargs, platform=platform)`` would use, and why.

    Arrays may be ``jax.ShapeDtypeStruct`` objects: only shapes, dtypes and Python arguments are read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the decision itself carries the reason
        kernel = get_kernel("attention", platform, interpret=interpret)
    return kernel.explain(*args, **kwargs)
