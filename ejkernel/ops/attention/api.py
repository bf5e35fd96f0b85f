"""The public ``attention`` entry point and ``explain``.

The public call differs from the seed's path (``ejkernel.kernels._xla.attention._interface``) in three
defaults, each a rule written here once (``docs/jax_nn_flax.rst``):

- ``dtype=None``: it computes in the inputs' dtype (query, key and value share one, validation checks it);
  the seed's path keeps ``dtype=jnp.bfloat16``.
- ``return_weights=False``: the second output is ``None`` on every backend; with ``True`` the call goes to
  an implementation that forms the weights (the dense XLA reference) or fails saying why. The seed's path
  returns the weights wherever they are formed.
- ``bias`` and ``attention_mask`` broadcast by NumPy rules (``[B, 1, 1, Skv]``, ``[Sq, Skv]``, ...)
  (``layouts.broadcast_operand``), before the call is bound and validated.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any

import jax.numpy as jnp
from jax import Array
from jaxtyping import Bool, Float

from ejkernel.errors import FallbackWarning
from ejkernel.ops.attention.layouts import broadcast_operand
from ejkernel.ops.attention.signature import SIGNATURE
from ejkernel.registry import Decision, Kernel, get_kernel

__all__ = ["attention", "explain_attention", "PUBLIC_SIGNATURE"]

_KW = inspect.Parameter.KEYWORD_ONLY
# NumPy broadcasting: any rank up to 4 whose trailing axes broadcast to [B, H, Sq, Skv].
_PUBLIC_ANNOTATIONS = {
    "attention_mask": Bool[Array, "*#mask_lead #q_len #kv_len"] | None,
    "bias": Float[Array, "*#bias_lead #q_len #kv_len"] | None,
}


def _public_parameter(p: inspect.Parameter) -> inspect.Parameter:
    if p.name == "dtype":
        return p.replace(default=None)
    if p.name in _PUBLIC_ANNOTATIONS:
        return p.replace(annotation=_PUBLIC_ANNOTATIONS[p.name])
    return p


#: The public call's signature: the seed's sixteen parameters (``dtype`` defaulting to ``None``), then the
#: keyword-only ``platform``, ``return_weights`` and ``interpret``.
PUBLIC_SIGNATURE = SIGNATURE.replace(
    parameters=[
        *(_public_parameter(p) for p in SIGNATURE.parameters.values()),
        inspect.Parameter("platform", _KW, default="auto", annotation=str),
        inspect.Parameter("return_weights", _KW, default=False, annotation=bool),
        inspect.Parameter("interpret", _KW, default=False, annotation=bool),
    ]
)


def _bound_arguments(args: tuple, kwargs: dict, name: str) -> dict[str, Any]:
    try:
        bound = PUBLIC_SIGNATURE.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}(): {e}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for flag in ("return_weights", "interpret"):
        if not isinstance(arguments[flag], bool):
            raise TypeError(f"{flag} must be a bool, got {type(arguments[flag]).__name__}")
    return arguments


def _broadcast_operands(arguments: dict[str, Any]) -> dict[str, Any]:
    """``bias`` and ``attention_mask`` in the ``[B|1, H|1, Sq, Skv]`` form the call validates."""
    a = dict(arguments)
    for name in ("query", "key", "attention_mask", "bias"):  # array-likes become arrays, as in bind_call
        if a[name] is not None and not (hasattr(a[name], "shape") and hasattr(a[name], "dtype")):
            a[name] = jnp.asarray(a[name])
    if len(a["query"].shape) == 4 and len(a["key"].shape) == 4:
        (batch, q_len, num_q_heads, _), (_, kv_len, num_kv_heads, _) = a["query"].shape, a["key"].shape
        for name in ("attention_mask", "bias"):
            a[name] = broadcast_operand(a[name], batch, num_q_heads, num_kv_heads, q_len, kv_len)
    return a


def _bound_call(kernel: Kernel, arguments: dict[str, Any]) -> Any:
    """The validated call of the public arguments, its features saying whether the weights are wanted."""
    a = _broadcast_operands(arguments)
    return_weights = a.pop("return_weights")
    a.pop("platform"), a.pop("interpret")
    call = kernel.bind(**a)
    return dataclasses.replace(call, features=dataclasses.replace(call.features, return_weights=return_weights))


def attention(*args: Any, **kwargs: Any) -> tuple[Array, Array | None]:
    """Attention on the best implementation for this device and these arguments.

    The semantics are identical on every backend (``docs/semantics.rst``). The parameters are the seed's
    reference parameters (positional or by name, in its order) and then keyword-only ones; three public
    defaults differ from the seed's path: ``dtype=None``, no weights, NumPy broadcasting of ``bias`` and
    ``attention_mask``.

    Args:
      query: ``[B, Sq, Hq, D]``.
      key: ``[B, Skv, Hkv, D]`` with ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
      value: ``[B, Skv, Hkv, Dv]``.
      attention_mask: boolean, ``True`` = may attend; any shape that broadcasts to ``[B, Hq, Sq, Skv]`` by
        NumPy rules (``[B, 1, 1, Skv]`` for key padding), or ``[B|1, Hkv, Sq, Skv]`` per kv head.
      bias: added to the logits after the soft cap; broadcasts like ``attention_mask``. With a mask, both apply.
      init_bias: called (once, eagerly) for a bias only when ``bias`` and ``attention_mask`` are ``None``.
      deterministic: ``False`` enables dropout when ``dropout_prob > 0``.
      dropout_rng: a PRNG key (typed or raw ``uint32[2]``); required when dropout is enabled.
      softmax_aux: sinks, ``[Hq, n]`` or ``[n]``: extra logits in each row's denominator, carrying no value.
      softmax_scale: multiplies ``q·k``; default ``D ** -0.5``.
      logits_soft_cap: ``cap * tanh(s / cap)`` on the scaled logits; must be ``> 0``.
      dtype: the dtype of both products (accumulated in float32) and of the output; ``None`` (default) is
        the inputs' dtype (query, key and value must share it).
      softmax_dtype: the softmax's dtype; float32 when ``None``.
      dropout_prob: in ``[0, 1)``; kept weights are scaled by ``1 / (1 - p)``.
      causal: bottom-right aligned: query ``i`` sees key ``j`` iff ``j <= i + Skv - Sq``.
      sliding_window: ``w`` or ``(left, right)``, inclusive, same alignment; intersects with causal.
      q_segment_ids: keyword-only, integer ``[B, Sq]``, with ``kv_segment_ids`` (integer ``[B, Skv]``, both
        or neither): query ``i`` attends key ``j`` only where the ids are equal and not negative.
      kv_segment_ids: keyword-only, see ``q_segment_ids``.
      kv_lengths: keyword-only, integer ``[B]`` in ``[0, Skv]``: keys at positions ``>= length`` are excluded.
      platform: keyword-only: "auto" (the best implementation registered for the device JAX would use),
        "xla", "pallas_tpu" (alias "pallas"), "triton", "mosaic_gpu" (Hopper) or "cudnn" (NVIDIA GPUs). A
        platform that cannot run here, or cannot serve these arguments, hands the call to one that can
        (finally XLA) with a ``FallbackWarning`` pointing at the caller's line.
      return_weights: keyword-only: ``False`` (default) returns ``None`` as the weights on every backend;
        ``True`` returns the ``[B, Hq, Sq, Skv]`` weights, from the dense XLA reference.
      interpret: keyword-only: ``True`` runs a Pallas implementation in interpret mode, on any device.

    Returns:
      ``(output [B, Sq, Hq, Dv], weights [B, Hq, Sq, Skv] or None)``. Rows with no allowed key are zero,
      with zero, finite gradients.

    Raises:
      ValueError, TypeError: bad input, naming the argument.
      KernelUnavailableError: ``return_weights=True`` and the weights cannot fit in memory.
    """
    arguments = _bound_arguments(args, kwargs, "attention")
    kernel = get_kernel("attention", arguments["platform"], interpret=arguments["interpret"])
    out, weights = kernel.run(_bound_call(kernel, arguments))
    return out, (weights if arguments["return_weights"] else None)


attention.__signature__ = PUBLIC_SIGNATURE


def explain_attention(*args: Any, **kwargs: Any) -> Decision:
    """Which implementation ``attention(*args, **kwargs)`` would use, and why (the same arguments).

    Arrays may be ``jax.ShapeDtypeStruct`` objects: only shapes, dtypes and Python arguments are read.
    ``interpret=True`` makes the Pallas implementations eligible on any device.
    """
    arguments = _bound_arguments(args, kwargs, "explain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the decision itself carries the reason
        kernel = get_kernel("attention", arguments["platform"], interpret=arguments["interpret"])
    return kernel.decide(_bound_call(kernel, arguments))
