"""Entry points of the Mosaic-GPU (Hopper) flash attention.

- ``flash_attention``: the reference parameters plus keyword-only ``forward_blocks`` (``blocks.ForwardBlocks``),
  ``backward`` (``"mosaic"`` or ``"triton"``: which backward kernels run; ``None`` chooses by head dim,
  ``default_backward``), ``backward_blocks``
  (the chosen backward's blocks: ``pallas_triton.blocks.BlockSizes`` or ``blocks.BackwardBlocks``) and
  ``interpret``; returns ``(out, None)``.
- ``flash_attention_with_lse``: ``(out, lse)`` with ``lse [B, Sq, Hq]`` float32, the natural log of each
  row's softmax denominator (``-inf`` for an empty row), differentiable in both outputs.
- ``registered_attention(interpret)`` / ``registered_attention_with_lse``: the registered implementations
  (``default_backward``'s choice).

Calls outside ``capabilities.CAPABILITIES`` raise ``NotImplementedError`` here; through the registry they
go to the next implementation (Triton, then XLA).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array

from ejkernel.kernels.pallas_mosaic_gpu.blocks import (
    NATIVE_BACKWARD_HEAD_DIMS,
    BackwardBlocks,
    ForwardBlocks,
    choose_backward_blocks,
    choose_forward_blocks,
    padded_head_dim,
)
from ejkernel.kernels.pallas_mosaic_gpu.capabilities import CAPABILITIES
from ejkernel.kernels.pallas_mosaic_gpu.flash import BACKWARDS, Blocks, flash_with_lse
from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan
from ejkernel.kernels.pallas_triton.blocks import BlockSizes, choose_block_sizes
from ejkernel.kernels.pallas_triton.flash import pad_axis
from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.derivatives import reverse_mode_only
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.merge import add_sinks
from ejkernel.ops.attention.segments import PADDING_ID, as_ids, visible_kv_ids, zero_invisible_for_kernels
from ejkernel.ops.attention.signature import entry_point
from ejkernel.ops.attention.sinks import sinks_lse

__all__ = [
    "flash_attention",
    "flash_attention_with_lse",
    "flash_with_lse_call",
    "registered_attention",
    "registered_attention_with_lse",
    "plan_for",
    "default_backward",
]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_backward(padded_dim: int) -> str:
    """The backward that runs when none is named: the native kernels at the head dims they serve (on the
    H200 they take B2 S8192 H16 D128 forward+backward from 399 to 464 TFLOP/s, causal 374 to 462:
    ``benchmarks/NOTES-mosaic_gpu.md``), the Triton ones above (D256)."""
    return "mosaic" if padded_dim in NATIVE_BACKWARD_HEAD_DIMS else "triton"


def _backward_blocks(
    f: AttentionFeatures, d: int, backward: str | None, backward_blocks: BlockSizes | BackwardBlocks | None
) -> BlockSizes | BackwardBlocks:
    """The chosen backward's blocks: ``backward_blocks`` checked against the choice, or the heuristic's."""
    if backward is None:
        backward = default_backward(d)
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    kind = BackwardBlocks if backward == "mosaic" else BlockSizes
    if backward_blocks is not None:
        if not isinstance(backward_blocks, kind):
            raise TypeError(
                f"backward={backward!r} takes backward_blocks of type {kind.__name__}, got {backward_blocks!r}"
            )
        return backward_blocks
    if backward == "mosaic":
        return choose_backward_blocks(d)
    return choose_block_sizes(d, d, f.q_len, f.kv_len, jnp.dtype(f.dtype).itemsize, causal=f.causal)


def plan_for(
    f: AttentionFeatures,
    forward_blocks: ForwardBlocks | None,
    backward_blocks: BlockSizes | BackwardBlocks | None,
    interpret: bool,
    backward: str | None = None,
) -> tuple[Plan, Blocks]:
    """The kernel's static plan and blocks for a call it serves; sequences are padded to a multiple of
    every pass's blocks (the forward's and the chosen backward's)."""
    d = padded_head_dim(f.head_dim)
    fwd = forward_blocks or choose_forward_blocks(d, f.kv_len)
    bwd = _backward_blocks(f, d, backward, backward_blocks)
    p = Plan(
        batch=f.batch,
        q_len=f.q_len,
        kv_len=f.kv_len,
        q_len_pad=_round_up(f.q_len, max(fwd.q_multiple, bwd.q_multiple)),
        kv_len_pad=_round_up(f.kv_len, max(fwd.block_k, bwd.kv_multiple)),
        num_q_heads=f.num_q_heads,
        num_kv_heads=f.num_kv_heads,
        head_dim=d,
        softmax_scale=f.softmax_scale,
        causal=f.causal,
        window=f.window,
        logits_soft_cap=f.logits_soft_cap,
        segments=f.segment_ids,
        lengths=f.kv_lengths,
        interpret=bool(interpret),
    )
    return p, Blocks(fwd, bwd)


