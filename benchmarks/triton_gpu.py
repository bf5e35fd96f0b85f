"""The Triton kernel's former GPU script, now a front for ``ejkernel bench`` (use those commands directly):

    PYTHONPATH=. python3 benchmarks/triton_gpu.py [--parity] [--sweep] [--bench] [--grid] [--out DIR]

- ``--parity``: ``ejkernel bench parity --platform triton`` (every capability class, forward and gradients);
- ``--sweep``: ``ejkernel bench sweep`` (per-pass kernel times of candidate block sizes);
- ``--bench``: ``ejkernel bench`` on the two main shapes (B2 S8192 H16 D128, B4 S4096 H16 D64) beside
  jax.nn's cuDNN and XLA paths; ``--grid`` adds the FlashAttention-3 grid. Exits with the worst status.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ejkernel.bench.cli import run  # noqa: E402

MAIN_SHAPES = ("2,8192,8192,16,16,128", "4,4096,4096,16,16,64")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--parity", "--sweep", "--bench", "--grid"):
        ap.add_argument(flag, action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    a = ap.parse_args(argv)
    out = ["--out", a.out]
    codes = []
    if a.parity:
        codes.append(run(["parity", "--platform", "triton", *out]))
    if a.sweep:
        codes.append(run(["sweep", *out]))
    if a.bench or a.grid:
        shapes = [arg for s in MAIN_SHAPES for arg in ("--shape", s)] if a.bench else []
        grid = ["--grid", "fa3"] if a.grid else []
        impls = ["--impl", "ejkernel:triton", "--impl", "jax.nn", "--no-dispatch", "--name", "triton_gpu"]
        codes.append(run([*grid, *shapes, *impls, *out]))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
