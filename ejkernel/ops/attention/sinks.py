"""Sinks (``softmax_aux``), written once: their logits, their log-sum-exp, and their gradient.

A sink is one extra logit in a row's softmax denominator, carrying no value: not scaled, capped or
biased. ``[Hq, n]`` gives each query head its own, ``[n]`` shares them. With the row's log-sum-exp
``lse`` (sinks included) and ``delta = rowsum(dO * O) - dlse``, the gradient of sink ``j`` of head ``h``
is ``-sum over batch and rows of exp(aux[h, j] - lse) * delta``; rows whose ``lse`` is not finite (no
denominator at all) contribute nothing. A sink of ``+inf`` counts as ``SINK_MAX``: it takes its rows' whole
weight, so their output is 0 and every gradient through them is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["SINK_MAX", "sink_logits", "sinks_lse", "sink_gradient"]


#: A sink above this counts as this: ``+inf`` takes a row's whole weight (output 0, zero gradients) on every
#: backend, with arithmetic (base-2 kernels multiply by log2(e)) that stays finite.
SINK_MAX = 1e30


def sink_logits(softmax_aux: Array, num_q_heads: int) -> Array:
    """``softmax_aux`` of shape ``[Hq, n]`` or ``[n]`` as float32 ``[Hq, n]`` (float64 stays float64), each at
    most ``SINK_MAX``."""
    aux = softmax_aux.astype(jnp.promote_types(softmax_aux.dtype, jnp.float32))
    aux = jnp.minimum(aux, SINK_MAX)
    if aux.ndim == 1:
        aux = jnp.broadcast_to(aux[None, :], (num_q_heads, aux.shape[0]))
    return aux


def sinks_lse(softmax_aux: Array, num_q_heads: int) -> Array:
    """``[Hq]`` float32: the log-sum-exp of each query head's sinks."""
    return jax.nn.logsumexp(sink_logits(softmax_aux, num_q_heads), axis=-1)


def sink_gradient(softmax_aux: Array, lse: Array, delta: Array) -> Array:
    """The gradient of ``softmax_aux`` (its shape and dtype) from ``lse``/``delta`` of shape ``[B, Hq, Sq]``.

    ``lse`` is the natural-log row log-sum-exp including the sinks; padded rows must carry a zero ``delta``
    or a non-finite ``lse``.
    """
    num_q_heads = lse.shape[1]
    aux = sink_logits(softmax_aux, num_q_heads)  # [Hq, n]
    finite = jnp.isfinite(lse)
    shift = jnp.where(finite, lse, 0.0)[..., None]
    prob = jnp.where(finite[..., None], jnp.exp(aux[None, :, None, :] - shift), 0.0)  # [B, Hq, Sq, n]
    # A sum of products, not an einsum: a dot would run at the device's default (TF32 on a GPU) precision.
    grad = -jnp.sum(prob * jnp.where(finite, delta, 0.0).astype(prob.dtype)[..., None], axis=(0, 2))
    if softmax_aux.ndim == 1:
        grad = jnp.sum(grad, axis=0)
    return grad.astype(softmax_aux.dtype)
