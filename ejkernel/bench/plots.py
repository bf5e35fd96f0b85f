"""PNG plots of a run (optional: needs matplotlib, the ``bench`` extra).

One figure per grid; one row per (mode, causal); left TFLOP/s against sequence length, right the speedup
over ``jax.nn`` XLA (left out where it never ran); one line per implementation and series (e.g. head dim).
Uses matplotlib's object API (no pyplot), so it touches no global plotting state.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from ejkernel.bench.report import BASELINE, speedups

__all__ = ["matplotlib_missing", "plot_grid", "write_plots"]


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn (``None`` when they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "no plots: matplotlib is not installed; pip install 'ejkernel[bench]' and "
            "'ejkernel bench render RESULT.json' draws them"
        )
    return None


def _seq_label(x: int) -> str:
    return f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x)


def _panels(results: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    seen = dict.fromkeys((r["mode"], r["causal"]) for r in results if r["status"] == "ok")
    return sorted(seen, key=lambda p: (p[0] != "fwd", p[1]))


def plot_grid(results: Sequence[dict[str, Any]], title: str, path: str | pathlib.Path) -> pathlib.Path | None:
    """Draws one grid's results to ``path``; ``None`` when none of them ran."""
    fig = grid_figure(results, title)
    if fig is None:
        return None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def grid_figure(results: Sequence[dict[str, Any]], title: str) -> Any:
    """The matplotlib ``Figure`` of one grid's results (``None`` when none of them ran)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(results)
    if not panels:
        return None
    ratio = speedups(results, BASELINE)
    columns = 2 if ratio else 1  # no speedup column when the baseline never ran
    fig = Figure(figsize=(12, (3.6 if ratio else 4.2) * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), columns, squeeze=False)
    for row, (mode, causal) in enumerate(panels):
        lines: dict[str, list[tuple[int, float, float, float, float | None]]] = {}
        for i, r in enumerate(results):
            if r["status"] == "ok" and r["mode"] == mode and r["causal"] == causal:
                name = f"{r['impl']} {r['series']}".strip()
                lines.setdefault(name, []).append((r["x"], r["tflops"], r["tflops_min"], r["tflops_max"], ratio.get(i)))
        tf_ax, sp_ax = (axes[row][0], axes[row][1] if ratio else None)
        for name, points in lines.items():
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            spread = [
                [y - p[2] for y, p in zip(ys, points, strict=True)],
                [p[3] - y for y, p in zip(ys, points, strict=True)],
            ]
            tf_ax.errorbar(xs, ys, yerr=spread, marker="o", capsize=3, label=name)  # bars: slowest..fastest round
            if sp_ax is not None and not name.startswith(BASELINE + " ") and any(p[4] is not None for p in points):
                sp = [(p[0], p[4]) for p in points if p[4] is not None]
                sp_ax.plot([p[0] for p in sp], [p[1] for p in sp], marker="o", label=name)
        what = f"{mode}{', causal' if causal else ''}"
        tf_ax.set(title=f"TFLOP/s (median; bars: min..max round), {what}", ylabel="TFLOP/s")
        tf_ax.set_ylim(bottom=0)
        if sp_ax is not None:
            sp_ax.set(title=f"speedup over {BASELINE}, {what}", ylabel="x faster")
            sp_ax.axhline(1.0, color="gray", linewidth=0.8)
        ticks = sorted({x for points in lines.values() for x, *_ in points})
        for ax in [a for a in (tf_ax, sp_ax) if a is not None]:
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
            ax.set_xticks(ticks, [_seq_label(x) for x in ticks])
            ax.set_xlabel("sequence length (keys)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def write_plots(doc: dict[str, Any], out_dir: str | pathlib.Path, stem: str) -> list[pathlib.Path]:
    """``stem.png`` for a single-grid run, ``stem_<grid>.png`` for each grid otherwise."""
    results = doc["results"]
    grids = list(dict.fromkeys(r["grid"] for r in results))
    env = doc["environment"]
    written = []
    for grid in grids:
        subset = [r for r in results if r["grid"] == grid]
        name = f"{stem}.png" if len(grids) == 1 else f"{stem}_{grid}.png"
        title = f"ejkernel bench: {grid} grid, {doc['config']['dtype']}, {env['device_kind']} ({env['platform']}), jax {env['jax']}, {env['date'][:10]}"
        path = plot_grid(subset, title, pathlib.Path(out_dir) / name)
        if path is not None:
            written.append(path)
    return written
