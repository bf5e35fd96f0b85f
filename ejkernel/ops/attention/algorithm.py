"""The attention algorithms' registry records: their signature and how a call is bound (found by the registry).

- ``attention``: ``(output, weights or None)``, the public call.
- ``attention_with_lse``: the same semantics, returning ``(output [B, Sq, Hq, Dv], lse [B, Sq, Hq])`` with
  ``lse`` the float32 natural-log softmax denominator of each row (sinks included, ``-inf`` for an empty
  row; ``merge``'s convention), differentiable in both outputs. Partial results over disjoint keys merge
  exactly (``merge.merge_partials``): the building block of ring attention.
"""

from __future__ import annotations

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.registry import Algorithm

__all__ = ["ATTENTION", "ATTENTION_WITH_LSE", "ALGORITHMS"]

ATTENTION = Algorithm(name="attention", signature=SIGNATURE, bind=bind_call)
ATTENTION_WITH_LSE = Algorithm(name="attention_with_lse", signature=SIGNATURE, bind=bind_call)
ALGORITHMS = (ATTENTION, ATTENTION_WITH_LSE)
