"""Curated summaries (``ejkernel-summary/1``): validation, the compact table, render, and the committed files."""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib

import pytest

from ejkernel.bench import summary
from ejkernel.bench.cli import run

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
COMMITTED = sorted(RESULTS.glob("*/fa3_grid.json"))


def _doc() -> dict:
    return {
        "schema": summary.SCHEMA, "title": "test grid", "device": "test", "dtype": "bfloat16",
        "implementations": [{"name": "ours", "label": "ours"}, {"name": "theirs", "label": "a rival"}],
        "cells": [
            {"head_dim": 128, "seq": 4096, "causal": True, "mode": "fwd+bwd", "tflops": {"ours": 341.2}},
            {"head_dim": 64, "seq": 512, "causal": False, "mode": "fwd", "tflops": {"ours": 310.0, "theirs": 318.4}},
        ],
        "sources": ["made up for the test"],
    }  # fmt: skip


def test_table_rows_are_sorted_and_mark_missing_values():
    rows = summary.table_rows(_doc())
    assert rows == [
        ["D", "S", "causal", "pass", "ours", "a rival"],
        ["64", "512", "no", "fwd", "310", "318"],
        ["128", "4k", "yes", "fwd+bwd", "341", "-"],
    ]
    assert summary.format_csv(_doc()).splitlines()[1] == "64,512,no,fwd,310,318"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(schema="ejkernel-bench/1"), "not a summary"),
        (lambda d: d["cells"][0].update(mode="bwd"), "mode must be one of"),
        (lambda d: d["cells"][0]["tflops"].update(nobody=1.0), "'nobody' is not among the implementations"),
        (lambda d: d["cells"][0]["tflops"].update(ours=-1), "must be a positive number"),
    ],
)
def test_validate_names_what_is_wrong(change, message):
    doc = copy.deepcopy(_doc())
    change(doc)
    with pytest.raises(ValueError, match=message):
        summary.validate_summary(doc)


def test_render_writes_the_csv_and_the_plot_or_says_how(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(_doc()))
    assert run(["render", str(path)]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "grid.csv").read_text() == summary.format_csv(_doc())
    assert "test grid (bfloat16, TFLOP/s)" in captured.out and "source: made up for the test" in captured.out
    if importlib.util.find_spec("matplotlib") is None:
        (line,) = [line for line in captured.err.splitlines() if "matplotlib" in line]  # one line, with the fix
        assert "pip install 'ejkernel[bench]'" in line and not (tmp_path / "grid.png").exists()
    else:
        assert (tmp_path / "grid.png").stat().st_size > 0
    bad = _doc()
    bad["cells"][0]["mode"] = "bwd"
    path.write_text(json.dumps(bad))
    assert run(["render", str(path)]) == 2


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_summaries_are_valid_and_their_tables_current(path):
    doc = json.loads(path.read_text())
    summary.validate_summary(doc)
    assert path.with_suffix(".csv").read_text() == summary.format_csv(doc), "run: ejkernel bench render " + str(path)
    assert path.with_suffix(".png").is_file()
    assert max(len(line) for line in summary.format_summary(doc).splitlines()) <= 120


def test_h100_summary_is_built_from_the_tables_beside_it():
    spec = importlib.util.spec_from_file_location("fa3_summary", ROOT / "benchmarks" / "fa3_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == json.loads((RESULTS / "h100" / "fa3_grid.json").read_text())
    assert len(COMMITTED) >= 2
