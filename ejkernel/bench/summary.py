"""Curated summaries: one grid's TFLOP/s per implementation on one device, as a compact table and a plot.

A summary (schema ``ejkernel-summary/1``) gathers, from several runs and the rivals' measurements, one
number per (head dim, sequence length, causal, mode) and implementation. It is what the performance page
shows: ``ejkernel bench render SUMMARY.json`` writes ``SUMMARY.csv`` (the docs include it as a table),
prints the same table as text and draws ``SUMMARY.png`` (matplotlib): one panel per (head dim, mode,
causal), TFLOP/s against the sequence length, one line per implementation.

Document: ``{"schema", "title", "device", "dtype", "implementations": [{"name", "label"}], "cells":
[{"head_dim", "seq", "causal", "mode", "tflops": {name: value}}], "sources": [text]}``.
"""

from __future__ import annotations

import csv
import io
import pathlib
from collections.abc import Sequence
from typing import Any

__all__ = ["SCHEMA", "validate_summary", "table_rows", "format_csv", "format_summary", "plot_summary"]

SCHEMA = "ejkernel-summary/1"
MODES = ("fwd", "fwd+bwd")


def validate_summary(doc: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming what is wrong: an unknown implementation, mode or a non-number."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"not a summary: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    names = {i["name"] for i in doc["implementations"]}
    for cell in doc["cells"]:
        if cell["mode"] not in MODES:
            raise ValueError(f"cell {cell}: mode must be one of {MODES}")
        for name, value in cell["tflops"].items():
            if name not in names:
                raise ValueError(f"cell {cell}: {name!r} is not among the implementations {sorted(names)}")
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"cell {cell}: {name} must be a positive number, got {value!r}")


def _sorted_cells(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(doc["cells"], key=lambda c: (c["head_dim"], c["seq"], c["causal"], MODES.index(c["mode"])))


def _seq_label(x: int) -> str:
    return f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x)


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Header then one row per cell: D, S, causal, pass, then each implementation's TFLOP/s (``-`` if none)."""
    impls = doc["implementations"]
    rows = [["D", "S", "causal", "pass", *(i["label"] for i in impls)]]
    for c in _sorted_cells(doc):
        values = [c["tflops"].get(i["name"]) for i in impls]
        rows.append([
            str(c["head_dim"]), _seq_label(c["seq"]), "yes" if c["causal"] else "no", c["mode"],
            *("-" if v is None else f"{v:.0f}" for v in values),
        ])  # fmt: skip
    return rows


def format_csv(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table_rows(doc))
    return out.getvalue()


def format_summary(doc: dict[str, Any]) -> str:
    """The title, the table and the sources as text (within 120 columns for the usual few implementations)."""
    from ejkernel.bench.report import fit

    rows = table_rows(doc)
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = [fit(f"{doc['title']} ({doc['dtype']}, TFLOP/s)")]
    lines += ["  ".join(c.rjust(w) if j >= 4 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]
    lines += [fit(f"source: {s}") for s in doc.get("sources", [])]
    return "\n".join(lines) + "\n"


def _panels(cells: Sequence[dict[str, Any]]) -> tuple[list[int], list[tuple[str, bool]]]:
    head_dims = sorted({c["head_dim"] for c in cells})
    passes = sorted({(c["mode"], c["causal"]) for c in cells}, key=lambda p: (MODES.index(p[0]), p[1]))
    return head_dims, passes


def plot_summary(doc: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Draws the summary to ``path``: rows are head dims, columns (mode, causal), one line per implementation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = doc["cells"]
    head_dims, passes = _panels(cells)
    fig = Figure(figsize=(3.4 * len(passes), 2.8 * len(head_dims) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(head_dims), len(passes), squeeze=False, sharey=True)
    styles = ["o-", "s--", "^-.", "D:", "v-", "P--"]
    for row, d in enumerate(head_dims):
        for col, (mode, causal) in enumerate(passes):
            ax = axes[row][col]
            here = sorted((c for c in cells if (c["head_dim"], c["mode"], c["causal"]) == (d, mode, causal)), key=lambda c: c["seq"])
            for k, impl in enumerate(doc["implementations"]):  # one color and style per implementation
                points = [(c["seq"], c["tflops"][impl["name"]]) for c in here if impl["name"] in c["tflops"]]
                if points:
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    ax.plot(xs, ys, styles[k % len(styles)], color=f"C{k}", label=impl["label"], markersize=4)
            ticks = [c["seq"] for c in here]
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
            ax.set_xticks(ticks, [_seq_label(x) for x in ticks])
            ax.grid(True, alpha=0.3)
            ax.set_title(f"D{d} {mode}{', causal' if causal else ''}", fontsize="medium")
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row == len(head_dims) - 1:
                ax.set_xlabel("sequence length")
    top = max(v for c in cells for v in c["tflops"].values())
    for ax in axes.flat:  # one scale for every panel, from zero, every point inside
        ax.set_ylim(0, top * 1.08)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # the legend holds every implementation that appears anywhere
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize="small")
    fig.suptitle(f"{doc['title']} ({doc['dtype']})")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
