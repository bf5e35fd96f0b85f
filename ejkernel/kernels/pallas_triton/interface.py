"""Entry points of the Triton flash attention.

- ``flash_attention``: the reference parameters plus ``block_sizes`` and ``interpret``; returns ``(out, None)``.
- ``flash_attention_with_lse``: ``(out, lse)`` with ``lse [B, Sq, Hq]`` float32, the natural log of each
  row's softmax denominator (sinks included, ``-inf`` for an empty row), differentiable in both outputs, so
  partials over disjoint keys merge with ``ejkernel.ops.attention.merge.merge_partials``.
- ``registered_attention(interpret)``: the registered implementation (it takes a validated ``AttentionCall``).

Calls outside ``capabilities.CAPABILITIES`` raise ``NotImplementedError`` here; through the registry they
go to XLA.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array

from ejkernel.kernels.pallas_triton.blocks import (
    DECODE_MAX_ROWS,
    BlockSizes,
    choose_block_sizes,
    decode_splits,
    next_power_of_2,
    padded_head_dim,
)
from ejkernel.kernels.pallas_triton.capabilities import CAPABILITIES
from ejkernel.kernels.pallas_triton.flash import decode_with_lse, flash_with_lse, pad_axis
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.derivatives import reverse_mode_only
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.segments import PADDING_ID, as_ids, visible_kv_ids
from ejkernel.ops.attention.signature import entry_point
from ejkernel.ops.attention.sinks import sink_logits

__all__ = ["flash_attention", "flash_attention_with_lse", "flash_with_lse_call", "registered_attention", "registered_attention_with_lse", "plan_for", "decode_plan"]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def plan_for(f: AttentionFeatures, block_sizes: BlockSizes | None, interpret: bool) -> tuple[Plan, BlockSizes]:
    """The kernels' static plan and block sizes for a call the kernel serves (``CAPABILITIES``)."""
    if block_sizes is None:
        block_sizes = choose_block_sizes(
            f.head_dim, f.v_head_dim, f.q_len, f.kv_len, jnp.dtype(f.dtype).itemsize,
            dense_tiles=f.bias is not None or f.mask is not None, causal=f.causal,
        )
    p = Plan(
        batch=f.batch,
        q_len=f.q_len,
        kv_len=f.kv_len,
        q_len_pad=_round_up(f.q_len, block_sizes.q_multiple),
        kv_len_pad=_round_up(f.kv_len, block_sizes.kv_multiple),
        num_q_heads=f.num_q_heads,
        num_kv_heads=f.num_kv_heads,
        head_dim=padded_head_dim(f.head_dim),
        v_head_dim=padded_head_dim(f.v_head_dim),
        softmax_scale=f.softmax_scale,
        causal=f.causal,
        window=f.window,
        logits_soft_cap=f.logits_soft_cap,
        bias_layout=f.bias,
        mask_layout=f.mask,
        num_sinks=max(16, next_power_of_2(f.num_sinks)) if f.num_sinks else 0,
        segments=f.segment_ids,
        lengths=f.kv_lengths,
        interpret=bool(interpret),
    )
    return p, block_sizes


def _per_kv_head(layout: tuple[str, str] | None) -> tuple[str, str] | None:
    """A bias/mask layout after folding the group into rows: per-query-head operands become per kv head."""
    return None if layout is None else (layout[0], "kv" if layout[1] == "q" else layout[1])


def decode_plan(f: AttentionFeatures, p: Plan, c: BlockSizes) -> tuple[Plan, BlockSizes] | None:
    """The packed, key-split forward problem for a decoding call, or ``None`` for the ordinary kernels.

    Decoding: at most ``DECODE_MAX_ROWS`` query rows per kv head (Sq x group), and either a GQA group to
    fold or keys to split. A bias or mask is repacked to the rows' order (per kv head: ``"q"`` heads become
    ``"kv"``). Key lengths are served there; segment ids are not (their per-row ids do not survive the
    folding), so such calls take the ordinary kernels.
    """
    rows = f.q_len * f.group_size
    if rows > DECODE_MAX_ROWS or f.segment_ids:
        return None
    forward = dataclasses.replace(c.forward, block_q=max(16, next_power_of_2(rows)))
    kv_blocks = p.kv_len_pad // forward.block_k
    splits = c.kv_splits or decode_splits(f.batch * f.num_kv_heads, kv_blocks)
    splits = max(1, min(splits, kv_blocks))
    if f.group_size == 1 and splits == 1:
        return None
    pp = dataclasses.replace(
        p, q_len_pad=forward.block_q, num_q_heads=f.num_kv_heads, num_sinks=0, pack=f.group_size,
        kv_splits=splits, bias_layout=_per_kv_head(p.bias_layout), mask_layout=_per_kv_head(p.mask_layout),
    )
    return pp, dataclasses.replace(c, forward=forward)


