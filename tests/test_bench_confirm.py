"""``ejkernel bench``'s interleaved re-measure of the configurations where ``ejkernel:auto`` measured behind."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import pytest

from ejkernel.bench import confirm, implementations, report
from ejkernel.bench.grids import BenchShape
from ejkernel.bench.runner import BenchConfig

SHAPE = BenchShape(1, 32, 32, 2, 2, 16)


def _record(impl, median_ms, mode="fwd", shape=SHAPE):
    dims = {"batch": shape.batch, "q_len": shape.q_len, "kv_len": shape.kv_len, "num_q_heads": shape.num_q_heads,
            "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim}  # fmt: skip
    return {"grid": shape.grid, "label": shape.label, "shape": dims, "causal": False, "mode": mode,
            "dtype": "float32", "impl": impl, "status": "ok", "median_ms": median_ms}  # fmt: skip


def test_only_pairs_auto_is_behind_in_are_picked():
    results = [_record("ejkernel:auto", 1.0), _record("ejkernel:xla", 0.9), _record("jax.nn:xla", 0.95),
               _record("ejkernel:auto", 1.0, "fwd+bwd"), _record("ejkernel:xla", 0.98, "fwd+bwd")]  # fmt: skip
    pairs = report.auto_behind(results)
    assert [(a["mode"], b["impl"]) for a, b in pairs] == [("fwd", "ejkernel:xla")]


def test_interleaved_rounds_alternate_the_functions():
    order = []
    ticks = itertools.count()
    samples = confirm.interleaved_rounds(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, calls=2,
        clock=lambda: float(next(ticks)),
    )  # fmt: skip
    assert order == ["a", "a", "b", "b"] * 3
    assert samples == {"a": [0.5] * 3, "b": [0.5] * 3}  # one clock tick per round of two calls


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_a_behind_pair_is_timed_again_on_the_same_call(mode):
    """auto and ejkernel:xla run the same call on a CPU: made to look 2x apart, interleaved they agree."""
    candidates = implementations.all_candidates(["ejkernel:auto", "ejkernel:xla"])[0]
    config = BenchConfig(dtype="float32", rounds=3, target_round_s=0.005)
    results = [_record("ejkernel:auto", 2.0, mode), _record("ejkernel:xla", 1.0, mode)]
    (record,) = confirm.confirm_auto(results, candidates, [SHAPE], config)
    assert "error" not in record, record
    assert record["other"] == "ejkernel:xla" and record["mode"] == mode and record["rounds"] == confirm.MIN_ROUNDS
    assert record["auto_ms"] > 0 and record["other_ms"] > 0
    assert 0.5 < record["ratio"] < 2.0  # the same program: nowhere near the 0.5x the grid was made to show
    assert jnp.isclose(record["ratio"], record["other_ms"] / record["auto_ms"])


def test_a_pair_that_cannot_be_timed_again_says_why():
    candidates = implementations.all_candidates(["ejkernel:auto", "ejkernel:xla"])[0]
    results = [_record("ejkernel:auto", 2.0), _record("ejkernel:xla", 1.0)]
    (record,) = confirm.confirm_auto(results, candidates, [], BenchConfig(dtype="float32"))  # shape unknown
    assert record["error"].startswith("KeyError")
