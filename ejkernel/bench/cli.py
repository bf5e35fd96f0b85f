"""``ejkernel bench``: time ejkernel's implementations and the baselines over named shape grids.

    ejkernel bench [--grid small|fa3|decode|gqa ...] [--shape B,Sq,Skv,Hq,Hkv,D ...] [options]
    ejkernel bench compare BASE.json NEW.json [--threshold 0.02] [--all]
    ejkernel bench render RESULT.json [--out DIR]   (the table and plots again, e.g. where matplotlib is)
    ejkernel bench sweep [--shape ...] [--causal no|yes|both] [--pass P] [--candidate P:BQ,BK,W,S] [--interpret]
    ejkernel bench parity [--platform triton] [--dtype D] [--case NAME] [--interpret]
    ejkernel bench packing [--case packed|kv_lengths] [--platform P] [--tokens T --docs N] [--cache C]
    ejkernel bench table RESULT.json ...   (the measured speed table platform="auto" ranks by)

Writes ``<out>/<name>.json`` (kept up to date while it runs), ``<name>.txt`` (the table) and
``<name>.png`` plots (with matplotlib), and prints the table. ``sweep`` times the Triton kernels' passes
for candidate block sizes (``ejkernel.bench.sweep``); ``parity`` checks every capability class at GPU
sizes (``ejkernel.bench.parity``); ``packing`` times segment ids and key lengths against the batch, the full
cache and the dense mask they replace (``ejkernel.bench.packing``). ``run(argv)`` returns the exit status; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "run", "build_parser", "build_compare_parser", "build_sweep_parser", "build_parity_parser", "build_packing_parser",
    "select_shapes",
]


USAGE = """\
ejkernel bench [options]
       ejkernel bench {compare,render,sweep,parity,packing,table} ..."""

DESCRIPTION = """\
Time every ejkernel implementation that runs here beside the baselines (jax.nn XLA and cuDNN,
tokamax) over shape grids. Writes OUT/NAME.json (rewritten after every measurement), NAME.txt (the
table, also printed) and NAME.png (the plots; they need matplotlib: pip install 'ejkernel[bench]')."""

COMMANDS = """\
commands:
  ejkernel bench compare BASE.json NEW.json  what got slower or stopped running, beyond the noise
  ejkernel bench render RESULT.json          draw a result's table and plots again
  ejkernel bench sweep [--shape ...]         time the Triton kernel's passes for candidate block sizes
  ejkernel bench parity [--platform triton]  every capability class at GPU sizes against the oracle
  ejkernel bench packing [--case packed]     packed rows and kv_lengths decoding beside batches and masks
  ejkernel bench table RESULT.json ...       write the speed table platform='auto' ranks implementations by

