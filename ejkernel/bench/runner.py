"""Runs candidates over shapes: inputs, compile, memory, timing and one result record per configuration.

A configuration is (shape, causal, mode). Inputs are random normal (never zeros) from distinct keys for
q, k, v and the output cotangent, one set per rotated buffer, drawn once per shape and shared by every
candidate. Each candidate's step is jitted, lowered and compiled ahead of timing: the compile time and
``memory_analysis()`` peak are recorded, and a step whose compiled peak exceeds the device's memory is
n/a without running. Any failure of one configuration becomes an n/a record with its reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.bench.flops import MODES, attention_flops, tflops_per_s
from ejkernel.bench.grids import BenchShape
from ejkernel.bench.implementations import Candidate, TimedElsewhere, Unsupported
from ejkernel.bench.timing import buffer_count, time_calls

__all__ = [
    "BenchConfig", "configurations", "make_inputs", "build_step", "compiled_peak_bytes", "failure_reason", "all_finite",
    "run_benchmarks",
]

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    dtype: str = "bfloat16"
    modes: tuple[str, ...] = MODES
    causals: tuple[bool, ...] = (False, True)
    warmup: int = 2
    rounds: int = 5
    calls: int | None = None  # None: sized so that a round lasts about target_round_s
    target_round_s: float = 0.05
    max_calls: int = 100
    rotate_bytes: int = 256 * MIB  # rotate buffer sets until they span this much (past any cache)
    max_buffers: int = 8
    budget_s: float | None = None  # stop starting new configurations after this many seconds
    seed: int = 0


def configurations(shapes: Sequence[BenchShape], config: BenchConfig) -> list[tuple[BenchShape, bool, str]]:
    """(shape, causal, mode) triples; a decode step (Sq = 1) is causal and non-causal at once, so runs once."""
    triples = []
    for shape in shapes:
        causals = (False,) if shape.q_len == 1 else config.causals
        modes = tuple(m for m in config.modes if m == "fwd" or not shape.forward_only)
        triples.extend((shape, c, m) for c in dict.fromkeys(causals) for m in modes)
    return triples


def make_inputs(shape: BenchShape, dtype: str, buffers: int, seed: int = 0) -> list[tuple[jax.Array, ...]]:
    """``buffers`` sets of random ``(q, k, v, d_out)``, each array from its own key."""
    dt = jnp.dtype(dtype)
    q_shape = (shape.batch, shape.q_len, shape.num_q_heads, shape.head_dim)
    kv_shape = (shape.batch, shape.kv_len, shape.num_kv_heads, shape.head_dim)
    sets = []
    for i in range(buffers):
        kq, kk, kv, kd = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), 4)
        sets.append(
            (
                jax.random.normal(kq, q_shape, dt),
                jax.random.normal(kk, kv_shape, dt),
                jax.random.normal(kv, kv_shape, dt),
                jax.random.normal(kd, q_shape, dt),
            )
        )
    return sets


def input_bytes(shape: BenchShape, dtype: str) -> int:
    q = shape.batch * shape.q_len * shape.num_q_heads * shape.head_dim
    kv = shape.batch * shape.kv_len * shape.num_kv_heads * shape.head_dim
    return (2 * q + 2 * kv) * jnp.dtype(dtype).itemsize


def build_step(forward: Callable[..., jax.Array], mode: str) -> Callable[..., Any]:
    """``fwd``: ``(q, k, v, d_out) -> out``; ``fwd+bwd``: ``-> (out, (dq, dk, dv))`` through ``jax.vjp``."""
    if mode == "fwd":
        return lambda q, k, v, d_out: forward(q, k, v)
    if mode == "fwd+bwd":

        def step(q, k, v, d_out):
            out, vjp = jax.vjp(forward, q, k, v)
            return out, vjp(d_out.astype(out.dtype))

        return step
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def compiled_peak_bytes(compiled: Any) -> int | None:
    """Peak device memory of a compiled step: XLA's peak where reported, else arguments + outputs + temps."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if stats is None:
        return None
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    if peak > 0:
        return int(peak)
    total = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    return int(total)


