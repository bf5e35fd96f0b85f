"""The attention algorithm's registry record: its signature and how a call is bound (found by the registry)."""

from __future__ import annotations

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.registry import Algorithm

__all__ = ["ATTENTION", "ALGORITHMS"]

ATTENTION = Algorithm(name="attention", signature=SIGNATURE, bind=bind_call)
ALGORITHMS = (ATTENTION,)
