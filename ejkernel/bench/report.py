"""The results of a run as a JSON document and as a plain-text table."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import textwrap
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
    "auto_against_fastest",
    "auto_pairs",
    "auto_behind",
    "format_auto_check",
    "AUTO",
    "AUTO_TOLERANCE",
    "format_device",
    "format_header",
    "fit",
    "WIDTH",
    "never_ran",
    "write_json",
    "write_text",
    "write_text_file",
]

SCHEMA = "ejkernel-bench/1"
WIDTH = 120  # the text table and its header fit a 120-column terminal
BASELINE = "jax.nn:xla"  # speedups are over this implementation on the same configuration
AUTO = "ejkernel:auto"
#: ``auto`` counts as at least as fast as the fastest other implementation when within this fraction of it:
#: it runs one of them, so a gap this small is the rounds' noise (their spread is of this order on a GPU).
AUTO_TOLERANCE = 0.03


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
    auto_confirmed: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "environment": env,
        "config": config,
        "complete": complete,
        "not_run_here": [{"impl": name, "reason": reason} for name, reason in not_run],
        "dispatch": dispatch,
        "auto_confirmed": list(auto_confirmed),
        "results": list(results),
    }


def _ms(x: float) -> str:
    return f"{x:.4g}"


def _tflops(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def never_ran(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{impl: reason}`` for implementations that were n/a for every configuration they reached (skipped
    ones say nothing), for the same reason."""
    reasons: dict[str, set] = {}
    for r in results:
        if r["status"] != "skipped":
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


def fit(line: str, width: int = WIDTH, indent: str = "    ") -> str:
    """``line`` wrapped at ``width`` columns, continuation lines indented (words are never split)."""
    if len(line) <= width:
        return line
    lead = line[: len(line) - len(line.lstrip())]
    return textwrap.fill(
        line, width, initial_indent="", subsequent_indent=lead + indent, break_long_words=False, break_on_hyphens=False
    )


def _skipped_summary(results: Sequence[dict[str, Any]], budget: Any) -> str | None:
    skipped = [r for r in results if r["status"] == "skipped"]
    if not skipped:
        return None
    configurations = len({config_key(r) for r in skipped})
    impls = len({r["impl"] for r in skipped})
    return (
        f"skipped: {len(skipped)} measurements ({configurations} configurations x up to {impls} implementations) "
        f"after the time budget ({budget} s) ran out; they are left out of the table"
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
        "median per call; TFLOP/s = 4*B*Hq*Sq*Skv*D (x0.5 causal, x3.5 fwd+bwd) / median"
    )
    for item in doc.get("not_run_here", []):
        lines.append(f"not run here: {item['impl']}: {item['reason']}")
    for impl, reason in never_ran(doc["results"]).items():
        lines.append(f"n/a for every configuration: {impl}: {reason}")
    skipped = _skipped_summary(doc["results"], c.get("budget_s"))
    if skipped:
        lines.append(skipped)
    return "\n".join(fit(line) for line in lines)


def _pass_label(record: dict[str, Any]) -> str:
    return record["mode"] + (", causal" if record["causal"] else "")


def _spread(r: dict[str, Any]) -> str:
    """The fastest and slowest round against the median, in percent: ``-3% +8%``."""
    median = r["median_ms"]
    return f"-{100 * (median - r['min_ms']) / median:.0f}% +{100 * (r['max_ms'] - median) / median:.0f}%"


def _baseline_short(baseline: str) -> str:
    return baseline.split(":")[-1] if baseline.startswith("jax.nn:") else baseline