def flash_with_lse_call(
    call: AttentionCall,
    *,
    forward_blocks: ForwardBlocks | None = None,
    backward: str | None = None,
    backward_blocks: BlockSizes | BackwardBlocks | None = None,
    interpret: bool = False,
) -> tuple[Array, Array]:
    """``(out [B, Sq, Hq, D], lse [B, Sq, Hq])`` of a validated call the kernel serves."""
    f = call.features
    p, c = plan_for(f, forward_blocks, backward_blocks, interpret, backward)
    compute = jnp.dtype(f.dtype)

    def padded(x, length):
        return pad_axis(pad_axis(x.astype(compute), 1, length), 3, p.head_dim)

    q, k, v = padded(call.query, p.q_len_pad), padded(call.key, p.kv_len_pad), padded(call.value, p.kv_len_pad)
    ids, visible = _packing(call, p)
    if visible is not None:
        k, v = zero_invisible_for_kernels(k, visible), zero_invisible_for_kernels(v, visible)
    with reverse_mode_only("the Mosaic-GPU flash attention"):
        out, lse = flash_with_lse(p, c, q, k, v, ids)
    out, lse = out[:, : f.q_len, :, : f.v_head_dim], lse[:, : f.q_len]
    if call.softmax_aux is None:
        return out, lse
    # The sinks are a partial result with no value (``merge``): folding them in after the kernels is exact,
    # and their gradient and the lse cotangent it sends the kernels come from differentiating this merge.
    out, lse = add_sinks(out, lse, sinks_lse(call.softmax_aux, f.num_q_heads))
    return out.astype(compute), lse.astype(jnp.float32)


def _packing(call: AttentionCall, p: Plan) -> tuple[tuple[Array | None, Array | None, Array | None], Array | None]:
    """``((q_ids [B, Sq_pad], kv_ids [B, Skv_pad], lengths [B]), visible)``, int32, ``None`` where absent.

    ``visible [B, Skv_pad]`` is ``segments.visible_kv_ids`` padded with ``-1`` (the keys some query may see,
    by the ids and the lengths), for ``zero_invisible_for_kernels``; with segment ids it is also the kernels' key ids.
    """
    if not (p.segments or p.lengths):
        return (None, None, None), None
    q_src = call.q_segment_ids if p.segments else jnp.zeros((p.batch, p.q_len), jnp.int32)
    visible = visible_kv_ids(q_src, call.kv_segment_ids if p.segments else None, call.kv_lengths, p.kv_len)
    visible = pad_axis(visible, 1, p.kv_len_pad, PADDING_ID)
    q_ids = pad_axis(as_ids(call.q_segment_ids), 1, p.q_len_pad, PADDING_ID) if p.segments else None
    lengths = as_ids(call.kv_lengths) if p.lengths else None
    return (q_ids, visible if p.segments else None, lengths), visible


def _without_lse(call: AttentionCall, **extras: Any) -> tuple[Array, None]:
    return flash_with_lse_call(call, **extras)[0], None


_EXTRAS = {"forward_blocks": None, "backward": None, "backward_blocks": None, "interpret": False}

flash_attention_with_lse = entry_point(
    flash_with_lse_call,
    name="ejkernel.kernels.pallas_mosaic_gpu.flash_attention_with_lse",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""``(out, lse)``; see ``flash_attention`` for the arguments.""",
)

flash_attention = entry_point(
    _without_lse,
    name="ejkernel.kernels.pallas_mosaic_gpu.flash_attention",
    extras=_EXTRAS,
    capabilities=CAPABILITIES,
    doc="""Flash attention on Hopper GPUs with the semantics of the XLA reference (``docs/semantics.rst``).

    The parameters are the reference's (``ejkernel.kernels.xla.reference.attention``), plus:

    Args:
      forward_blocks: the forward kernel's ``blocks.ForwardBlocks``; ``None`` uses ``blocks.choose_forward_blocks``.
      backward: which backward kernels run: ``"mosaic"`` (the native Mosaic-GPU ones, ``backward.py``; head
        dims up to 128) or ``"triton"`` (the Triton backend's); ``None`` (the default) takes the native ones
        where they serve the head dim and the Triton ones above (``default_backward``).
      backward_blocks: the chosen backward's blocks: for ``"triton"`` a ``pallas_triton.blocks.BlockSizes``
        (only ``dkv`` and ``dq`` are used; ``None`` uses ``pallas_triton.blocks.choose_block_sizes``), for
        ``"mosaic"`` a ``blocks.BackwardBlocks`` (``None`` uses ``blocks.choose_backward_blocks``).
      interpret: ``True`` runs Mosaic-GPU's and Pallas' interpreters (the CPU in tests).

    Returns:
      ``(output [B, Sq, Hq, D], None)``.

    Raises:
      ValueError, TypeError: bad arguments (``validate_attention``), an unknown ``backward`` or blocks of the
        other backward's type, at trace time.
      NotImplementedError: a call outside ``CAPABILITIES`` (bias, mask, float32, decoding, ...), or
        ``backward="mosaic"`` at a head dim above 128.
    """,
)


def registered_attention(interpret: Any) -> Callable[[AttentionCall], tuple[Array, None]]:
    """The registered implementation: a validated call in, ``(output, None)`` out, the heuristic's blocks."""
    return functools.partial(_without_lse, interpret=interpret)


def registered_attention_with_lse(interpret: Any) -> Callable[[AttentionCall], tuple[Array, Array]]:
    """The registered ``attention_with_lse``: a validated call in, ``(output, lse [B, Sq, Hq])`` out."""
    return functools.partial(flash_with_lse_call, interpret=interpret)
