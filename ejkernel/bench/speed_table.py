"""``ejkernel bench table RESULT.json ...``: the speed table ``platform="auto"`` ranks by, from bench results.

Reads one or more ``ejkernel bench`` results measured on one device kind, keeps the ``ejkernel:<platform>``
rows that ran, and writes ``ejkernel/ops/attention/speed_tables/<device kind>.json`` (or ``--out``):
the mean TFLOP/s of each platform per shape class and pass (``ejkernel.ops.attention.speed``). Results are
given oldest first: where a later one measured a platform in a class and pass, it replaces the earlier ones
(they may have timed an older version of that kernel). A result from another device kind than the first is
an error: one table describes one device.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ejkernel.ops.attention import speed

__all__ = ["build_table_parser", "run_table"]

TABLES = pathlib.Path(__file__).resolve().parent.parent / "ops" / "attention" / "speed_tables"


def build_table_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ejkernel bench table",
        description="Write the measured speed table that platform='auto' ranks implementations by, from "
        "ejkernel bench results of one device kind.",
    )
    p.add_argument("results", nargs="+",
                   help="ejkernel bench results (JSON) measured on one device kind, oldest first (a later one's "
                   "measurement of a platform in a class replaces the earlier ones')")
    p.add_argument("--out", help=f"the table to write (default {TABLES}/<device kind>.json)")
    return p


def run_table(argv: list[str]) -> int:
    """Entry point of ``ejkernel bench table``; 2 for unreadable results or mixed device kinds."""
    args = build_table_parser().parse_args(argv)
    kinds, runs, sources = set(), [], []
    for name in args.results:
        try:
            doc = json.loads(pathlib.Path(name).read_text())
            kinds.add(doc["environment"]["device_kind"])
            runs.append(list(doc["results"]))
            sources.append(doc["environment"].get("command") or pathlib.Path(name).name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"ejkernel bench table: {name}: not a bench result ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
    if len(kinds) != 1:
        print(f"ejkernel bench table: the results come from several device kinds {sorted(kinds)}", file=sys.stderr)
        return 2
    (kind,) = kinds
    table = speed.build_table(runs, kind, " | ".join(sources))
    if not table["classes"]:
        print("ejkernel bench table: no ejkernel:<platform> result that ran falls in a shape class", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out) if args.out else TABLES / speed.table_file_name(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {out}: {len(table['classes'])} shape classes measured on {kind}")
    return 0
