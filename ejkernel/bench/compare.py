"""``ejkernel bench compare BASE.json NEW.json``: what got slower or faster beyond the measured noise.

Each run measured a configuration in several rounds; its [min, max] per-call range is its noise. A change
is a **regression** only when the new run's fastest round is slower than the base run's slowest (the two
ranges do not overlap) and the medians differ by more than ``threshold``; an **improvement** is the mirror
image. Anything else is within noise. A configuration that ran before and is n/a now is flagged "broken";
one the new run skipped (time budget) is "not measured", not a regression.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ejkernel.bench.report import config_key

__all__ = ["classify", "compare_results", "format_comparison", "load", "has_regressions"]


def classify(base: dict[str, Any], new: dict[str, Any], threshold: float = 0.0) -> str:
    """ "regression", "improvement" or "noise" for two ok records of one configuration."""
    ratio = new["median_ms"] / base["median_ms"]
    if new["min_ms"] > base["max_ms"] and ratio > 1 + threshold:
        return "regression"
    if new["max_ms"] < base["min_ms"] and ratio < 1 / (1 + threshold):
        return "improvement"
    return "noise"


def _key(record: dict[str, Any]) -> tuple:
    return (*config_key(record), record["impl"])


def compare_results(
    base: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]], threshold: float = 0.0
) -> list[dict[str, Any]]:
    """One row per (configuration, implementation) in either run, with its verdict."""
    old = {_key(r): r for r in base}
    rows = []
    seen = set()
    for r in new:
        key = _key(r)
        seen.add(key)
        b = old.get(key)
        row = {
            "impl": r["impl"],
            "grid": r["grid"],
            "label": r["label"],
            "causal": r["causal"],
            "mode": r["mode"],
            "dtype": r["dtype"],
        }
        if b is None:
            row["verdict"] = "only in new"
        elif b["status"] == "ok" and r["status"] == "ok":
            row.update(
                base_ms=b["median_ms"],
                new_ms=r["median_ms"],
                ratio=r["median_ms"] / b["median_ms"],
                base_range=[b["min_ms"], b["max_ms"]],
                new_range=[r["min_ms"], r["max_ms"]],
                verdict=classify(b, r, threshold),
            )
        elif b["status"] == "ok" and r["status"] == "n/a":
            row.update(base_ms=b["median_ms"], verdict="broken", reason=r.get("reason"))
        elif b["status"] == "ok":  # skipped (time budget) or timed under another name: no verdict
            row.update(base_ms=b["median_ms"], verdict=f"not measured ({r['status']})", reason=r.get("reason"))
        elif r["status"] == "ok":
            row.update(new_ms=r["median_ms"], verdict="now runs")
        else:
            row["verdict"] = "n/a in both"
        rows.append(row)
    for key, b in old.items():
        if key not in seen:
            rows.append(
                {
                    "impl": b["impl"],
                    "grid": b["grid"],
                    "label": b["label"],
                    "causal": b["causal"],
                    "mode": b["mode"],
                    "dtype": b["dtype"],
                    "verdict": "only in base",
                }
            )
    return rows


def has_regressions(rows: Sequence[dict[str, Any]]) -> bool:
    return any(r["verdict"] in ("regression", "broken") for r in rows)


def format_comparison(rows: Sequence[dict[str, Any]], *, show_all: bool = False) -> str:
    """A table of the flagged rows (every row with ``show_all``) and a one-line summary."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    header = ("verdict", "impl", "grid", "shape", "causal", "mode", "base ms [range]", "new ms [range]", "new/base")
    table = [header]
    for r in rows:
        if not show_all and r["verdict"] in ("noise", "n/a in both"):
            continue

        def cell(ms: str, rng: str) -> str:
            if ms not in r:
                return "-"
            return f"{r[ms]:.4g}" + (f" [{r[rng][0]:.4g} .. {r[rng][1]:.4g}]" if rng in r else "")

        table.append(
            (
                r["verdict"].upper() if r["verdict"] in ("regression", "broken") else r["verdict"],
                r["impl"],
                r["grid"],
                r["label"],
                "yes" if r["causal"] else "no",
                r["mode"],
                cell("base_ms", "base_range"),
                cell("new_ms", "new_range"),
                f"{r['ratio']:.3f}" if "ratio" in r else (r.get("reason") or ""),
            )
        )
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    if len(table) == 1:
        return f"no change beyond noise ({summary})"
    widths = [max(len(str(row[j])) for row in table) for j in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines) + f"\n\n{summary}"


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    if "results" not in doc:
        raise ValueError(f"{path} is not an ejkernel bench result (no 'results')")
    return doc
