"""Where ``ejkernel:auto`` measured behind the fastest other implementation, time the two again, interleaved.

The grid times each implementation of a configuration one after the other, so a drift of the device's
clock or of the host's load between them reads as a speed difference; on a GPU one round's spread is often
larger than the report's tolerance (``report.AUTO_TOLERANCE``). For every configuration where auto was
behind by more than it, ``confirm_auto`` compiles both again and alternates their rounds (auto, the
other, auto, ...), so that drift hits both alike, and reports the ratio of their medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ejkernel.bench.grids import BenchShape
from ejkernel.bench.implementations import Candidate
from ejkernel.bench.report import AUTO, auto_behind
from ejkernel.bench.runner import BenchConfig, build_step, make_inputs
from ejkernel.bench.timing import calls_per_round

__all__ = ["MIN_ROUNDS", "interleaved_rounds", "confirm_auto"]

MIN_ROUNDS = 7


def interleaved_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, calls: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round, the functions taking turns every round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            jax.block_until_ready([fn() for _ in range(calls)])
            samples[name].append((clock() - start) / calls)
    return samples


def confirm_auto(
    results: Sequence[dict[str, Any]],
    candidates: Sequence[Candidate],
    shapes: Sequence[BenchShape],
    config: BenchConfig,
) -> list[dict[str, Any]]:
    """One record per configuration auto was behind in (``report.auto_behind``): ``{"label", "mode", "causal",
    "other", "rounds", "calls_per_round", "auto_ms", "other_ms", "ratio"}`` (ratio: the other's median over
    auto's, as in the report), with ``"error"`` in place of the timings where it could not be timed again."""
    by_name = {c.name: c for c in candidates}
    by_label = {(s.grid, s.label): s for s in shapes}
    out = []
    for auto, other in auto_behind(results):
        record: dict[str, Any] = {
            "label": auto["label"], "mode": auto["mode"], "causal": auto["causal"], "other": other["impl"],
        }  # fmt: skip
        try:
            shape = by_label[(auto["grid"], auto["label"])]
            args = make_inputs(shape, config.dtype, 1, config.seed)[0]
            steps = {}
            for name in (AUTO, other["impl"]):
                step = jax.jit(build_step(by_name[name].make(shape, auto["causal"], config.dtype), auto["mode"]))
                jax.block_until_ready(step(*args))  # compile and warm up
                steps[name] = lambda step=step: step(*args)
            estimate = max(auto["median_ms"], other["median_ms"]) * 1e-3
            calls = calls_per_round(estimate, config.target_round_s, config.max_calls)
            rounds = max(MIN_ROUNDS, config.rounds)
            samples = interleaved_rounds(steps, rounds, calls)
            auto_s, other_s = (statistics.median(samples[name]) for name in (AUTO, other["impl"]))
            record.update(rounds=rounds, calls_per_round=calls, auto_ms=auto_s * 1e3, other_ms=other_s * 1e3,
                          ratio=other_s / auto_s)  # fmt: skip
        except Exception as e:  # out of memory, a kernel that stopped compiling: reported, the rest still run
            record["error"] = f"{type(e).__name__}: {e}"[:200]
        out.append(record)
    return out
