"""Public entry points of the TPU flash attention.

- ``flash_attention``: the reference parameters plus ``block_sizes`` and ``interpret``; returns
  ``(out, None)`` (a fused kernel has no weights to return).
- ``flash_attention_with_lse``: the same, returning ``(out, lse)`` with ``lse [B, Sq, Hq]`` float32, the log
  of each row's softmax denominator (sinks included; ``-inf`` for a row with no allowed key and no sink),
  so that partial results merge with ``ejkernel.ops.attention.merge.merge_partials``. It is
  differentiable in both outputs.
- ``make_attention(interpret)``: the registered implementation, with exactly the reference signature and
  the block-size heuristic.

Calls the kernel cannot serve (see ``spec.CAPABILITIES``) raise ``NotImplementedError`` here; through the
registry they go to XLA before tracing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike
from jaxtyping import Bool, Float, Key, UInt32

from ejkernel.kernels._pallas.tpu.attention.blocks import BlockSizes, choose_block_sizes
from ejkernel.kernels._pallas.tpu.attention.config import KernelConfig
from ejkernel.kernels._pallas.tpu.attention.flash import flash_with_lse
from ejkernel.kernels._pallas.tpu.attention.spec import CAPABILITIES
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.merge import sink_logits
from ejkernel.ops.attention.signature import with_reference_signature
from ejkernel.ops.attention.validation import resolve_bias, validate_attention

__all__ = ["flash_attention", "flash_attention_with_lse", "make_attention", "kernel_config"]


def kernel_config(f: AttentionFeatures, block_sizes: BlockSizes | None, interpret: Any,
                  bias_dtype: Any = None) -> KernelConfig:
    """The kernels' static configuration for a validated call; the heuristic picks absent block sizes."""
    reasons = CAPABILITIES.unsupported_reasons(f)
    if reasons:
        raise NotImplementedError("TPU flash attention cannot serve this call: " + "; ".join(reasons))
    if block_sizes is None:
        block_sizes = choose_block_sizes(
            f.q_len, f.kv_len, f.head_dim, f.v_head_dim,
            jnp.dtype(f.dtype).itemsize, 0 if bias_dtype is None else jnp.dtype(bias_dtype).itemsize,
            f.mask is not None,
        )
    window = None
    if f.window is not None:
        widest = f.q_len + f.kv_len
        window = (min(f.window[0], widest), min(f.window[1], widest))
    return KernelConfig(
        q_len=f.q_len,
        kv_len=f.kv_len,
        num_q_heads=f.num_q_heads,
        num_kv_heads=f.num_kv_heads,
        softmax_scale=f.softmax_scale,
        causal=f.causal,
        window=window,
        logits_soft_cap=f.logits_soft_cap,
        has_sinks=f.num_sinks > 0,
        bias_layout=f.bias,
        mask_layout=f.mask,
        dtype=f.dtype,
        blocks=block_sizes,
        interpret=interpret,
        bias_full=f.bias is not None and (f.bias[0] == "B" or f.batch == 1) and (f.bias[1] == "q" or f.num_q_heads == 1),
    )


def flash_attention_with_lse(
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
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch q_len num_q_heads"]]:
    """``(out, lse)``; see ``flash_attention`` for the arguments."""
    bias = resolve_bias(bias, attention_mask, init_bias)
    f = validate_attention(
        query, key, value, attention_mask, bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
    )
    cfg = kernel_config(f, block_sizes, interpret, None if bias is None else bias.dtype)
    compute = jnp.dtype(f.dtype)
    sinks = None if softmax_aux is None else sink_logits(softmax_aux, f.num_q_heads)
    return flash_with_lse(
        cfg, query.astype(compute), key.astype(compute), value.astype(compute), bias, attention_mask, sinks,
    )


def flash_attention(
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
    block_sizes: BlockSizes | None = None,
    interpret: Any = False,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], None]:
    """Flash attention on TPU with the semantics of the XLA reference (DESIGN §1).

    The parameters are the reference's (``ejkernel.kernels._xla.attention._interface.attention``), plus:

    Args:
      block_sizes: tile sizes (multiples of 128); ``None`` uses ``blocks.choose_block_sizes``.
      interpret: ``False`` on a TPU; ``True`` (Pallas' generic interpreter) or a
        ``pltpu.InterpretParams()`` (the TPU interpreter, which checks DMA bounds) anywhere else.

    Returns:
      ``(output [B, Sq, Hq, Dv], None)``: a fused kernel never materialises the weights.

    Raises:
      ValueError, TypeError: bad arguments (``validate_attention``), at trace time.
      NotImplementedError: a call outside ``spec.CAPABILITIES`` (dropout, float16, non-float32 softmax).
    """
    out, _ = flash_attention_with_lse(
        query, key, value, attention_mask, bias, init_bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
        block_sizes=block_sizes, interpret=interpret,
    )
    return out, None


def make_attention(interpret: Any) -> Callable[..., tuple[Array, None]]:
    """The registered implementation: the reference signature, heuristic block sizes."""
    return with_reference_signature(
        functools.partial(flash_attention, interpret=interpret),
        doc="Pallas-TPU flash attention (DESIGN §1 semantics); returns ``(output, None)``: no weights.",
    )

