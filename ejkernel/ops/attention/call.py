"""One attention call, bound and validated once: its static features and its arrays.

``bind_call`` is the only place a call is validated. The registry does it before choosing an
implementation, a backend's own entry point does it before computing; the implementation then receives
the ``AttentionCall`` and never validates or checks capabilities again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.validation import resolve_bias, validate_attention

__all__ = ["AttentionCall", "bind_call"]

_ARRAY_ARGUMENTS = (
    "query", "key", "value", "attention_mask", "bias", "softmax_aux", "q_segment_ids", "kv_segment_ids", "kv_lengths",
)


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """A validated call: ``features`` (static: shapes, dtypes, Python arguments) and the arrays.

    ``bias`` is the resolved one (``init_bias()`` already called where the semantics say so);
    ``dropout_rng`` is ``None`` unless dropout is on. ``q_segment_ids``/``kv_segment_ids`` (both or
    neither) and ``kv_lengths`` are as the caller gave them (integer; backends compare them as int32). Arrays may be ``jax.ShapeDtypeStruct`` when the
    call is only being explained.
    """

    features: AttentionFeatures
    query: Any
    key: Any
    value: Any
    attention_mask: Any = None
    bias: Any = None
    softmax_aux: Any = None
    dropout_rng: Any = None
    q_segment_ids: Any = None
    kv_segment_ids: Any = None
    kv_lengths: Any = None


def bind_call(arguments: Mapping[str, Any]) -> AttentionCall:
    """Validates the reference arguments (all of ``SIGNATURE``'s, by name, defaults filled in) into an ``AttentionCall``.

    Raises:
      ValueError, TypeError: bad input, naming the argument (``validation.validate_attention``).
    """
    a = dict(arguments)
    for name in _ARRAY_ARGUMENTS:  # array-likes (lists, scalars) become arrays, as in jax.numpy
        if a[name] is not None and not (hasattr(a[name], "shape") and hasattr(a[name], "dtype")):
            a[name] = jnp.asarray(a[name])
    bias = resolve_bias(a["bias"], a["attention_mask"], a["init_bias"])
    features = validate_attention(
        a["query"], a["key"], a["value"], a["attention_mask"], bias, a["deterministic"],
        a["dropout_rng"], a["softmax_aux"], a["softmax_scale"], a["logits_soft_cap"], a["dtype"],
        a["softmax_dtype"], a["dropout_prob"], a["causal"], a["sliding_window"],
        q_segment_ids=a["q_segment_ids"], kv_segment_ids=a["kv_segment_ids"], kv_lengths=a["kv_lengths"],
    )
    return AttentionCall(
        features=features,
        query=a["query"],
        key=a["key"],
        value=a["value"],
        attention_mask=a["attention_mask"],
        bias=bias,
        softmax_aux=a["softmax_aux"],
        dropout_rng=a["dropout_rng"] if features.dropout else None,
        q_segment_ids=a["q_segment_ids"],
        kv_segment_ids=a["kv_segment_ids"],
        kv_lengths=a["kv_lengths"],
    )