def device_memory_limit() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def failure_reason(error: BaseException) -> str:
    """``"Type: first line of the message"``, at most 240 characters: why a measurement is n/a."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= 240 else text[:237] + "..."


def all_finite(tree: Any) -> bool:
    """Every array of ``tree`` is finite; checked on the device: one boolean per array comes back to the host."""
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(tree))


def _base_record(candidate: Candidate, shape: BenchShape, causal: bool, mode: str, dtype: str) -> dict[str, Any]:
    flops = attention_flops(
        shape.batch, shape.num_q_heads, shape.q_len, shape.kv_len, shape.head_dim, causal=causal, mode=mode
    )
    return {
        "impl": candidate.name,
        "kind": candidate.kind,
        "grid": shape.grid,
        "series": shape.series,
        "x": shape.x,
        "label": shape.label,
        "shape": {
            "batch": shape.batch,
            "q_len": shape.q_len,
            "kv_len": shape.kv_len,
            "num_q_heads": shape.num_q_heads,
            "num_kv_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim,
        },
        "causal": causal,
        "mode": mode,
        "dtype": dtype,
        "flops": flops,
        "status": "n/a",
        "reason": None,
    }


def measure(
    candidate: Candidate,
    shape: BenchShape,
    causal: bool,
    mode: str,
    input_sets: Sequence[tuple[jax.Array, ...]],
    config: BenchConfig,
    *,
    peak_tflops: float | None = None,
    ceiling_tflops: float | None = None,
    memory_limit: int | None = None,
) -> dict[str, Any]:
    """One configuration of one candidate: a record with status "ok", "n/a" (with the reason) or "same"
    (another candidate times exactly this call)."""
    record = _base_record(candidate, shape, causal, mode, config.dtype)
    if candidate.unavailable:
        record["reason"] = candidate.unavailable
        return record
    try:
        forward = candidate.make(shape, causal, config.dtype)
        if candidate.describe_choice is not None:
            record["served_by"] = candidate.describe_choice(shape, causal, config.dtype, mode)
        start = time.perf_counter()
        step = jax.jit(build_step(forward, mode))
        compiled = step.lower(*input_sets[0]).compile()  # jit's own calls below reuse this executable
        record["compile_s"] = round(time.perf_counter() - start, 3)
        record["peak_memory_bytes"] = compiled_peak_bytes(compiled)
        peak = record["peak_memory_bytes"]
        if memory_limit is not None and peak is not None and peak > memory_limit:
            record["reason"] = (
                f"needs {peak / 2**30:.1f} GiB of device memory; the device has {memory_limit / 2**30:.1f} GiB"
            )
            return record
        timing = time_calls(
            step,  # the jitted function, as users call it (same executable, jit's fast dispatch path)
            input_sets,
            warmup=config.warmup,
            rounds=config.rounds,
            calls=config.calls,
            target_round_s=config.target_round_s,
            max_calls=config.max_calls,
        )
        if not all_finite(step(*input_sets[0])):
            record["reason"] = "non-finite output on random inputs"
            return record
    except Unsupported as e:
        record["reason"] = str(e)
        if isinstance(e, TimedElsewhere):
            record["status"] = "same"
        return record
    except Exception as e:  # a baseline or kernel that cannot run this config: report it, keep going
        record["reason"] = failure_reason(e)
        return record
    flops = record["flops"]
    record.update(
        status="ok",
        median_ms=timing.median_s * 1e3,
        min_ms=timing.min_s * 1e3,
        max_ms=timing.max_s * 1e3,
        samples_ms=[s * 1e3 for s in timing.samples_s],
        rounds=timing.rounds,
        calls_per_round=timing.calls_per_round,
        buffers=timing.buffers,
        tflops=tflops_per_s(flops, timing.median_s),
        tflops_min=tflops_per_s(flops, timing.max_s),
        tflops_max=tflops_per_s(flops, timing.min_s),
    )
    tflops = record["tflops"]
    record["pct_peak"] = 100.0 * tflops / peak_tflops if peak_tflops else None
    record["pct_ceiling"] = 100.0 * tflops / ceiling_tflops if ceiling_tflops else None
    return record


def run_benchmarks(
    shapes: Sequence[BenchShape],
    candidates: Sequence[Candidate],
    config: BenchConfig,
    *,
    peak_tflops: float | None = None,
    ceiling_tflops: float | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (configuration, candidate) pair, in grid order; ``on_result`` sees each record as it lands."""
    triples = configurations(shapes, config)
    total = len(triples) * len(candidates)
    memory_limit = device_memory_limit()
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    done = 0
    by_shape: dict[BenchShape, list[tuple[bool, str]]] = {}
    for shape, causal, mode in triples:
        by_shape.setdefault(shape, []).append((causal, mode))
    for shape, pairs in by_shape.items():
        buffers = buffer_count(input_bytes(shape, config.dtype), config.rotate_bytes, config.max_buffers)
        input_sets = None
        for causal, mode in pairs:
            for candidate in candidates:
                if progress is not None:
                    progress(done, total, f"{candidate.name} {shape.label}{' causal' if causal else ''} {mode}")
                if config.budget_s is not None and time.perf_counter() - started > config.budget_s:
                    record = _base_record(candidate, shape, causal, mode, config.dtype)
                    record.update(status="skipped", reason=f"time budget of {config.budget_s:g} s spent")
                else:
                    if input_sets is None:
                        try:
                            input_sets = make_inputs(shape, config.dtype, buffers, config.seed)
                        except Exception as e:  # e.g. out of memory: every candidate of this shape is n/a
                            input_sets = failure_reason(e)
                    if isinstance(input_sets, str):
                        record = _base_record(candidate, shape, causal, mode, config.dtype)
                        record["reason"] = f"could not create inputs: {input_sets}"
                    else:
                        record = measure(
                            candidate,
                            shape,
                            causal,
                            mode,
                            input_sets,
                            config,
                            peak_tflops=peak_tflops,
                            ceiling_tflops=ceiling_tflops,
                            memory_limit=memory_limit,
                        )
                results.append(record)
                done += 1
                if on_result is not None:
                    on_result(record)
        del input_sets
    if progress is not None:
        progress(total, total, "done")
    return results
