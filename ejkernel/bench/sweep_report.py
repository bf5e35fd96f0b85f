"""A block sweep's results as a table, the fastest candidates per bucket, and rows for the block table.

A bucket is (head-dim row, element size, length range, causal, pass): the key the block table
(``ejkernel/kernels/pallas_triton/blocks.py``) is looked up by. A candidate's score in a bucket is the
geometric mean, over the bucket's shapes, of its median time over that shape's fastest; only candidates
that ran on every shape of the bucket compete. The long-sequence rows are printed as
``(head dim, itemsize): BlockSizes(forward, dkv, dq),``; the short-sequence overrides (2-byte dtypes) as
``(head dim, causal): {pass: PassBlocks, ...},`` holding only the passes whose winner beats the long row's
blocks by more than ``threshold``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from ejkernel.bench.flops import PASS_FORWARDS
from ejkernel.bench.report import format_device
from ejkernel.kernels.pallas_triton.blocks import choose_block_sizes

__all__ = ["SCHEMA", "bucket_key", "winners", "format_sweep_table", "format_winners", "paste_rows", "format_sweep"]

SCHEMA = "ejkernel-sweep/1"
PASSES = tuple(PASS_FORWARDS)


def bucket_key(record: dict[str, Any]) -> tuple[int, int, str, bool, str]:
    return (
        record["head_dim_row"],
        jnp.dtype(record["dtype"]).itemsize,
        record["range"],
        record["causal"],
        record["pass"],
    )


def _in_order(key: tuple) -> tuple:
    """Buckets sorted by head dim, itemsize, length range, causal, then pass in kernel order."""
    return (*key[:4], PASSES.index(key[4]))


def _blocks(blocks: Sequence[int]) -> str:
    return f"PassBlocks({', '.join(str(b) for b in blocks)})"


def winners(results: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """``{bucket: {"blocks", "score" (1.0 for the winner), "scores" {blocks: score}, "shapes", "current"}}``."""
    by_bucket: dict[tuple, dict[str, dict[tuple, float]]] = {}
    current: dict[tuple, tuple] = {}
    for r in results:
        key = bucket_key(r)
        if r["current"]:
            current.setdefault(key, tuple(r["blocks"]))
        if r["status"] == "ok":
            by_bucket.setdefault(key, {}).setdefault(r["label"], {})[tuple(r["blocks"])] = r["median_ms"]
    out = {}
    for key, shapes in by_bucket.items():
        common = set.intersection(*(set(times) for times in shapes.values()))
        if not common:
            continue
        scores = {
            blocks: math.exp(sum(math.log(times[blocks] / min(times.values())) for times in shapes.values()) / len(shapes))
            for blocks in common
        }
        best = min(scores, key=lambda b: (scores[b], b))
        out[key] = {
            "blocks": best,
            "scores": {b: s / scores[best] for b, s in scores.items()},
            "shapes": sorted(shapes),
            "current": current.get(key),
        }
    return out


def format_sweep_table(results: Sequence[dict[str, Any]]) -> str:
    """Per (shape, causal, pass): every candidate, fastest first, with its slowdown over the fastest."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["label"], r["causal"], r["pass"]), []).append(r)
    rows = [("shape", "causal", "pass", "blocks (q, k, warps, stages)", "median ms", "[min .. max] ms", "TFLOP/s", "vs best", "note")]
    for (label, causal, pass_name), records in groups.items():
        ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["median_ms"])
        best = ok[0]["median_ms"] if ok else None
        first = True
        for r in ok + [r for r in records if r["status"] != "ok"]:
            cells = [label, "yes" if causal else "no", pass_name] if first else ["", "", ""]
            first = False
            cells.append(", ".join(str(b) for b in r["blocks"]))
            note = "current" if r["current"] else ""
            if r["status"] == "ok":
                cells += [
                    f"{r['median_ms']:.4g}",
                    f"[{r['min_ms']:.4g} .. {r['max_ms']:.4g}]",
                    f"{r['tflops']:.3g}" if r["tflops"] < 100 else f"{r['tflops']:.0f}",
                    f"{r['median_ms'] / best:.3f}x",
                ]
            else:
                cells += [r["status"], "", "", ""]
                note = "; ".join(n for n in (note, r.get("reason") or "") if n)
            rows.append((*cells, note))
    widths = [max(len(str(row[j])) for row in rows) for j in range(len(rows[0]) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_winners(results: Sequence[dict[str, Any]]) -> str:
    """One line per bucket: the winner, the runner-up's margin and where the current choice stands."""
    lines = ["fastest per (head dim, itemsize, length range, causal, pass); score = geometric mean of time / best:"]
    for key, w in sorted(winners(results).items(), key=lambda kw: _in_order(kw[0])):
        row, itemsize, length, causal, pass_name = key
        others = sorted((s, b) for b, s in w["scores"].items() if b != w["blocks"])
        runner_up = f"; next {others[0][1]} {others[0][0]:.3f}x" if others else ""
        cur = w["current"]
        if cur is None or cur == w["blocks"]:
            standing = " = current" if cur is not None else ""
        elif cur in w["scores"]:
            standing = f"; current {cur} {w['scores'][cur]:.3f}x"
        else:
            standing = f"; current {cur} did not run on every shape"
        lines.append(
            f"  D{row} {itemsize}-byte {length:5s} causal={'yes' if causal else 'no ':3s} {pass_name:7s} "
            f"{w['blocks']}{runner_up}{standing} ({len(w['shapes'])} shape{'s' if len(w['shapes']) > 1 else ''})"
        )
    return "\n".join(lines)


def paste_rows(results: Sequence[dict[str, Any]], threshold: float = 0.03) -> str:
    """Rows for ``blocks.py``: long-sequence rows and short-sequence overrides (module docstring)."""
    won = winners(results)
    lines = []
    long_rows: dict[tuple[int, int, bool], dict[str, tuple]] = {}
    for (row, itemsize, length, causal, pass_name), w in won.items():
        if length == "long":
            long_rows.setdefault((row, itemsize, causal), {})[pass_name] = w["blocks"]
    for (row, itemsize, causal), passes in sorted(long_rows.items()):
        if set(passes) != set(PASSES):
            missing = ", ".join(p for p in PASSES if p not in passes)
            lines.append(f"# D{row} {itemsize}-byte long{' causal' if causal else ''}: no row ({missing} not swept)")
            continue
        text = f"({row}, {itemsize}): BlockSizes({', '.join(_blocks(passes[p]) for p in PASSES)}),"
        lines.append(text if not causal else f"# causal (the long rows are not keyed by causal): {text}")
    short: dict[tuple[int, bool], list[str]] = {}
    for (row, itemsize, length, causal, pass_name), w in sorted(won.items(), key=lambda kw: _in_order(kw[0])):
        if length != "short":
            continue
        if itemsize != 2:
            lines.append(f"# D{row} {itemsize}-byte short {pass_name}: the short-sequence overrides are for 2-byte dtypes")
            continue
        long_blocks = long_rows.get((row, 2, False), {}).get(pass_name) or _long_row(row, pass_name)
        if long_blocks == w["blocks"]:
            continue
        score = w["scores"].get(long_blocks)
        if score is not None and score <= 1.0 + threshold:
            continue
        versus = f"{score:.3f}x as long" if score is not None else "not timed here"
        short.setdefault((row, causal), []).append(
            f'    "{pass_name}": {_blocks(w["blocks"])},  # long row {long_blocks}: {versus}'
        )
    for (row, causal), entries in sorted(short.items()):
        lines += [f"({row}, {causal}): {{", *entries, "},"]
    return "\n".join(lines) if lines else "# no bucket had a candidate that ran on every one of its shapes"


def _long_row(row: int, pass_name: str) -> tuple[int, ...]:
    """The table's long-sequence blocks of head-dim ``row`` for 2-byte dtypes (what a short override replaces)."""
    longest = 1 << 20  # longer than any block: nothing is clipped
    return dataclasses.astuple(getattr(choose_block_sizes(row, row, longest, longest, 2), pass_name))


def format_sweep(doc: dict[str, Any], threshold: float = 0.03) -> str:
    """The whole text report: header, table, winners and the rows to paste."""
    env, config = doc["environment"], doc["config"]
    header = [
        f"ejkernel bench sweep  {env['date']}  {env['command']}",
        *([] if doc.get("complete", True) else ["INCOMPLETE: the run was interrupted; what was measured follows"]),
        format_device(env),
        f"method: each pass's kernel alone on padded operands; {config['warmup']} warm-up calls, {config['rounds']} rounds "
        "of back-to-back calls, one sync per round; median [min .. max] per call; TFLOP/s of the pass's matmuls "
        "(forward 1, dK/dV 2, dQ 1.5 forwards of 4·B·Hq·Sq·Skv·D, x0.5 causal)"
        + ("; Pallas interpret mode (the times say nothing about a GPU)" if config.get("interpret") else ""),
    ]
    skipped = sum(r["status"] == "skipped" for r in doc["results"])
    if skipped:
        header.append(f"skipped: {skipped} measurements after the time budget ({config.get('budget_s')} s) ran out")
    parts = [
        "\n".join(header),
        format_sweep_table(doc["results"]),
        format_winners(doc["results"]),
        f"rows for ejkernel/kernels/pallas_triton/blocks.py (short overrides: only passes > {threshold:.0%} faster "
        "than the long row):\n" + paste_rows(doc["results"], threshold),
    ]
    return "\n\n".join(parts) + "\n"
