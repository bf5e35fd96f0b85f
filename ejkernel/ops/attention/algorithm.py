"""The attention algorithms' registry records: their signature and how a call is bound (found by the registry).

- ``attention``: ``(output, weights or None)``, the public call.
- ``attention_with_lse``: the same semantics, returning ``(output [B, Sq, Hq, Dv], lse [B, Sq, Hq])`` with
  ``lse`` the float32 natural-log softmax denominator of each row (sinks included, ``-inf`` for an empty
  row; ``merge``'s convention), differentiable in both outputs. Partial results over disjoint keys merge
  exactly (``merge.merge_partials``): the building block of ring attention.

Both rank capable implementations under ``platform="auto"`` by the committed speed table of the device
kind (``speed``), where it has an entry for the call; a call that is not differentiated goes to the
fastest forward where that is another implementation (``split``).
"""

from __future__ import annotations

from typing import Any

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.ops.attention.speed import measured_speeds
from ejkernel.ops.attention.split import split
from ejkernel.platform import current_device_kind
from ejkernel.registry import Algorithm

__all__ = ["ATTENTION", "ATTENTION_WITH_LSE", "ALGORITHMS"]


def _measured_speeds(features: Any) -> dict[str, float]:
    """The committed speed table's rates for this call on the current device kind (``speed``)."""
    return measured_speeds(features, current_device_kind())


def _measured_forward_speeds(features: Any) -> dict[str, float]:
    """The committed speed table's forward rates for this call on the current device kind."""
    return measured_speeds(features, current_device_kind(), "fwd")


_RANKING = {"measured_speeds": _measured_speeds, "measured_forward_speeds": _measured_forward_speeds, "split": split}
ATTENTION = Algorithm(name="attention", signature=SIGNATURE, bind=bind_call, **_RANKING)
ATTENTION_WITH_LSE = Algorithm(name="attention_with_lse", signature=SIGNATURE, bind=bind_call, **_RANKING)
ALGORITHMS = (ATTENTION, ATTENTION_WITH_LSE)