Each command has its own --help, for instance: ejkernel bench render --help"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ejkernel.bench.grids import GRID_DESCRIPTIONS

    grids = "; ".join(f"{name}: {text}" for name, text in GRID_DESCRIPTIONS.items())
    p = argparse.ArgumentParser(
        prog="ejkernel bench",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--grid",
        action="append",
        choices=sorted(GRID_DESCRIPTIONS),
        help=f"shape grid (repeatable; default small). {grids}",
    )
    p.add_argument(
        "--shape", action="append", default=[], metavar="B,Sq,Skv,Hq,Hkv,D", help="a custom shape (repeatable)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--mode", default="both", choices=["fwd", "fwd+bwd", "both"])
    p.add_argument("--causal", default="both", choices=["no", "yes", "both"])
    p.add_argument("--max-seq", type=_positive_int, help="drop grid shapes whose longest sequence is longer")
    p.add_argument("--min-seq", type=_positive_int, help="drop grid shapes whose longest sequence is shorter")
    p.add_argument("--head-dim", type=_positive_int, action="append", help="keep only these head dims (repeatable)")
    p.add_argument("--impl", action="append", help="only implementations whose name contains this (repeatable)")
    p.add_argument("--skip-impl", action="append", help="no implementation whose name contains this (repeatable)")
    _add_timing_options(p)
    p.add_argument(
        "--rotate-mib", type=_positive_int, default=256, help="rotate input sets until they span this many MiB"
    )
    p.add_argument("--max-buffers", type=_positive_int, default=8)
    p.add_argument(
        "--budget-s", type=float, help="start no new configuration after this many seconds (the rest: skipped)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="output file stem (default bench_<platform>_<grids>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-dispatch", action="store_true", help="skip the dispatch-overhead check")
    p.add_argument(
        "--no-confirm",
        action="store_true",
        help="do not time again, interleaved, the configurations where ejkernel:auto measured behind",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def select_shapes(args: argparse.Namespace) -> list[Any]:
    """Named grids (filtered by --max-seq/--min-seq/--head-dim) then custom shapes (never filtered)."""
    from ejkernel.bench.grids import build_grid, filter_shapes, parse_shape

    grids = args.grid or ([] if args.shape else ["small"])
    shapes = []
    for name in dict.fromkeys(grids):
        shapes += filter_shapes(build_grid(name), max_seq=args.max_seq, min_seq=args.min_seq, head_dims=args.head_dim)
    shapes += [parse_shape(s) for s in args.shape]
    return shapes


def _add_timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warmup", type=_positive_int, default=2, help="warm-up calls after the first (default 2)")
    p.add_argument("--rounds", type=_positive_int, default=5, help="timed rounds (default 5)")
    p.add_argument("--calls", type=_positive_int, help="calls per round (default: a round lasts --target-round-ms)")
    p.add_argument("--target-round-ms", type=float, default=50.0)
    p.add_argument("--max-calls", type=_positive_int, default=100, help="most calls per round (default 100)")


def build_sweep_parser() -> argparse.ArgumentParser:
    from ejkernel.bench.sweep import PASSES

    p = argparse.ArgumentParser(
        prog="ejkernel bench sweep",
        description="Time each pass of the Triton flash attention (forward, dK/dV, dQ) alone for candidate "
        "block sizes; print the table, the fastest per (head dim, length range, causal, pass) and rows for "
        "ejkernel/kernels/pallas_triton/blocks.py.",
    )
    p.add_argument(
        "--shape", action="append", default=[], metavar="B,Sq,Skv,Hq,Hkv,D",
        help="a shape to sweep (repeatable; default: the long and short shapes of ejkernel.bench.sweep.SWEEP_SHAPES)",
    )  # fmt: skip
    p.add_argument("--max-seq", type=_positive_int, help="drop default shapes whose longest sequence is longer")
    p.add_argument("--min-seq", type=_positive_int, help="drop default shapes whose longest sequence is shorter")
    p.add_argument("--head-dim", type=_positive_int, action="append", help="keep only default shapes of these head dims")
    p.add_argument("--causal", default="no", choices=["no", "yes", "both"])
    p.add_argument("--pass", dest="passes", action="append", choices=PASSES, help="only this pass (repeatable)")
    p.add_argument(
        "--candidate", action="append", default=[], metavar="PASS:BQ,BK[,WARPS[,STAGES]]",
        help="time these blocks for PASS instead of its default candidates (repeatable; the current choice is always timed)",
    )  # fmt: skip
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    _add_timing_options(p)
    p.add_argument("--budget-s", type=float, help="start no new measurement after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpret", action="store_true", help="Pallas interpret mode: runs anywhere, times mean nothing")
    p.add_argument("--threshold", type=float, default=0.03, help="a short-sequence override must be this much faster")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="output file stem (default sweep_<platform>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_parity_parser() -> argparse.ArgumentParser:
    from ejkernel.bench.parity import DTYPES

    p = argparse.ArgumentParser(
        prog="ejkernel bench parity",
        description="Every capability class at GPU sizes (ejkernel.bench.parity.PARITY_CASES), forward and "
        "gradients, through the registry against the float32 oracle; the platform must serve every call. "
        "One line per case and dtype as it finishes; exit 1 on any failure.",
    )
    p.add_argument("--platform", default="triton", help="the platform that must serve every call (default triton)")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="only this dtype (repeatable)")
    p.add_argument("--case", action="append", help="only this case (repeatable; see ejkernel.bench.parity.PARITY_CASES)")
    p.add_argument("--interpret", action="store_true", help="run Pallas kernels in interpret mode (any device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="output file stem (default parity_<platform>)")
    return p


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ejkernel bench compare",
        description="Diff two 'ejkernel bench' JSON results; exit 1 when something got slower beyond the "
        "noise (the [min, max] ranges of the two runs do not overlap) or stopped running.",
    )
    p.add_argument("base", help="the earlier result (JSON)")
    p.add_argument("new", help="the later result (JSON)")
    p.add_argument("--threshold", type=float, default=0.0, help="also require the medians to differ by this fraction")
    p.add_argument("--all", action="store_true", help="show changes within noise too")
    return p


def build_packing_parser() -> argparse.ArgumentParser:
    from ejkernel.bench.packing import CASES, PackingConfig

    d = PackingConfig()
    p = argparse.ArgumentParser(
        prog="ejkernel bench packing",
        description="Packed rows (segment ids) against a batch, and kv_lengths decoding against the full cache, "
        "each beside the dense mask.",
    )
    p.add_argument("--case", action="append", choices=CASES, help="only this comparison (repeatable)")
    p.add_argument("--platform", default="auto", help="the platform asked for (default auto)")
    p.add_argument("--interpret", action="store_true", help="Pallas interpret mode: runs anywhere, times mean nothing")
    p.add_argument("--dtype", default=d.dtype, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--tokens", type=_positive_int, default=d.tokens, help=f"tokens of the packed row (default {d.tokens})")
    p.add_argument("--docs", type=_positive_int, default=d.docs, help=f"documents per packed row (default {d.docs})")
    p.add_argument("--heads", type=_positive_int, default=d.heads, help=f"heads of the packed case (default {d.heads})")
    p.add_argument("--head-dim", type=_positive_int, default=d.head_dim)
    p.add_argument("--cache", type=_positive_int, default=d.cache, help=f"decoding cache length (default {d.cache})")
    p.add_argument("--decode-batch", type=_positive_int, default=d.decode_batch)
    p.add_argument("--decode-heads", type=_positive_int, default=d.decode_heads)
    p.add_argument("--decode-kv-heads", type=_positive_int, default=d.decode_kv_heads)
    _add_timing_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="output file stem (default packing_<platform>)")
    return p


def _run_packing(argv: list[str]) -> int:
    import pathlib

    from ejkernel.bench import report
    from ejkernel.bench.environment import environment
    from ejkernel.bench.packing import CASES, PackingConfig, format_rows, ratios, run_packing

    parser = build_packing_parser()
    args = parser.parse_args(argv)
    try:
        config = PackingConfig(args.tokens, args.docs, args.heads, args.head_dim, args.cache, args.decode_batch,
                               args.decode_heads, args.decode_kv_heads, args.dtype)
    except ValueError as e:
        parser.error(str(e))
    env = environment(["packing", *argv], args.dtype)
    stem = args.name or f"packing_{env['platform']}"
    json_path = pathlib.Path(args.out) / f"{stem}.json"
    timing = dict(warmup=args.warmup, rounds=args.rounds, calls=args.calls, target_round_s=args.target_round_ms / 1e3,
                  max_calls=args.max_calls)
    rows = run_packing(config, tuple(args.case or CASES), platform=args.platform, seed=args.seed,
                       interpret=args.interpret, **timing)
    doc = {"schema": "ejkernel-packing/1", "environment": env, "config": dataclasses.asdict(config) | timing,
           "results": rows, "ratios": ratios(rows)}  # fmt: skip
    report.write_json(doc, json_path)
    print(format_rows(rows), end="", flush=True)
    print(f"wrote {json_path}", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> Any:
    from ejkernel.bench.flops import MODES
    from ejkernel.bench.runner import MIB, BenchConfig

    return BenchConfig(
        dtype=args.dtype,
        modes=MODES if args.mode == "both" else (args.mode,),
        causals={"no": (False,), "yes": (True,), "both": (False, True)}[args.causal],
        warmup=args.warmup,
        rounds=args.rounds,
        calls=args.calls,
        target_round_s=args.target_round_ms / 1e3,
        max_calls=args.max_calls,
        rotate_bytes=args.rotate_mib * MIB,
        max_buffers=args.max_buffers,
        budget_s=args.budget_s,
        seed=args.seed,
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While running, SIGTERM (e.g. from ``timeout``) stops like Ctrl-C, so the partial table is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_bench(argv: list[str]) -> int:
    import pathlib

    from ejkernel.bench import report
    from ejkernel.bench.environment import environment
    from ejkernel.bench.implementations import all_candidates
    from ejkernel.bench.plots import matplotlib_missing, write_plots
    from ejkernel.bench.progress import ProgressBar
    from ejkernel.bench.runner import run_benchmarks

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shapes = select_shapes(args)
    except ValueError as e:
        parser.error(str(e))
    if not shapes:
        parser.error("no shapes left: the filters (--max-seq, --min-seq, --head-dim) removed every grid shape")
    config = _config(args)
    env = environment(argv, args.dtype)
    candidates, not_run = all_candidates(args.impl, args.skip_impl)
    if not candidates:
        parser.error(f"no implementation left after --impl {args.impl} --skip-impl {args.skip_impl}")
    grids = list(dict.fromkeys(s.grid for s in shapes))
    stem = args.name or f"bench_{env['platform']}_{'+'.join(grids)}"
    out = pathlib.Path(args.out)
    json_path = out / f"{stem}.json"
    config_record = {**dataclasses.asdict(config), "grids": grids, "implementations": [c.name for c in candidates]}
    results: list[dict[str, Any]] = []

    def snapshot(record: dict[str, Any]) -> None:
        results.append(record)
        report.write_json(
            report.build_document(env, config_record, results, not_run=not_run, complete=False), json_path
        )

    progress = ProgressBar(enabled=not args.quiet)
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            run_benchmarks(
                shapes,
                candidates,
                config,
                peak_tflops=env["peak"]["nominal_tflops"],
                ceiling_tflops=env["peak"]["ceiling_tflops"],
                progress=progress,
                on_result=snapshot,
            )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing what was measured", file=sys.stderr)
    confirmed: list[dict[str, Any]] = []
    if not args.no_confirm and not interrupted:
        from ejkernel.bench.confirm import confirm_auto

        try:
            with _sigterm_as_interrupt():
                confirmed = confirm_auto(results, candidates, shapes, config)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: writing what was measured", file=sys.stderr)
    dispatch = None
    if not args.no_dispatch and not interrupted:
        from ejkernel.bench.dispatch import dispatch_report

        try:
            dispatch = dispatch_report(dtype=args.dtype)
        except Exception as e:  # the timings are still worth writing
            dispatch = {"error": f"{type(e).__name__}: {e}"[:300]}
    doc = report.build_document(
        env, config_record, results, not_run=not_run, dispatch=dispatch, complete=not interrupted,
        auto_confirmed=confirmed,
    )
    report.write_json(doc, json_path)
    text_path = report.write_text(doc, out / f"{stem}.txt")
    print(text_path.read_text(), end="", flush=True)
    written = [json_path, text_path]
    if not args.no_plots:
        missing = matplotlib_missing()
        if missing:
            print(missing, file=sys.stderr)
        else:
            written += write_plots(doc, out, stem)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 130 if interrupted else 0


def _run_compare(argv: list[str]) -> int:
    from ejkernel.bench.compare import compare_results, format_comparison, has_regressions, load

    args = build_compare_parser().parse_args(argv)
    base, new = load(args.base), load(args.new)
    for doc, name in ((base, args.base), (new, args.new)):
        env = doc.get("environment", {})
        print(f"{name}: {env.get('device_kind')} jax {env.get('jax')} {env.get('date')}")
    if base.get("environment", {}).get("device_kind") != new.get("environment", {}).get("device_kind"):
        print("warning: the two runs are on different devices", file=sys.stderr)
    rows = compare_results(base["results"], new["results"], args.threshold)
    print(format_comparison(rows, show_all=args.all))
    return 1 if has_regressions(rows) else 0


def _run_sweep(argv: list[str]) -> int:
    import pathlib

    from ejkernel.bench import report
    from ejkernel.bench.environment import environment
    from ejkernel.bench.grids import filter_shapes, parse_shape
    from ejkernel.bench.progress import ProgressBar
    from ejkernel.bench.sweep import PASSES, SWEEP_SHAPES, SweepConfig, head_dim_row, parse_candidate, run_sweep
    from ejkernel.bench.sweep_report import SCHEMA, format_sweep
    from ejkernel.platform import current_platform

    parser = build_sweep_parser()
    args = parser.parse_args(argv)
    passes = tuple(dict.fromkeys(args.passes or PASSES))
    custom: dict[str, list] = {}
    try:
        if args.shape:
            shapes = [parse_shape(s) for s in args.shape]
        else:
            shapes = filter_shapes(SWEEP_SHAPES, max_seq=args.max_seq, min_seq=args.min_seq, head_dims=args.head_dim)
        for s in shapes:
            head_dim_row(s.head_dim)
        for text in args.candidate:
            name, blocks = parse_candidate(text)
            custom.setdefault(name, []).append(blocks)
    except ValueError as e:
        parser.error(str(e))
    if not shapes:
        parser.error("no shapes left: the filters (--max-seq, --min-seq, --head-dim) removed every sweep shape")
    unswept = sorted(set(custom) - set(passes))
    if unswept:
        parser.error(f"--candidate for {unswept}, which --pass leaves out")
    here = current_platform()
    if here != "cuda" and not args.interpret:
        parser.error(f"the Triton kernels need an NVIDIA GPU and this is {here}; --interpret runs them anywhere (slowly)")
    config = SweepConfig(
        dtype=args.dtype,
        causals={"no": (False,), "yes": (True,), "both": (False, True)}[args.causal],
        passes=passes,
        warmup=args.warmup,
        rounds=args.rounds,
        calls=args.calls,
        target_round_s=args.target_round_ms / 1e3,
        max_calls=args.max_calls,
        budget_s=args.budget_s,
        seed=args.seed,
        interpret=args.interpret,
    )
    env = environment(["sweep", *argv], args.dtype)
    out = pathlib.Path(args.out)
    stem = args.name or f"sweep_{env['platform']}"
    json_path = out / f"{stem}.json"
    config_record = {**dataclasses.asdict(config), "shapes": [s.label for s in shapes]}
    results: list[dict[str, Any]] = []

    def document(complete: bool) -> dict[str, Any]:
        return {"schema": SCHEMA, "environment": env, "config": config_record, "complete": complete, "results": results}

    def snapshot(record: dict[str, Any]) -> None:
        results.append(record)
        report.write_json(document(False), json_path)

    interrupted = False
    try:
        with _sigterm_as_interrupt():
            run_sweep(shapes, config, custom, progress=ProgressBar(enabled=not args.quiet), on_result=snapshot)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing what was measured", file=sys.stderr)
    doc = document(not interrupted)
    report.write_json(doc, json_path)
    text_path = out / f"{stem}.txt"
    report.write_text_file(format_sweep(doc, args.threshold), text_path)
    print(text_path.read_text(), end="", flush=True)
    print(f"wrote {json_path}, {text_path}", file=sys.stderr)
    return 130 if interrupted else 0


def _run_parity(argv: list[str]) -> int:
    import pathlib

    from ejkernel.bench import report
    from ejkernel.bench.environment import environment
    from ejkernel.bench.parity import format_row, run_parity, select_parity_cases
    from ejkernel.registry import list_kernels

    parser = build_parity_parser()
    args = parser.parse_args(argv)
    try:
        cases = select_parity_cases(args.case)
    except ValueError as e:
        parser.error(str(e))
    records = [r for r in list_kernels("attention") if r["platform"] == args.platform]
    if not records:
        known = sorted({r["platform"] for r in list_kernels("attention")})
        parser.error(f"no attention implementation is registered for platform {args.platform!r}; known: {known}")
    if not any(r["runnable"] or (args.interpret and r["interpretable"]) for r in records):
        reasons = "; ".join(r["reason"] or "" for r in records)
        hint = "" if args.interpret or not any(r["interpretable"] for r in records) else "; --interpret runs it here"
        parser.error(f"{args.platform} cannot run here ({reasons}){hint}")
    env = environment(["parity", *argv], (args.dtype or ["bfloat16"])[0])
    out = pathlib.Path(args.out)
    json_path = out / f"{args.name or f'parity_{args.platform}'}.json"
    config_record = {
        "platform": args.platform, "interpret": args.interpret, "seed": args.seed,
        "cases": [c.name for c in cases], "dtypes": args.dtype or "per case",
    }  # fmt: skip
    rows: list[dict[str, Any]] = []

    def document(complete: bool) -> dict[str, Any]:
        return {"schema": "ejkernel-parity/1", "environment": env, "config": config_record, "complete": complete,
                "results": rows}  # fmt: skip

    def finished(row: dict[str, Any]) -> None:
        rows.append(row)
        print(format_row(row, args.platform), flush=True)
        report.write_json(document(False), json_path)

    interrupted = False
    try:
        with _sigterm_as_interrupt():
            run_parity(args.platform, cases, args.dtype or (), interpret=args.interpret, seed=args.seed, on_row=finished)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing what was checked", file=sys.stderr)
    report.write_json(document(not interrupted), json_path)
    failures = sum(not r["passed"] for r in rows)
    print(f"{len(rows) - failures}/{len(rows)} passed" + (" (interrupted)" if interrupted else ""))
    print(f"wrote {json_path}", file=sys.stderr)
    return 130 if interrupted else (1 if failures or not rows else 0)


def run(argv: list[str] | None = None) -> int:
    """Entry point of ``ejkernel bench``; ``argv`` excludes the program and sub-command names."""
    argv = list(sys.argv[2:] if argv is None else argv)
    from ejkernel.bench.render import run_render
    from ejkernel.bench.speed_table import run_table

    commands = {"compare": _run_compare, "render": run_render, "sweep": _run_sweep, "parity": _run_parity,
                "packing": _run_packing, "table": run_table}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return _run_bench(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
