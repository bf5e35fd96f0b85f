"""``ejkernel bench packing``: packed and variable-length sequences against the calls they replace.

Two comparisons, each beside the dense-mask way of saying the same thing:

* ``packed`` (causal, forward+backward): one row of ``tokens`` tokens holding ``docs`` documents of
  ``tokens / docs`` tokens (``q_segment_ids = kv_segment_ids``), against the same documents as a batch of
  ``docs`` rows, and against the packed row with the equivalent block-diagonal causal ``[1, 1, T, T]`` mask.
  Target: packed within ``PACKED_TARGET`` times the batch.
* ``kv_lengths`` (decoding, forward only): one query per row (GQA) against a cache of ``cache`` keys
  filled to half (``kv_lengths = cache / 2``), against the full cache, and against the half-full cache
  as a ``[B, 1, 1, cache]`` mask. Target: half-full at most ``HALF_CACHE_TARGET`` times the full cache.

Timing is ``timing.time_calls`` (rounds of back-to-back calls, one sync per round), each call jitted once.
``ratios`` states each target's measured ratio.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.bench.timing import Timing, time_calls
from ejkernel.errors import FallbackWarning
from ejkernel.registry import get_kernel

__all__ = ["PackingConfig", "PackingCall", "packing_calls", "run_packing", "ratios", "format_rows",
           "PACKED_TARGET", "HALF_CACHE_TARGET", "CASES"]

PACKED_TARGET = 1.15
HALF_CACHE_TARGET = 0.6
CASES = ("packed", "kv_lengths")


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Sizes of both comparisons (defaults: the issue's H200 targets) and the call's dtype."""

    tokens: int = 16384
    docs: int = 8
    heads: int = 16
    head_dim: int = 128
    cache: int = 65536
    decode_batch: int = 8
    decode_heads: int = 32
    decode_kv_heads: int = 8
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.tokens % self.docs:
            raise ValueError(f"tokens ({self.tokens}) must be a multiple of docs ({self.docs})")
        if self.cache < 2:
            raise ValueError(f"cache must be >= 2, got {self.cache}")
        if self.decode_heads % self.decode_kv_heads:
            raise ValueError(f"decode_heads ({self.decode_heads}) must be a multiple of decode_kv_heads ({self.decode_kv_heads})")


@dataclasses.dataclass(frozen=True)
class PackingCall:
    """One timed call: ``case`` and ``variant`` name it; ``backward`` times forward+backward."""

    case: str
    variant: str
    q_shape: tuple[int, ...]
    kv_shape: tuple[int, ...]
    causal: bool
    backward: bool
    extras: Callable[[], dict[str, Any]]  # the packing or mask arguments, built on the device


def packing_calls(c: PackingConfig, cases: tuple[str, ...] = CASES) -> list[PackingCall]:
    """The calls of the selected comparisons, in report order."""
    calls = []
    if "packed" in cases:
        t, n, doc = c.tokens, c.docs, c.tokens // c.docs
        ids = np.repeat(np.arange(n, dtype=np.int32), doc)[None]

        def segments() -> dict[str, Any]:  # one array for both sides, as self-attention in a model passes it
            return {"segment_ids": jnp.asarray(ids)}

        def block_diagonal() -> dict[str, Any]:
            same = jnp.asarray(ids[0])[:, None] == jnp.asarray(ids[0])[None, :]
            return {"attention_mask": same[None, None]}

        row, batch = (1, t, c.heads, c.head_dim), (n, doc, c.heads, c.head_dim)
        calls += [
            PackingCall("packed", "segment_ids", row, row, True, True, segments),
            PackingCall("packed", "batch", batch, batch, True, True, dict),
            PackingCall("packed", "dense_mask", row, row, True, True, block_diagonal),
        ]
    if "kv_lengths" in cases:
        b, half = c.decode_batch, c.cache // 2
        q = (b, 1, c.decode_heads, c.head_dim)
        kv = (b, c.cache, c.decode_kv_heads, c.head_dim)

        def lengths() -> dict[str, Any]:
            return {"kv_lengths": jnp.full((b,), half, jnp.int32)}

        def length_mask() -> dict[str, Any]:
            return {"attention_mask": (jnp.arange(c.cache) < half)[None, None, None, :].repeat(b, 0)}

        calls += [
            PackingCall("kv_lengths", "half_cache", q, kv, True, False, lengths),
            PackingCall("kv_lengths", "full_cache", q, kv, True, False, dict),
            PackingCall("kv_lengths", "dense_mask", q, kv, True, False, length_mask),
        ]
    return calls


