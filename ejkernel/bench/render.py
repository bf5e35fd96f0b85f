"""``ejkernel bench render RESULT.json``: a result's table and plots drawn again (for instance where matplotlib is).

A bench result gives its table and one plot per grid, a block sweep its table and block rows, and a curated
summary (``ejkernel-summary/1``) a compact table as CSV and one plot of every device's grid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["build_render_parser", "run_render", "render_summary"]


def build_render_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ejkernel bench render",
        description="Draw the table and plots of a result again: a bench result (its table and one plot per "
        "grid), a block sweep (its table and block rows) or a curated summary (a compact table as CSV and "
        "one plot of every device's grid).",
    )
    p.add_argument("result", help="the result (JSON)")
    p.add_argument("--out", help="output folder (default: beside the JSON)")
    return p


def run_render(argv: list[str]) -> int:
    """Entry point of ``ejkernel bench render``; 2 for a curated summary that does not validate."""
    import json
    import pathlib

    from ejkernel.bench import report, summary
    from ejkernel.bench.compare import load
    from ejkernel.bench.plots import write_plots
    from ejkernel.bench.sweep_report import SCHEMA as SWEEP_SCHEMA
    from ejkernel.bench.sweep_report import format_sweep

    args = build_render_parser().parse_args(argv)
    path = pathlib.Path(args.result)
    out = pathlib.Path(args.out) if args.out else path.parent
    raw = json.loads(path.read_text())
    if raw.get("schema") == summary.SCHEMA:
        return render_summary(raw, path, out)
    doc = load(args.result)
    if doc.get("schema") == SWEEP_SCHEMA:  # a block sweep: its table, winners and rows; no plots
        text_path = report.write_text_file(format_sweep(doc), out / f"{path.stem}.txt")
        print(text_path.read_text(), end="", flush=True)
        return 0
    text_path = report.write_text(doc, out / f"{path.stem}.txt")
    print(text_path.read_text(), end="", flush=True)
    return _with_plots([text_path], lambda: write_plots(doc, out, path.stem))


def render_summary(doc: dict[str, Any], path: Any, out: Any) -> int:
    """A curated summary ``doc`` (read from ``path``): its table as CSV (for the docs) and as text, and its plot."""
    from ejkernel.bench import report, summary

    try:
        summary.validate_summary(doc)
    except (ValueError, KeyError) as e:
        print(f"ejkernel bench render: {path}: {e}", file=sys.stderr)
        return 2
    written = [report.write_text_file(summary.format_csv(doc), out / f"{path.stem}.csv")]
    print(summary.format_summary(doc), end="", flush=True)
    return _with_plots(written, lambda: [summary.plot_summary(doc, out / f"{path.stem}.png")])


def _with_plots(written: list[Any], draw: Callable[[], list[Any]]) -> int:
    """Draws the plots where matplotlib is (else says what is missing), then names every file written."""
    from ejkernel.bench.plots import matplotlib_missing

    missing = matplotlib_missing()
    if missing:
        print(missing, file=sys.stderr)
    else:
        written = written + list(draw())
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0
