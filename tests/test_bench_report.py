"""The bench's text report on synthetic results: it fits 120 columns, footnotes each note once and
summarises skipped measurements instead of listing them."""

from __future__ import annotations

import itertools

from ejkernel.bench import report

IMPLS = ("ejkernel:triton", "ejkernel:xla", "ejkernel:xla:chunked", "jax.nn:xla", "jax.nn:cudnn", "tokamax")
CHUNKED_REASON = "dense score matrix of 262144 elements is below 8388608: the dense reference serves it"


def _record(impl: str, seq: int, causal: bool, mode: str, status: str = "ok", **extra) -> dict:
    shape = {"batch": 16384 // seq, "q_len": seq, "kv_len": seq, "num_q_heads": 16, "num_kv_heads": 16, "head_dim": 128}
    record = {
        "grid": "fa3", "label": f"B{16384 // seq} S{seq} H16 D128", "shape": shape, "causal": causal, "mode": mode,
        "dtype": "bfloat16", "impl": impl, "status": status, "reason": None, "served_by": impl.split(":", 1)[-1],
    }  # fmt: skip
    if status == "ok":
        median = 0.123456 * seq / 512
        record.update(median_ms=median, min_ms=median * 0.97, max_ms=median * 1.08, tflops=412.345, pct_peak=41.7,
                      peak_memory_bytes=123_456_789_012)  # fmt: skip
    record.update(extra)
    return record


def _results() -> list[dict]:
    out = []
    for seq, causal, mode in itertools.product((512, 1024, 16384), (False, True), ("fwd", "fwd+bwd")):
        if seq == 16384:  # the time budget ran out before the longest shape
            out += [_record(impl, seq, causal, mode, "skipped", reason="time budget exhausted") for impl in IMPLS]
            continue
        out.append(_record("ejkernel:triton", seq, causal, mode))
        out.append(_record("ejkernel:xla", seq, causal, mode, served_by="xla:chunked"))
        if seq == 512:  # n/a four times for one reason: one footnote
            out.append(_record("ejkernel:xla:chunked", seq, causal, mode, "n/a", reason=CHUNKED_REASON))
        else:
            out.append(_record("ejkernel:xla:chunked", seq, causal, mode))
        out.append(_record("jax.nn:xla", seq, causal, mode))
        out.append(_record("jax.nn:cudnn", seq, causal, mode))
        out.append(_record("tokamax", seq, causal, mode, "n/a", reason="tokamax is not installed (ModuleNotFoundError)"))
    return out


def _document(results: list[dict]) -> dict:
    env = {
        "date": "2026-01-01T00:00:00+00:00", "device_kind": "NVIDIA H200", "platform": "cuda", "device_count": 1,
        "jax": "0.11.2", "jaxlib": "0.11.2", "driver": "580.1", "cudnn": "91900", "load_average": [0.5], "cpu_count": 16,
        "command": "ejkernel bench --grid fa3 --budget-s 480 --out /a/rather/long/output/folder/for/the/results "
                   "--name bench_gpu_fa3 --skip-impl ejkernel:xla --no-dispatch --rounds 5 --warmup 2",
        "peak": {"name": "H200", "nominal_tflops": 989.4, "ceiling_tflops": None},
    }  # fmt: skip
    config = {"warmup": 2, "rounds": 5, "dtype": "bfloat16", "budget_s": 480}
    not_run = [("ejkernel:pallas_tpu", "needs a tpu device, this is cuda (interpret=True runs it anywhere)")]
    dispatch = {"error": "RuntimeError: " + "a long error message " * 20}
    return report.build_document(env, config, results, not_run=not_run, dispatch=dispatch)


def _text(results: list[dict]) -> str:
    doc = _document(results)
    return "\n\n".join([report.format_header(doc), report.format_table(doc["results"]), report.format_dispatch(doc["dispatch"])])


def test_report_fits_120_columns():
    lines = _text(_results()).splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    assert any(len(line) > 100 for line in lines)  # the test data is wide enough to need it


def test_each_note_is_footnoted_once():
    table = report.format_table(_results())
    assert table.count(CHUNKED_REASON) == 1
    assert table.count("served by xla:chunked") == 1
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("ejkernel:xla:chunked")]
    (chunked_mark,) = {row[-1] for row in rows if row[1] == "n/a"}
    assert f"{chunked_mark} {CHUNKED_REASON}" in table.splitlines()
    assert "tokamax" not in table  # n/a everywhere for one reason: the header says so, once