def packing_arguments(extras: dict[str, Any]) -> dict[str, Any]:
    """The call's keyword arguments from a ``PackingCall``'s extras: ``segment_ids`` (one traced array) is
    passed as both ``q_segment_ids`` and ``kv_segment_ids``, the same array, as a model's self-attention
    passes it (inside ``jit`` two arguments would be two arrays, and the kernels would check every key id
    against the query ids)."""
    extras = dict(extras)
    if "segment_ids" in extras:
        ids = extras.pop("segment_ids")
        extras.update(q_segment_ids=ids, kv_segment_ids=ids)
    return extras


def _function(kernel: Any, call: PackingCall, dtype: str) -> Callable[..., Any]:
    def forward(q, k, v, extras):
        return kernel(q, k, v, causal=call.causal, dtype=dtype, **packing_arguments(extras))[0]

    if not call.backward:
        return jax.jit(forward)

    def loss(q, k, v, extras):
        return jnp.sum(forward(q, k, v, extras).astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _inputs(call: PackingCall, dtype: str, seed: int) -> tuple[Any, ...]:
    keys = jax.random.split(jax.random.key(seed), 3)
    dt = jnp.dtype(dtype)
    q = jax.random.normal(keys[0], call.q_shape, dt)
    k = jax.random.normal(keys[1], call.kv_shape, dt)
    v = jax.random.normal(keys[2], call.kv_shape, dt)
    return q, k, v, call.extras()


def run_packing(c: PackingConfig, cases: tuple[str, ...] = CASES, *, platform: str = "auto", seed: int = 0,
                interpret: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None,
                **timing: Any) -> list[dict[str, Any]]:
    """Times every call of ``packing_calls`` on ``platform``; one row per call: its names, the implementation
    that served it (``explain``) and the median/min/max milliseconds. ``timing`` goes to ``time_calls``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        kernel = get_kernel("attention", platform, interpret=interpret)
    rows = []
    for call in packing_calls(c, cases):
        inputs = _inputs(call, c.dtype, seed)
        served = kernel.explain(*inputs[:3], causal=call.causal, dtype=c.dtype, **packing_arguments(inputs[3])).chosen.label
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            t: Timing = time_calls(_function(kernel, call, c.dtype), [inputs], **timing)
        row = {"case": call.case, "variant": call.variant, "served_by": served, "mode": "fwd+bwd" if call.backward else "fwd",
               "q_shape": list(call.q_shape), "kv_shape": list(call.kv_shape), "median_ms": t.median_s * 1e3,
               "min_ms": t.min_s * 1e3, "max_ms": t.max_s * 1e3, "rounds": t.rounds, "calls_per_round": t.calls_per_round}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target's measured ratio (medians): packed / batch, half cache / full cache, and each dense mask
    against the packing argument it replaces."""
    ms = {(r["case"], r["variant"]): r["median_ms"] for r in rows}
    wanted = (
        ("packed/batch", ("packed", "segment_ids"), ("packed", "batch"), PACKED_TARGET),
        ("packed dense_mask/segment_ids", ("packed", "dense_mask"), ("packed", "segment_ids"), None),
        ("half_cache/full_cache", ("kv_lengths", "half_cache"), ("kv_lengths", "full_cache"), HALF_CACHE_TARGET),
        ("kv_lengths dense_mask/half_cache", ("kv_lengths", "dense_mask"), ("kv_lengths", "half_cache"), None),
    )
    out = []
    for name, num, den, target in wanted:
        if num in ms and den in ms:
            ratio = ms[num] / ms[den]
            out.append({"ratio": name, "value": ratio, "target": target, "met": None if target is None else ratio <= target})
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The table of calls and the ratios, as text."""
    lines = [f"{'case':<11} {'variant':<12} {'mode':<8} {'served by':<14} {'median ms':>10} {'min':>9} {'max':>9}"]
    for r in rows:
        lines.append(f"{r['case']:<11} {r['variant']:<12} {r['mode']:<8} {r['served_by']:<14} {r['median_ms']:>10.3f} "
                     f"{r['min_ms']:>9.3f} {r['max_ms']:>9.3f}")
    for q in ratios(rows):
        verdict = "" if q["target"] is None else f"  (target <= {q['target']}: {'met' if q['met'] else 'NOT met'})"
        lines.append(f"{q['ratio']}: {q['value']:.3f}{verdict}")
    return "\n".join(lines) + "\n"
