"""The results of a run as a JSON document and as a plain-text table."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

__all__ = [
    "SCHEMA",
    "BASELINE",
    "config_key",
    "speedups",
    "build_document",
    "format_table",
    "format_dispatch",
    "format_device",
    "format_header",
    "never_ran",
    "write_json",
    "write_text",
    "write_text_file",
]

SCHEMA = "ejkernel-bench/1"
BASELINE = "jax.nn:xla"  # speedups are over this implementation on the same configuration


def config_key(record: dict[str, Any]) -> tuple:
    """What identifies one configuration, independent of the implementation."""
    s = record["shape"]
    return (
        record["grid"],
        s["batch"],
        s["q_len"],
        s["kv_len"],
        s["num_q_heads"],
        s["num_kv_heads"],
        s["head_dim"],
        record["causal"],
        record["mode"],
        record["dtype"],
    )


def speedups(results: Sequence[dict[str, Any]], baseline: str = BASELINE) -> dict[int, float]:
    """``{index: baseline median / median}`` for every ok result whose configuration has an ok baseline."""
    base = {config_key(r): r["median_ms"] for r in results if r["impl"] == baseline and r["status"] == "ok"}
    out = {}
    for i, r in enumerate(results):
        ref = base.get(config_key(r))
        if r["status"] == "ok" and ref:
            out[i] = ref / r["median_ms"]
    return out


def build_document(
    env: dict[str, Any],
    config: dict[str, Any],
    results: Sequence[dict[str, Any]],
    *,
    not_run: Sequence[tuple[str, str]] = (),
    dispatch: dict[str, Any] | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "environment": env,
        "config": config,
        "complete": complete,
        "not_run_here": [{"impl": name, "reason": reason} for name, reason in not_run],
        "dispatch": dispatch,
        "results": list(results),
    }


def _ms(x: float) -> str:
    return f"{x:.4g}"


def _tflops(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def never_ran(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{impl: reason}`` for implementations that were n/a for every configuration, for the same reason."""
    reasons: dict[str, set] = {}
    for r in results:
        reasons.setdefault(r["impl"], set()).add(r.get("reason") if r["status"] == "n/a" else None)
    return {impl: next(iter(rs)) for impl, rs in reasons.items() if len(rs) == 1 and None not in rs}


def format_device(env: dict[str, Any]) -> str:
    """One line of an ``environment`` record: device, count, versions, driver, cuDNN and host load."""
    return (
        f"device: {env['device_kind']} ({env['platform']}) x{env['device_count']}; jax {env['jax']} jaxlib {env['jaxlib']}"
        + (f"; driver {env['driver']}" if env.get("driver") else "")
        + (f"; cuDNN {env['cudnn']}" if env.get("cudnn") else "")
        + (f"; host load {env['load_average'][0]:g} on {env['cpu_count']} CPUs" if env.get("load_average") else "")
    )


