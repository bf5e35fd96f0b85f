"""Timing by rounds of back-to-back calls with one synchronisation per round.

Method: one untimed call, then ``warmup`` calls timed together to estimate a call's cost; then ``rounds``
rounds of ``calls`` back-to-back calls each, the inputs rotated among several buffer sets so that repeated
calls do not just measure the cache, and one ``block_until_ready`` on all of a round's outputs. A round's
time over its call count is one sample; the median of the samples is reported with their min and max.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["Timing", "summarize", "calls_per_round", "buffer_count", "time_calls"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call seconds: median, min and max over rounds, and how they were measured."""

    median_s: float
    min_s: float
    max_s: float
    rounds: int
    calls_per_round: int
    buffers: int
    samples_s: tuple[float, ...]


def summarize(samples: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of per-call samples."""
    if not samples:
        raise ValueError("no samples to summarize")
    return statistics.median(samples), min(samples), max(samples)


def calls_per_round(estimate_s: float, target_round_s: float, max_calls: int) -> int:
    """Enough calls that a round lasts about ``target_round_s`` (at least 1, at most ``max_calls``)."""
    if estimate_s <= 0:
        return max_calls
    return max(1, min(max_calls, round(target_round_s / estimate_s)))


def buffer_count(input_bytes: int, rotate_bytes: int, max_buffers: int) -> int:
    """Buffer sets to rotate so that together they exceed ``rotate_bytes`` (well past any cache)."""
    if input_bytes <= 0:
        return 1
    return max(1, min(max_buffers, math.ceil(rotate_bytes / input_bytes)))


def time_calls(
    fn: Callable[..., Any],
    input_sets: Sequence[Sequence[Any]],
    *,
    warmup: int = 2,
    rounds: int = 5,
    calls: int | None = None,
    target_round_s: float = 0.05,
    max_calls: int = 100,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[Any], Any] = jax.block_until_ready,
) -> Timing:
    """Times ``fn(*input_sets[i % len(input_sets)])``; ``calls=None`` sizes rounds from the warm-up."""
    if not input_sets:
        raise ValueError("need at least one input set")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    n = len(input_sets)
    sync(fn(*input_sets[0]))  # first execution: allocations, autotuning, lazy loading stay out
    warm = max(1, warmup)
    start = clock()
    sync([fn(*input_sets[i % n]) for i in range(warm)])
    estimate = (clock() - start) / warm
    per_round = calls if calls is not None else calls_per_round(estimate, target_round_s, max_calls)
    samples = []
    for r in range(rounds):
        offset = r * per_round
        start = clock()
        outs = [fn(*input_sets[(offset + i) % n]) for i in range(per_round)]
        sync(outs)
        samples.append((clock() - start) / per_round)
        del outs
    median, low, high = summarize(samples)
    return Timing(median, low, high, rounds, per_round, n, tuple(samples))
