"""The logits transform, written once: ``s = (q·k) * scale``, then ``cap * tanh(s / cap)``, then ``+ bias``.

Every backend computes its logits with ``transform_logits`` (inside a kernel on a tile, or on the whole
score matrix) and differentiates the cap with ``cap_gradient``. The sinks are not transformed: they enter
the softmax as they are (``sinks``).

``base2=True`` returns the logits multiplied by ``log2(e)``, for kernels whose softmax uses ``exp2``
(the factor is folded into the scale and cap, so it costs no extra multiply on the products).

``tanh=tanh_from_exp2`` spells the cap's tanh with ``exp2`` and one division, for kernels whose native
tanh is an approximation too coarse for the cap (Mosaic-GPU's ``tanh.approx``, about 2^-11 relative: at a
cap of 30 a logit would move by ~0.015, a 1.5% change of its weight).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["LOG2E", "transform_logits", "cap_gradient", "tanh_from_exp2"]

LOG2E = math.log2(math.e)


def transform_logits(
    scores: Any,
    scale: float,
    cap: float | None = None,
    bias: Any | None = None,
    *,
    base2: bool = False,
    tanh: Callable[[Any], Any] | None = None,
) -> tuple[Any, Any | None]:
    """``(logits, tanh)`` from the raw products ``scores = q·k`` (float32 or wider).

    ``tanh`` is ``tanh(scores * scale / cap)`` (what ``cap_gradient`` needs), ``None`` without a cap.
    ``bias`` is added after the cap, in the scores' dtype. With ``base2`` the logits are in units of
    ``log2(e)``: ``exp2(logits) == exp(natural logits)``. The keyword ``tanh`` replaces ``jnp.tanh``
    (``tanh_from_exp2``).
    """
    unit = LOG2E if base2 else 1.0
    t = None
    if cap is None:
        s = scores * (scale * unit)
    else:
        t = (tanh or _tanh)(scores * (scale / cap))
        s = t * (cap * unit)
    if bias is not None:
        b = bias.astype(s.dtype)
        s = s + (b * unit if base2 else b)
    return s, t


def cap_gradient(d_logits: Any, tanh: Any | None) -> Any:
    """The gradient w.r.t. ``scores * scale`` from the gradient w.r.t. the capped logits: ``* (1 - tanh²)``.

    The caller multiplies by ``scale`` (once, on the accumulated dQ or dK, where that is cheaper).
    """
    return d_logits if tanh is None else d_logits * (1.0 - tanh * tanh)


def tanh_from_exp2(x: Any) -> Any:
    """``tanh(x) = 1 - 2 / (2^(2·log2(e)·x) + 1)``: exact to float32 rounding in absolute terms (what the
    cap needs: its error is ``cap`` times this one), saturating to ±1 without NaN (``2 / inf = 0``)."""
    import jax.numpy as jnp

    return 1.0 - 2.0 / (jnp.exp2(x * (2.0 * LOG2E)) + 1.0)


def _tanh(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.tanh(x)
