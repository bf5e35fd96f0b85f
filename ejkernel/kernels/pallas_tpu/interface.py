"""Entry points of the TPU flash attention.

- ``flash_attention``: the reference parameters plus ``block_sizes`` and ``interpret``; returns
  ``(out, None)`` (a fused kernel has no weights to return).
- ``flash_attention_with_lse``: the same, returning ``(out, lse)`` with ``lse [B, Sq, Hq]`` float32, the log
  of each row's softmax denominator (sinks included; ``-inf`` for a row with no allowed key and no sink),
  so that partial results merge with ``ejkernel.ops.attention.merge.merge_partials``. It is
  differentiable in both outputs.
- ``registered_attention(interpret)``: the registered implementation (it takes a validated
  ``AttentionCall``), with the block-size heuristic.

Calls the kernel cannot serve (see ``capabilities.CAPABILITIES``) raise ``NotImplementedError`` here;
through the registry they go to XLA before tracing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array

from ejkernel.kernels.pallas_tpu.blocks import BlockSizes, choose_block_sizes
from ejkernel.kernels.pallas_tpu.capabilities import CAPABILITIES
from ejkernel.kernels.pallas_tpu.flash import flash_with_lse
from ejkernel.kernels.pallas_tpu.plan import Plan
from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.derivatives import reverse_mode_only
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.segments import as_ids, visible_kv_ids
from ejkernel.ops.attention.signature import entry_point
from ejkernel.ops.attention.sinks import sink_logits

__all__ = [
    "flash_attention", "flash_attention_with_lse", "flash_with_lse_call", "registered_attention",
    "registered_attention_with_lse", "plan_for", "packing_of",
]


def plan_for(f: AttentionFeatures, block_sizes: BlockSizes | None, interpret: Any, bias_dtype: Any = None) -> Plan:
    """The kernels' static plan for a call the kernel serves (``CAPABILITIES``); the heuristic picks absent
    block sizes. The window is taken as validation clamped it (``masks.clamp_window``), never clamped again."""
    if block_sizes is None:
        block_sizes = choose_block_sizes(
            f.q_len, f.kv_len, f.head_dim, f.v_head_dim,
            jnp.dtype(f.dtype).itemsize, 0 if bias_dtype is None else jnp.dtype(bias_dtype).itemsize,
            f.mask is not None,
        )
    return Plan(
        q_len=f.q_len,
        kv_len=f.kv_len,
        num_q_heads=f.num_q_heads,
        num_kv_heads=f.num_kv_heads,
        softmax_scale=f.softmax_scale,
        causal=f.causal,
        window=f.window,
        logits_soft_cap=f.logits_soft_cap,
        has_sinks=f.num_sinks > 0,
        bias_layout=f.bias,
        mask_layout=f.mask,
        dtype=f.dtype,
        blocks=block_sizes,
        interpret=interpret,
        bias_full=f.bias is not None and (f.bias[0] == "B" or f.batch == 1) and (f.bias[1] == "q" or f.num_q_heads == 1),
        segments=f.segment_ids,
        lengths=f.kv_lengths,
    )


def packing_of(call: AttentionCall) -> tuple[Array | None, Array | None, Array | None]:
    """``(q_ids [B, Sq], kv_ids [B, Skv], lengths [B])`` int32 for the kernels, ``None`` where absent; the key
    ids are the visible ones (``segments.visible_kv_ids``: keys no query may see are ``-1``)."""
    f = call.features
    q_ids = kv_ids = lengths = None
    if f.segment_ids:
        q_ids = as_ids(call.q_segment_ids)
        kv_ids = visible_kv_ids(call.q_segment_ids, call.kv_segment_ids, call.kv_lengths, f.kv_len)
    if f.kv_lengths:
        lengths = as_ids(call.kv_lengths)
    return q_ids, kv_ids, lengths


def flash_with_lse_call(
    call: AttentionCall, *, block_sizes: BlockSizes | None = None, interpret: Any = False
) -> tuple[Array, Array]:
    """``(out [B, Sq, Hq, Dv], lse [B, Sq, Hq])`` of a validated call the kernel serves."""
    f = call.features
    plan = plan_for(f, block_sizes, interpret, None if call.bias is None else call.bias.dtype)
    compute = jnp.dtype(f.dtype)
    sinks = None if call.softmax_aux is None else sink_logits(call.softmax_aux, f.num_q_heads)
    with reverse_mode_only("the Pallas-TPU flash attention"):
        return flash_with_lse(
            plan, call.query.astype(compute), call.key.astype(compute), call.value.astype(compute), call.bias,
            call.attention_mask, sinks, packing_of(call),
        )


def _without_lse(call: AttentionCall, **extras: Any) -> tuple[Array, None]:
    return flash_with_lse_call(call, **extras)[0], None


_EXTRAS = {"block_sizes": None, "interpret": False}

flash_attention_with_lse = entry_point(
    flash_with_lse_call,
    name="ejkernel.kernels.pallas_tpu.flash_attention_with_lse",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""``(out, lse)``; see ``flash_attention`` for the arguments.""",
)

flash_attention = entry_point(
    _without_lse,
    name="ejkernel.kernels.pallas_tpu.flash_attention",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""Flash attention on TPU with the semantics of the XLA reference (``docs/semantics.rst``).

    The parameters are the reference's (``ejkernel.kernels.xla.reference.attention``), plus:

    Args:
      block_sizes: tile sizes (multiples of 128); ``None`` uses ``blocks.choose_block_sizes``.
      interpret: ``False`` on a TPU; ``True`` (Pallas' generic interpreter) or a
        ``pltpu.InterpretParams()`` (the TPU interpreter, which checks DMA bounds) anywhere else.

    Returns:
      ``(output [B, Sq, Hq, Dv], None)``: a fused kernel never materialises the weights.

    Raises:
      ValueError, TypeError: bad arguments (``validate_attention``), at trace time.
      NotImplementedError: a call outside ``CAPABILITIES`` (dropout, float16, non-float32 softmax).
    """,
)


def registered_attention(interpret: Any) -> Callable[[AttentionCall], tuple[Array, None]]:
    """The registered implementation: a validated call in, ``(output, None)`` out, heuristic block sizes."""
    return functools.partial(_without_lse, interpret=interpret)


def registered_attention_with_lse(interpret: Any) -> Callable[[AttentionCall], tuple[Array, Array]]:
    """The registered ``attention_with_lse``: a validated call in, ``(output, lse [B, Sq, Hq])`` out."""
    return functools.partial(flash_with_lse_call, interpret=interpret)
