"""The one attention signature, and the entry points built from it.

``SIGNATURE`` is the seed's sixteen parameters, in its order and with its defaults, followed by the
keyword-only packing arguments (``q_segment_ids``, ``kv_segment_ids``, ``kv_lengths``);
``reference_parameters`` below is the only place they are written. ``SEED_PARAMETER_COUNT`` counts the
positional ones, which never change. Every function that takes them, the public ``ejkernel.attention``, the
seed's path ``ejkernel.kernels._xla.attention._interface.attention`` and each backend's own entry points,
is made by ``entry_point``: it binds the arguments to this signature, validates them once into an
``AttentionCall`` and hands that to the computation, so a wrong name, count or value is the same error
everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike
from jaxtyping import Bool, Float, Int, Key, UInt32

from ejkernel.ops.attention.call import bind_call
from ejkernel.ops.attention.features import AttentionCapabilities

__all__ = ["SIGNATURE", "PARAMETER_NAMES", "SEED_PARAMETER_COUNT", "reference_parameters", "entry_point"]


def reference_parameters(
    query: Float[Array, "batch q_len num_q_heads head_dim"],
    key: Float[Array, "batch kv_len num_kv_heads head_dim"],
    value: Float[Array, "batch kv_len num_kv_heads v_head_dim"],
    attention_mask: Bool[Array, "#batch mask_heads q_len kv_len"] | None = None,
    bias: Float[Array, "#batch bias_heads q_len kv_len"] | None = None,
    init_bias: Callable[[], Float[Array, "#batch bias_heads q_len kv_len"]] | None = None,
    deterministic: bool = True,
    dropout_rng: Key[Array, ""] | UInt32[Array, "2"] | None = None,
    softmax_aux: Float[Array, "num_q_heads num_sinks"] | Float[Array, "num_sinks"] | None = None,
    softmax_scale: float | None = None,
    logits_soft_cap: float | None = None,
    dtype: DTypeLike | None = jnp.bfloat16,
    softmax_dtype: DTypeLike | None = None,
    dropout_prob: float = 0.0,
    causal: bool = False,
    sliding_window: int | tuple[int, int] | None = None,
    *,
    q_segment_ids: Int[Array, "batch q_len"] | None = None,
    kv_segment_ids: Int[Array, "batch kv_len"] | None = None,
    kv_lengths: Int[Array, " batch"] | None = None,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch num_q_heads q_len kv_len"] | None]:
    """The reference parameters (documented in ``docs/semantics.rst``); never called, only inspected."""
    raise NotImplementedError


SIGNATURE = inspect.signature(reference_parameters)
PARAMETER_NAMES = tuple(SIGNATURE.parameters)
SEED_PARAMETER_COUNT = 16


def _with_extras(extras: Mapping[str, Any], return_annotation: Any) -> inspect.Signature:
    params = list(SIGNATURE.parameters.values())
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d) for name, d in extras.items()]
    return SIGNATURE.replace(parameters=params, return_annotation=return_annotation)


def entry_point(
    compute: Callable[..., Any],
    *,
    name: str,
    doc: str,
    extras: Mapping[str, Any] | None = None,
    capabilities: AttentionCapabilities | None = None,
    return_annotation: Any = inspect.Signature.empty,
) -> Callable[..., Any]:
    """A function with ``SIGNATURE`` (plus keyword-only ``extras`` and their defaults) running ``compute``.

    Each call is bound and validated once into an ``AttentionCall``; with ``capabilities`` a call outside
    them raises ``NotImplementedError`` naming every reason (a backend's own entry point; through the
    registry the same call would fall back instead). Then ``compute(call, **extras)`` runs.
    """
    extras = dict(extras or {})
    signature = _with_extras(extras, SIGNATURE.return_annotation if return_annotation is inspect.Signature.empty else return_annotation)

    def attention(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}(): {e}") from None
        bound.apply_defaults()
        extra_values = {k: bound.arguments.pop(k) for k in extras}
        call = bind_call(bound.arguments)
        if capabilities is not None:
            reasons = capabilities.unsupported_reasons(call.features)
            if reasons:
                raise NotImplementedError(f"{name} cannot serve this call: " + "; ".join(reasons))
        return compute(call, **extra_values)

    attention.__signature__ = signature
    attention.__annotations__ = {
        n: p.annotation for n, p in signature.parameters.items() if p.annotation is not inspect.Parameter.empty
    } | {"return": signature.return_annotation}
    attention.__doc__ = doc
    attention.__name__ = attention.__qualname__ = name.rsplit(".", 1)[-1]
    return attention

