"""The ``ejkernel`` command line: ``info``, ``check`` and ``bench``.

With no sub-command it runs ``info`` then ``check``: show what runs here, then prove it.
"""

from __future__ import annotations

import argparse
import itertools
import sys

__all__ = ["main", "build_parser"]


def _info(args: argparse.Namespace) -> int:
    import jax

    from ejkernel.platform import current_platform
    from ejkernel.registry import list_kernels

    devices = jax.devices()
    print(f"ejkernel on {current_platform()}: {devices[0].device_kind} x{len(devices)}; jax {jax.__version__}")
    rows = [("name", "platform", "variant", "priority", "devices", "runs here", "why not")]
    for r in list_kernels():
        runs = "yes" if r["runnable"] else ("interpret only" if r["interpretable"] else "no")
        rows.append((r["name"], r["platform"], r["variant"], str(r["priority"]), ",".join(r["devices"]), runs, r["reason"] or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _check(args: argparse.Namespace) -> int:
    from ejkernel.check import iter_check, select_cases

    named = bool(getattr(args, "platform", None))
    try:
        cases = select_cases(getattr(args, "case", None), quick=getattr(args, "quick", False))
        results = iter_check(interpret=args.interpret, platforms=args.platform or None, cases=cases, dtype=args.dtype,
                             workers=getattr(args, "workers", None))
        first = next(results, None)  # raises here for an unknown platform, before any line is printed
    except ValueError as e:
        print(f"ejkernel check: {e}", file=sys.stderr)
        return 2
    total = failures = fallbacks = not_served = 0
    for r in itertools.chain([first] if first is not None else [], results):
        if r.not_served is not None:
            not_served += 1
            print(f"{r.status:8s} {r.implementation:10s} {r.case:18s} {r.dtype:9s} not served ({r.not_served}): "
                  f"{r.served_by}'s rows check it", flush=True)
            continue
        worst = max(r.errors, key=r.errors.get)
        total += 1
        failed = not r.accurate or (r.fallback and named)
        failures += failed
        fallbacks += r.fallback
        print(
            f"{r.status:8s} {r.implementation:10s} {r.case:18s} {r.dtype:9s} served by {r.served_by:20s} "
            f"max err {r.errors[worst]:.2e} ({worst}) tol {r.tolerance:.0e}",
            flush=True,
        )
    note = f" ({fallbacks} served by another platform{', which fails a named platform' if named and fallbacks else ''})" if fallbacks else ""
    skipped = f"; {not_served} not served by their platform, not run" if not_served else ""
    print(f"{total - failures}/{total} passed{note}{skipped}", flush=True)
    return 1 if failures else 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from ejkernel.bench.cli import run as run_bench
    except ImportError:
        print("ejkernel bench is not available in this build", file=sys.stderr)
        return 2
    return run_bench(args.bench_args)


DESCRIPTION = """\
Attention kernels for JAX: see what runs on this machine, check it, time it.
With no command, runs 'info' then 'check'."""

COMMANDS = """\
bench commands:
  ejkernel bench [--grid G] ...      time the implementations beside jax.nn (XLA, cuDNN) and tokamax
  ejkernel bench compare BASE NEW    regressions between two bench results, beyond the noise
  ejkernel bench render RESULT.json  draw a result's table and plots again (e.g. where matplotlib is)
  ejkernel bench sweep ...           time the Triton kernel's block sizes (an NVIDIA GPU)
  ejkernel bench parity ...          every feature at GPU sizes against the oracle
  ejkernel bench packing ...         packed rows and kv_lengths decoding beside batches and dense masks
  ejkernel bench table RESULT.json   the measured speed table platform="auto" ranks implementations by

Each command has its own --help, for instance: ejkernel bench compare --help"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ejkernel`` parser (``bench`` hands its arguments to ``ejkernel.bench.cli``)."""
    parser = argparse.ArgumentParser(
        prog="ejkernel", description=DESCRIPTION, epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="{info,check,bench}")
    sub.add_parser(
        "info",
        help="this device, the JAX version and every registered implementation",
        description="This device, the JAX version and every registered implementation: whether it runs here, and why not.",
    )
    check = sub.add_parser(
        "check",
        help="each implementation that runs here against the float64 XLA oracle",
        description="Run every implementation that can run here against the XLA reference computed in float64, "
        "forward and gradients. A call another platform served is reported as FALLBACK, never as a pass.",
    )
    check.add_argument("--interpret", action="store_true", help="also run Pallas kernels in interpret mode")
    check.add_argument("--platform", action="append", help="only this platform (repeatable)")
    check.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="only this compute dtype")
    check.add_argument("--case", action="append", help="only this case (repeatable; names in ejkernel.check.CASES)")
    check.add_argument("--quick", action="store_true", help="only a few representative cases (QUICK_CASES)")
    check.add_argument("--workers", type=int, help="threads compiling the next rows ahead (default: one per CPU, at most 8)")
    bench = sub.add_parser(
        "bench", help="time the implementations beside the baselines (see bench commands below)", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER rejects a leading option such as `bench --grid small`
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    if args.command == "check":
        return _check(args)
    if args.command == "bench":
        return _bench(args)
    code = _info(args)
    print()
    return code or _check(argparse.Namespace(interpret=False, platform=None, dtype=None, case=None, quick=False))


if __name__ == "__main__":
    sys.exit(main())