def format_table(results: Sequence[dict[str, Any]], baseline: str = BASELINE, width: int = WIDTH) -> str:
    """The results, one block per configuration and one row per implementation, within ``width`` columns.

    Notes (every n/a reason, and which implementation served a call) are footnoted once each, below the
    table. Left out (the header lists or counts them): implementations n/a everywhere for one reason,
    "same" records (timed under their platform's name) and skipped ones.
    """
    ratio = speedups(results, baseline)
    hidden = never_ran(results)
    notes: dict[str, int] = {}

    def mark(text: str) -> str:
        return f"[{notes.setdefault(text, len(notes) + 1)}]"

    header = ("impl", "median ms", "spread", "TFLOP/s", "% peak", f"vs {_baseline_short(baseline)}", "peak MiB", "note")
    blocks: dict[tuple, tuple[str, list[tuple[str, ...]]]] = {}
    for i, r in enumerate(results):
        if r["impl"] in hidden or r["status"] in ("same", "skipped"):
            continue
        heading = f"{r['grid']}  {r['label']}  {_pass_label(r)}"
        rows = blocks.setdefault(config_key(r), (heading, []))[1]
        if r["status"] == "ok":
            pct = f"{r['pct_peak']:.1f}" if r.get("pct_peak") is not None else "-"
            mem = r.get("peak_memory_bytes")
            served = r.get("served_by")
            note = mark(f"served by {served}") if served not in (None, r["impl"].split(":", 1)[-1]) else ""
            rows.append((
                r["impl"], _ms(r["median_ms"]), _spread(r), _tflops(r["tflops"]), pct,
                f"{ratio[i]:.2f}x" if i in ratio else "-", f"{mem / 2**20:.1f}" if mem is not None else "-", note,
            ))  # fmt: skip
        else:
            rows.append((r["impl"], r["status"], "", "", "", "", "", mark(r.get("reason") or "no reason recorded")))
    if not blocks:
        return "no measurement to show"
    every_row = [header, *(row for _, rows in blocks.values() for row in rows)]
    widths = [max(len(row[j]) for row in every_row) for j in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return ("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()

    lines = [line(header)]
    for heading, rows in blocks.values():
        lines.append(heading)
        lines.extend(line(row) for row in rows)
    lines.append("")
    lines.append(
        fit(
            f"spread: the fastest and the slowest round against the median; vs {_baseline_short(baseline)}: "
            f"speedup over {baseline} on the same configuration; peak MiB: the compiled step's peak memory",
            width,
        )
    )
    lines.extend(fit(f"[{n}] {text}", width) for text, n in notes.items())
    return "\n".join(lines)


def auto_pairs(results: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(auto's record, the fastest other record)`` of every configuration where ``ejkernel:auto`` and at
    least one other implementation ran.

    Every timed implementation computes the call exactly (a strict ``ejkernel:<platform>`` never falls back,
    and the baselines are only timed where they match our semantics), so each is a fair candidate."""
    by_config: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if r["status"] == "ok":
            by_config.setdefault(config_key(r), []).append(r)
    out = []
    for records in by_config.values():
        auto = [r for r in records if r["impl"] == AUTO]
        others = [r for r in records if r["impl"] != AUTO]
        if auto and others:
            out.append((auto[0], min(others, key=lambda r: r["median_ms"])))
    return out


def auto_against_fastest(results: Sequence[dict[str, Any]]) -> list[tuple[str, float, str]]:
    """``(configuration, fastest median / auto's median, fastest implementation)`` of each ``auto_pairs``
    pair (a ratio below 1: auto was slower)."""
    return [(_configuration(auto), fastest["median_ms"] / auto["median_ms"], fastest["impl"])
            for auto, fastest in auto_pairs(results)]  # fmt: skip


def auto_behind(results: Sequence[dict[str, Any]], tolerance: float = AUTO_TOLERANCE) -> list[tuple[dict, dict]]:
    """The ``auto_pairs`` where auto was slower than ``1 - tolerance`` times the fastest other."""
    return [(auto, fastest) for auto, fastest in auto_pairs(results)
            if fastest["median_ms"] / auto["median_ms"] < 1 - tolerance]  # fmt: skip


def _configuration(record: dict[str, Any]) -> str:
    return f"{record['label']} {_pass_label(record)}"


def format_auto_check(
    results: Sequence[dict[str, Any]], confirmed: Sequence[dict[str, Any]] = (), width: int = WIDTH
) -> str:
    """One paragraph: in how many configurations ``auto`` ran at least as fast as the fastest other
    implementation (within ``AUTO_TOLERANCE``), and each one where it did not ("" without auto), with the
    interleaved re-measure of that pair where ``confirmed`` has one (``confirm.confirm_auto``)."""
    total = len(auto_pairs(results))
    if not total:
        return ""
    again = {(c["label"], c["mode"], c["causal"]): c for c in confirmed}
    behind = auto_behind(results)
    lines = [fit(f"{AUTO} against the fastest other implementation of each configuration: as fast (within "
                 f"{AUTO_TOLERANCE:.0%}) in {total - len(behind)} of {total}", width)]
    still = 0
    for auto, fastest in behind:
        line = f"  behind in {_configuration(auto)}: {fastest['median_ms'] / auto['median_ms']:.2f}x of {fastest['impl']}"
        c = again.get((auto["label"], auto["mode"], auto["causal"]))
        if c is not None and "ratio" in c:
            line += f"; interleaved, {c['rounds']} rounds each: {c['ratio']:.2f}x"
            still += c["ratio"] < 1 - AUTO_TOLERANCE
        elif c is not None:
            line += f"; interleaved re-measure failed ({c['error']})"
            still += 1
        else:
            still += 1
        lines.append(fit(line, width))
    if again and behind:
        lines.append(fit(f"  after the interleaved re-measure: as fast in {total - still} of {total}", width))
    return "\n".join(lines)


def format_dispatch(dispatch: dict[str, Any] | None) -> str:
    if not dispatch:
        return ""
    if "error" in dispatch:
        return fit(f"dispatch: not measured ({dispatch['error']})")
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
    return "\n".join(fit(line) for line in lines)


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
    """The bench document's header, table, ``auto``'s standing and dispatch report as text."""
    parts = [format_header(doc), format_table(doc["results"]),
             format_auto_check(doc["results"], doc.get("auto_confirmed") or ()),
             format_dispatch(doc.get("dispatch"))]
    return write_text_file("\n\n".join(p for p in parts if p) + "\n", path)