def flash_with_lse_call(
    call: AttentionCall, *, block_sizes: BlockSizes | None = None, interpret: bool = False
) -> tuple[Array, Array]:
    """``(out [B, Sq, Hq, Dv], lse [B, Sq, Hq])`` of a validated call the kernel serves."""
    f = call.features
    p, c = plan_for(f, block_sizes, interpret)
    compute = jnp.dtype(f.dtype)

    def seq_pad(x, q_axis, kv_axis, value=0):
        return pad_axis(pad_axis(x, q_axis, p.q_len_pad, value), kv_axis, p.kv_len_pad, value)

    q = pad_axis(pad_axis(call.query.astype(compute), 1, p.q_len_pad), 3, p.head_dim)
    k = pad_axis(pad_axis(call.key.astype(compute), 1, p.kv_len_pad), 3, p.head_dim)
    v = pad_axis(pad_axis(call.value.astype(compute), 1, p.kv_len_pad), 3, p.v_head_dim)
    # The kernels' logits are float32: a wider bias or sink (float64 under x64) is taken at that dtype.
    b = None if call.bias is None else seq_pad(call.bias.astype(jnp.float32), 2, 3)
    m = None if call.attention_mask is None else seq_pad(call.attention_mask, 2, 3, False)
    sinks = None if call.softmax_aux is None else sink_logits(call.softmax_aux.astype(jnp.float32), f.num_q_heads)
    packing = _packing(call, p)
    decode = decode_plan(f, p, c)
    with reverse_mode_only("the Pallas-Triton flash attention"):
        if decode is not None:
            out, lse = decode_with_lse(p, decode[0], decode[1], q, k, v, b, m, sinks, packing)
        else:
            out, lse = flash_with_lse(p, c, q, k, v, b, m, sinks, packing)
    return out[:, : f.q_len, :, : f.v_head_dim], lse[:, : f.q_len]


def _packing(call: AttentionCall, p: Plan) -> tuple[Array | None, Array | None, Array | None]:
    """``(q_ids [B, Sq_pad], kv_ids [B, Skv_pad], lengths [B])`` int32 for the kernels (``None`` where absent):
    the key ids are the visible ones (``segments.visible_kv_ids``), the padding ``-1``."""
    q_ids = kv_ids = lengths = None
    if p.segments:
        q_ids = pad_axis(as_ids(call.q_segment_ids), 1, p.q_len_pad, PADDING_ID)
        visible = visible_kv_ids(call.q_segment_ids, call.kv_segment_ids, call.kv_lengths, p.kv_len)
        kv_ids = pad_axis(visible, 1, p.kv_len_pad, PADDING_ID)
    if p.lengths:
        lengths = as_ids(call.kv_lengths)
    return q_ids, kv_ids, lengths


def _without_lse(call: AttentionCall, **extras: Any) -> tuple[Array, None]:
    return flash_with_lse_call(call, **extras)[0], None


_EXTRAS = {"block_sizes": None, "interpret": False}

flash_attention_with_lse = entry_point(
    flash_with_lse_call,
    name="ejkernel.kernels.pallas_triton.flash_attention_with_lse",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""``(out, lse)``; see ``flash_attention`` for the arguments.""",
)

flash_attention = entry_point(
    _without_lse,
    name="ejkernel.kernels.pallas_triton.flash_attention",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""Flash attention on NVIDIA GPUs with the semantics of the XLA reference (``docs/semantics.rst``).

    The parameters are the reference's (``ejkernel.kernels.xla.reference.attention``), plus:

    Args:
      block_sizes: block sizes and launch parameters per pass; ``None`` uses ``blocks.choose_block_sizes``.
      interpret: ``True`` runs Pallas' interpreter (any device, e.g. the CPU in tests).

    Returns:
      ``(output [B, Sq, Hq, Dv], None)``: a fused kernel never materialises the weights.

    Raises:
      ValueError, TypeError: bad arguments (``validate_attention``), at trace time.
      NotImplementedError: a call outside ``CAPABILITIES`` (dropout, head dim > 256, softmax dtype).
    """,
)


def registered_attention(interpret: Any) -> Callable[[AttentionCall], tuple[Array, None]]:
    """The registered implementation: a validated call in, ``(output, None)`` out, the measured block table."""
    return functools.partial(_without_lse, interpret=interpret)


def registered_attention_with_lse(interpret: Any) -> Callable[[AttentionCall], tuple[Array, Array]]:
    """The registered ``attention_with_lse``: a validated call in, ``(output, lse [B, Sq, Hq])`` out."""
    return functools.partial(flash_with_lse_call, interpret=interpret)
