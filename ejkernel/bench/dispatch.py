"""Dispatch overhead: ``ejkernel.attention`` against the implementation it chooses, called directly.

Under ``jax.jit`` dispatch happens while tracing, so the two must lower to the same program:
``same_program`` compares ``jax.jit(f).lower(...).as_text()`` after ``normalize_hlo`` drops what names
and source locations alone change. Eagerly, dispatch runs on every call: ``eager_overhead`` times both
back to back (interleaved rounds, median per call) and reports the difference in microseconds.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.bench.flops import MODES
from ejkernel.bench.runner import build_step

__all__ = ["normalize_hlo", "lowered_text", "same_program", "eager_overhead", "dispatch_report"]

_LOC_LINE = re.compile(r"^#loc\d*\s*=.*$", re.MULTILINE)
_LOC_REF = re.compile(r"\s*loc\((?:[^()]|\([^()]*\))*\)")
_INFO_ATTR = re.compile(r'\s*jax\.(?:result_info|arg_info)\s*=\s*"[^"]*"\s*,?')
_EMPTY_ATTRS = re.compile(r"\s*\{\s*\}")
_MODULE = re.compile(r"module @[\w.$-]+")
_SYMBOL = re.compile(r"@([\w.$-]+)")


def normalize_hlo(text: str) -> str:
    """StableHLO text without source locations, argument/result names, or function and module names.

    Private function symbols are renamed ``@f0, @f1, ...`` in order of first appearance, so two
    programs that differ only in what their Python functions were called compare equal.
    """
    text = _LOC_LINE.sub("", text)
    text = _LOC_REF.sub("", text)
    text = _INFO_ATTR.sub("", text)
    text = _EMPTY_ATTRS.sub("", text)
    text = _MODULE.sub("module @m", text)
    names: dict[str, str] = {"main": "main", "m": "m"}

    def rename(match: re.Match) -> str:
        name = match.group(1)
        if name not in names:
            names[name] = f"f{len(names) - 2}"
        return "@" + names[name]

    text = _SYMBOL.sub(rename, text)
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def _no_traceback_locations() -> Iterator[None]:
    """Lowers without Python tracebacks in MLIR locations, restoring the setting afterwards.

    By default JAX records the caller's whole traceback in every location, and Pallas-Triton serialises
    those into its kernel IR: a kernel reached through ``ejkernel.attention`` (more frames) would then
    differ from the same kernel called directly by its locations alone.
    """
    option = "jax_traceback_in_locations_limit"
    values = getattr(jax.config, "values", None)
    previous = values.get(option) if isinstance(values, dict) else getattr(jax.config, option, None)
    if previous is None:  # a JAX without the option: nothing to switch off
        yield
        return
    jax.config.update(option, 0)
    try:
        yield
    finally:
        jax.config.update(option, previous)


def lowered_text(f: Callable[..., Any], args: Sequence[Any], platforms: Sequence[str] | None = None) -> str:
    """``jax.jit(f)`` lowered on ``args`` (arrays or ``ShapeDtypeStruct``s), for ``platforms`` if given."""
    traced = jax.jit(f).trace(*args)
    with _no_traceback_locations():
        lowered = traced.lower(lowering_platforms=tuple(platforms)) if platforms else traced.lower()
    return lowered.as_text()


def same_program(
    f: Callable[..., Any], g: Callable[..., Any], *args: Any, platforms: Sequence[str] | None = None
) -> tuple[bool, str]:
    """Whether ``jax.jit(f)`` and ``jax.jit(g)`` lower to the same program on ``args``; else a diff."""
    a, b = (normalize_hlo(lowered_text(fn, args, platforms)) for fn in (f, g))
    if a == b:
        return True, ""
    diff = difflib.unified_diff(a.splitlines(), b.splitlines(), "dispatched", "direct", lineterm="", n=1)
    return False, "\n".join(list(diff)[:40])


def _interleaved_us(fns: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, list[float]]:
    """Per-call microseconds of each function, one sample per round, the functions taking turns."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs = [fn() for _ in range(calls)]
            jax.block_until_ready(outs)
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return samples


def eager_overhead(
    dispatched: Callable[[], Any],
    direct: Callable[[], Any],
    decide: Callable[[], Any] | None = None,
    *,
    rounds: int = 15,
    calls: int = 10,
) -> dict[str, float]:
    """Eager per-call microseconds of both and their difference (of medians, and of minima).

    Eager op-by-op execution is noisy; the difference of minima (noise only ever adds) is the steadier
    estimate. ``decide``, if given, is the dispatch decision alone (``ejkernel.explain``), timed too.
    """
    fns = {"dispatched": dispatched, "direct": direct}
    if decide is not None:
        fns["decide"] = decide
    s = _interleaved_us(fns, rounds, calls)
    med = {name: statistics.median(v) for name, v in s.items()}
    low = {name: min(v) for name, v in s.items()}
    report = {
        "dispatched_us": med["dispatched"],
        "direct_us": med["direct"],
        "overhead_us": med["dispatched"] - med["direct"],
        "overhead_min_us": low["dispatched"] - low["direct"],
        "dispatched_range_us": [low["dispatched"], max(s["dispatched"])],
        "direct_range_us": [low["direct"], max(s["direct"])],
    }
    if decide is not None:
        report["decision_us"] = med["decide"]
        report["decision_range_us"] = [low["decide"], max(s["decide"])]
    return report


def dispatch_report(
    *,
    batch: int = 1,
    seq_len: int = 128,
    num_heads: int = 4,
    head_dim: int = 64,
    dtype: str = "bfloat16",
    eager_rounds: int = 15,
    eager_calls: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Program identity (forward and forward+backward, causal and not) and eager overhead at a small shape."""
    import ejkernel

    keys = jax.random.split(jax.random.key(seed), 4)
    shape = (batch, seq_len, num_heads, head_dim)
    q, k, v, d_out = (jax.random.normal(key, shape, jnp.dtype(dtype)) for key in keys)
    kernel = ejkernel.get_kernel("attention")
    decision = kernel.explain(q, k, v, dtype=dtype)
    # Takes a bound call: the direct path binds and validates, then runs. Eager calls are not differentiated,
    # so a split call runs on its forward's implementation (registry.Decision.forward).
    impl = (decision.forward or decision.chosen).build(False)
    checks = []
    for causal in (False, True):
        served = kernel.explain(q, k, v, causal=causal, dtype=dtype)
        for mode in MODES:
            spec = served.forward if mode == "fwd" and served.forward is not None else served.chosen
            direct_impl = spec.build(False)
            dispatched = build_step(
                lambda q, k, v, c=causal: ejkernel.attention(q, k, v, causal=c, dtype=dtype)[0], mode
            )
            direct = build_step(
                lambda q, k, v, c=causal, f=direct_impl: f(kernel.bind(q, k, v, causal=c, dtype=dtype))[0], mode
            )
            same, diff = same_program(dispatched, direct, q, k, v, d_out)
            checks.append({"causal": causal, "mode": mode, "same_program": same, "diff": diff})
    eager = eager_overhead(
        lambda: ejkernel.attention(q, k, v, dtype=dtype),
        lambda: impl(kernel.bind(q, k, v, dtype=dtype)),
        lambda: ejkernel.explain(q, k, v, dtype=dtype),
        rounds=eager_rounds,
        calls=eager_calls,
    )
    return {
        "implementation": decision.chosen.label,
        "shape": f"B{batch} S{seq_len} H{num_heads} D{head_dim}",
        "dtype": dtype,
        "programs": checks,
        "all_same_program": all(c["same_program"] for c in checks),
        "eager": eager,
    }