def test_skipped_measurements_are_summarised_not_listed():
    results = _results()
    text = _text(results)
    assert "S16384" not in report.format_table(results)
    assert "time budget exhausted" not in text
    assert "skipped: 24 measurements (4 configurations x up to 6 implementations) after the time budget (480 s)" in text
    assert "n/a for every configuration: tokamax: tokamax is not installed" in text


def test_a_wide_header_line_wraps_with_an_indent():
    line = "not run here: " + "word " * 40
    wrapped = report.fit(line).splitlines()
    assert len(wrapped) > 1 and all(len(w) <= 120 for w in wrapped)
    assert all(w.startswith("    ") for w in wrapped[1:])
    assert report.fit("short") == "short"


def test_auto_is_compared_with_the_fastest_other_implementation_of_each_configuration():
    def timed(impl, seq, median):
        return _record(impl, seq, False, "fwd", median_ms=median)

    results = [
        timed("ejkernel:auto", 512, 1.00), timed("jax.nn:cudnn", 512, 1.02), timed("ejkernel:triton", 512, 1.5),
        timed("ejkernel:auto", 1024, 1.00), timed("jax.nn:cudnn", 1024, 0.98),  # inside the noise allowance
        timed("ejkernel:auto", 16384, 1.00), timed("ejkernel:mosaic_gpu", 16384, 0.90), timed("jax.nn:cudnn", 16384, 0.95),
        timed("ejkernel:triton", 4096, 1.0),  # no auto here: not counted
        _record("ejkernel:auto", 8192, False, "fwd", "n/a", reason="out of memory"), timed("jax.nn:cudnn", 8192, 1.0),
    ]
    rows = report.auto_against_fastest(results)
    assert [(label.split()[1], round(ratio, 3), impl) for label, ratio, impl in rows] == [
        ("S512", 1.02, "jax.nn:cudnn"), ("S1024", 0.98, "jax.nn:cudnn"), ("S16384", 0.9, "ejkernel:mosaic_gpu")]
    text = report.format_auto_check(results)
    assert text.splitlines()[0].endswith("as fast (within 3%) in 2 of 3")
    assert text.splitlines()[1:] == ["  behind in B1 S16384 H16 D128 fwd: 0.90x of ejkernel:mosaic_gpu"]
    assert report.format_auto_check([timed("ejkernel:triton", 512, 1.0)]) == ""

    # The interleaved re-measure of a behind pair (confirm.confirm_auto) is reported beside it.
    again = [{"label": "B1 S16384 H16 D128", "mode": "fwd", "causal": False, "other": "ejkernel:mosaic_gpu",
              "rounds": 7, "auto_ms": 1.0, "other_ms": 0.99, "ratio": 0.99}]  # fmt: skip
    lines = report.format_auto_check(results, again).splitlines()
    assert lines[1] == "  behind in B1 S16384 H16 D128 fwd: 0.90x of ejkernel:mosaic_gpu; interleaved, 7 rounds each: 0.99x"
    assert lines[2] == "  after the interleaved re-measure: as fast in 3 of 3"
    failed = [{**again[0], "ratio": None, "error": "OOM"}]
    del failed[0]["ratio"]
    lines = report.format_auto_check(results, failed).splitlines()
    assert lines[1].endswith("; interleaved re-measure failed (OOM)")
    assert lines[2] == "  after the interleaved re-measure: as fast in 2 of 3"


def test_plots_leave_out_the_speedup_column_when_the_baseline_never_ran():
    from ejkernel.bench.plots import grid_figure

    def plotted(results):
        return [{**r, "x": r["shape"]["q_len"], "series": "D128", "tflops_min": 400.0, "tflops_max": 420.0}
                for r in results]  # fmt: skip

    results = plotted(_results())
    rows = len({(r["mode"], r["causal"]) for r in results if r["status"] == "ok"})
    assert len(grid_figure(results, "with jax.nn:xla").axes) == 2 * rows
    without = [r for r in results if r["impl"] != "jax.nn:xla"]
    assert len(grid_figure(without, "without it").axes) == rows
    assert grid_figure([r for r in results if r["status"] != "ok"], "nothing ran") is None


def test_tokamax_says_what_it_is_missing():
    from ejkernel.bench.implementations import tokamax_unavailable

    assert tokamax_unavailable(ModuleNotFoundError("No module named 'tokamax'", name="tokamax")) == (
        "tokamax is not installed (pip install tokamax)")
    assert tokamax_unavailable(ModuleNotFoundError("No module named 'fire'", name="fire")) == (
        "tokamax does not import: it needs the module 'fire', which is not installed")
    assert tokamax_unavailable(RuntimeError("jaxlib too old")) == "tokamax does not import (RuntimeError: jaxlib too old)"
