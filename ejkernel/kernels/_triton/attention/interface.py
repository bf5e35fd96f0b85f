"""Public entry points of the Triton flash attention.

- ``flash_attention``: the reference parameters plus ``config`` and ``interpret``; returns ``(out, None)``.
- ``flash_attention_with_lse``: ``(out, lse)`` with ``lse [B, Sq, Hq]`` float32, the natural log of each
  row's softmax denominator (sinks included, ``-inf`` for an empty row), differentiable in both outputs, so
  partials over disjoint keys merge with ``ejkernel.ops.attention.merge.merge_partials``.
- ``make_attention(interpret)``: the registered implementation (exactly the reference signature).

Calls outside ``spec.CAPABILITIES`` raise ``NotImplementedError`` here; through the registry they go to XLA.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike
from jaxtyping import Bool, Float, Key, UInt32

from ejkernel.kernels._triton.attention.configs import (
    DECODE_MAX_ROWS,
    KernelConfig,
    choose_config,
    decode_splits,
    next_power_of_2,
    padded_head_dim,
)
from ejkernel.kernels._triton.attention.flash import decode_with_lse, flash_with_lse, pad_axis
from ejkernel.kernels._triton.attention.spec import CAPABILITIES
from ejkernel.kernels._triton.attention.tiles import Problem
from ejkernel.ops.attention.features import AttentionFeatures
from ejkernel.ops.attention.merge import sink_logits
from ejkernel.ops.attention.signature import with_reference_signature
from ejkernel.ops.attention.validation import resolve_bias, validate_attention

__all__ = ["flash_attention", "flash_attention_with_lse", "make_attention", "problem_for", "decode_problem"]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def problem_for(f: AttentionFeatures, config: KernelConfig | None, interpret: bool) -> tuple[Problem, KernelConfig]:
    """The kernels' static problem and block configuration for a validated call."""
    reasons = CAPABILITIES.unsupported_reasons(f)
    if reasons:
        raise NotImplementedError("Triton flash attention cannot serve this call: " + "; ".join(reasons))
    if config is None:
        config = choose_config(f.head_dim, f.v_head_dim, f.q_len, f.kv_len, jnp.dtype(f.dtype).itemsize,
                               dense_tiles=f.bias is not None or f.mask is not None, causal=f.causal)
    window = None
    if f.window is not None:  # wider than both sequences is the same as unbounded; keeps int32 arithmetic safe
        widest = f.q_len + f.kv_len
        window = (min(f.window[0], widest), min(f.window[1], widest))
    p = Problem(
        batch=f.batch,
        q_len=f.q_len,
        kv_len=f.kv_len,
        q_len_pad=_round_up(f.q_len, config.q_multiple),
        kv_len_pad=_round_up(f.kv_len, config.kv_multiple),
        num_q_heads=f.num_q_heads,
        num_kv_heads=f.num_kv_heads,
        head_dim=padded_head_dim(f.head_dim),
        v_head_dim=padded_head_dim(f.v_head_dim),
        softmax_scale=f.softmax_scale,
        causal=f.causal,
        window=window,
        logits_soft_cap=f.logits_soft_cap,
        bias_layout=f.bias,
        mask_layout=f.mask,
        num_sinks=max(16, next_power_of_2(f.num_sinks)) if f.num_sinks else 0,
        interpret=bool(interpret),
    )
    return p, config


def _per_kv_head(layout: tuple[str, str] | None) -> tuple[str, str] | None:
    """A bias/mask layout after folding the group into rows: per-query-head operands become per kv head."""
    return None if layout is None else (layout[0], "kv" if layout[1] == "q" else layout[1])


def decode_problem(f: AttentionFeatures, p: Problem, c: KernelConfig) -> tuple[Problem, KernelConfig] | None:
    """The packed, key-split forward problem for a decoding call, or ``None`` for the ordinary kernels.

    Decoding: at most ``DECODE_MAX_ROWS`` query rows per kv head (Sq x group), and either a GQA group to
    fold or keys to split. A bias or mask is repacked to the rows' order (per kv head: ``"q"`` heads become
    ``"kv"``).
    """
    rows = f.q_len * f.group_size
    if rows > DECODE_MAX_ROWS:
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
    config: KernelConfig | None = None,
    interpret: bool = False,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], Float[Array, "batch q_len num_q_heads"]]:
    """``(out, lse)``; see ``flash_attention`` for the arguments."""
    bias = resolve_bias(bias, attention_mask, init_bias)
    f = validate_attention(
        query, key, value, attention_mask, bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
    )
    p, c = problem_for(f, config, interpret)
    compute = jnp.dtype(f.dtype)

    def seq_pad(x, q_axis, kv_axis, value=0):
        return pad_axis(pad_axis(x, q_axis, p.q_len_pad, value), kv_axis, p.kv_len_pad, value)

    q = pad_axis(pad_axis(query.astype(compute), 1, p.q_len_pad), 3, p.head_dim)
    k = pad_axis(pad_axis(key.astype(compute), 1, p.kv_len_pad), 3, p.head_dim)
    v = pad_axis(pad_axis(value.astype(compute), 1, p.kv_len_pad), 3, p.v_head_dim)
    b = None if bias is None else seq_pad(bias, 2, 3)
    m = None if attention_mask is None else seq_pad(attention_mask, 2, 3, False)
    sinks = None if softmax_aux is None else sink_logits(softmax_aux, f.num_q_heads)
    decode = decode_problem(f, p, c)
    if decode is not None:
        out, lse = decode_with_lse(p, decode[0], decode[1], q, k, v, b, m, sinks)
    else:
        out, lse = flash_with_lse(p, c, q, k, v, b, m, sinks)
    return out[:, : f.q_len, :, : f.v_head_dim], lse[:, : f.q_len]


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
    config: KernelConfig | None = None,
    interpret: bool = False,
) -> tuple[Float[Array, "batch q_len num_q_heads v_head_dim"], None]:
    """Flash attention on NVIDIA GPUs with the semantics of the XLA reference (DESIGN §1).

    The parameters are the reference's (``ejkernel.kernels._xla.attention._interface.attention``), plus:

    Args:
      config: block sizes and launch parameters per pass; ``None`` uses ``configs.choose_config``.
      interpret: ``True`` runs Pallas' interpreter (any device, e.g. the CPU in tests).

    Returns:
      ``(output [B, Sq, Hq, Dv], None)``: a fused kernel never materialises the weights.

    Raises:
      ValueError, TypeError: bad arguments (``validate_attention``), at trace time.
      NotImplementedError: a call outside ``spec.CAPABILITIES`` (dropout, head dim > 256, softmax dtype).
    """
    out, _ = flash_attention_with_lse(
        query, key, value, attention_mask, bias, init_bias, deterministic, dropout_rng, softmax_aux,
        softmax_scale, logits_soft_cap, dtype, softmax_dtype, dropout_prob, causal, sliding_window,
        config=config, interpret=interpret,
    )
    return out, None


def make_attention(interpret: Any) -> Callable[..., tuple[Array, None]]:
    """The registered implementation: the reference signature, the measured block table."""
    return with_reference_signature(
        functools.partial(flash_attention, interpret=interpret),
        doc="Pallas-Triton flash attention (DESIGN §1 semantics); returns ``(output, None)``: no weights.",
    )