def format_header(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    peak = env.get("peak") or {}
    lines = [
        f"ejkernel bench  {env['date']}  {env['command']}",
        *([] if doc.get("complete", True) else ["INCOMPLETE: the run was interrupted; what was measured follows"]),
        format_device(env),
    ]
    if peak.get("nominal_tflops"):
        ceiling = f", measured matmul ceiling {peak['ceiling_tflops']:g}" if peak.get("ceiling_tflops") else ""
        lines.append(
            f"peak: {peak['name']} {peak['nominal_tflops']:g} TFLOP/s nominal{ceiling} ({doc['config']['dtype']})"
        )
    else:
        lines.append("peak: unknown for this device (no % of peak)")
    c = doc["config"]
    lines.append(
        f"method: {c['warmup']} warm-up calls, {c['rounds']} rounds of back-to-back calls, one sync per round; "
        "median [min .. max] per call; TFLOP/s = 4·B·Hq·Sq·Skv·D (x0.5 causal, x3.5 fwd+bwd) / median"
    )
    for item in doc.get("not_run_here", []):
        lines.append(f"not run here: {item['impl']}: {item['reason']}")
    for impl, reason in never_ran(doc["results"]).items():
        lines.append(f"n/a for every configuration: {impl}: {reason}")
    skipped = sum(r["status"] == "skipped" for r in doc["results"])
    if skipped:
        lines.append(f"skipped: {skipped} measurements after the time budget ({c.get('budget_s')} s) ran out")
    return "\n".join(lines)


def format_table(results: Sequence[dict[str, Any]], baseline: str = BASELINE) -> str:
    """One row per (configuration, implementation); n/a rows carry their reason.

    Left out (the header lists them): implementations n/a everywhere for one reason, and "same" records.
    """
    ratio = speedups(results, baseline)
    hidden = never_ran(results)
    header = (
        "grid",
        "shape",
        "causal",
        "mode",
        "impl",
        "median ms",
        "[min .. max] ms",
        "TFLOP/s",
        "% peak",
        f"vs {baseline}",
        "peak MiB",
        "note",
    )
    rows = [header]
    previous = None
    for i, r in enumerate(results):
        if r["impl"] in hidden or r["status"] == "same":
            continue
        key = config_key(r)
        first = key != previous
        previous = key
        cells = [r["grid"], r["label"], "yes" if r["causal"] else "no", r["mode"]] if first else ["", "", "", ""]
        cells.append(r["impl"])
        if r["status"] == "ok":
            pct = f"{r['pct_peak']:.1f}" if r.get("pct_peak") is not None else "-"
            mem = r.get("peak_memory_bytes")
            cells += [
                _ms(r["median_ms"]),
                f"[{_ms(r['min_ms'])} .. {_ms(r['max_ms'])}]",
                _tflops(r["tflops"]),
                pct,
                f"{ratio[i]:.2f}x" if i in ratio else "-",
                f"{mem / 2**20:.1f}" if mem is not None else "-",
                r.get("served_by", "") if r.get("served_by") not in (None, r["impl"].split(":", 1)[-1]) else "",
            ]
        else:
            cells += [r["status"], "", "", "", "", "", r.get("reason") or ""]
        rows.append(tuple(cells))
    widths = [max(len(str(row[j])) for row in rows) for j in range(len(header) - 1)]
    lines = []
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + str(row[-1]))
    return "\n".join(line.rstrip() for line in lines)


def format_dispatch(dispatch: dict[str, Any] | None) -> str:
    if not dispatch:
        return ""
    if "error" in dispatch:
        return f"dispatch: not measured ({dispatch['error']})"
    e = dispatch["eager"]
    same = "identical" if dispatch["all_same_program"] else "DIFFERENT"
    failures = [f"{c['mode']}{' causal' if c['causal'] else ''}" for c in dispatch["programs"] if not c["same_program"]]
    lines = [
        f"dispatch ({dispatch['shape']} {dispatch['dtype']}, ejkernel.attention -> {dispatch['implementation']}):",
        f"  under jax.jit: lowered program {same} to calling the implementation directly "
        f"(fwd and fwd+bwd, causal and not){'; differs for ' + ', '.join(failures) if failures else ''}",
        f"  eager: {e['dispatched_us']:.0f} us per call vs {e['direct_us']:.0f} us direct; overhead "
        f"{e['overhead_us']:.0f} us (median), {e['overhead_min_us']:.0f} us (difference of minima)",
    ]
    if "decision_us" in e:
        lines.append(f"  the dispatch decision alone (ejkernel.explain): {e['decision_us']:.0f} us")
    return "\n".join(lines)


def _atomic_write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)


def write_json(doc: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Writes ``doc`` (atomically, so a run cut short leaves the last complete snapshot)."""
    path = pathlib.Path(path)
    _atomic_write(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def write_text_file(text: str, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``text`` (atomically) and returns the path."""
    path = pathlib.Path(path)
    _atomic_write(path, text)
    return path


def write_text(doc: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """The bench document's header, table and dispatch report as text."""
    parts = [format_header(doc), format_table(doc["results"]), format_dispatch(doc.get("dispatch"))]
    return write_text_file("\n\n".join(p for p in parts if p) + "\n", path)
