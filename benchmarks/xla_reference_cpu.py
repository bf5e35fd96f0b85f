"""Our XLA reference against ``jax.nn.dot_product_attention(implementation="xla")`` on the CPU.

Both run jitted on shapes both support (no sinks, soft cap or bottom-right alignment question: Sq == Skv).
Each row is timed forward and forward+backward (gradients w.r.t. q, k, v): one warm-up call, then
``--rounds`` rounds of ``--calls`` back-to-back calls ended by ``block_until_ready``; the two
implementations alternate round by round so that load from other processes hits both alike. The table
reports median milliseconds per call and ``ours / jax.nn`` (the requirement: at most 1.15).

    python benchmarks/xla_reference_cpu.py [--output benchmarks/results/cpu/xla_reference.txt]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
    from ejkernel.kernels.xla.reference import attention as reference
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from ejkernel.kernels.xla.reference import attention as reference

REQUIRED_RATIO = 1.15


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    batch: int = 2
    seq_len: int = 1024
    num_q_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 64
    causal: bool = False
    dtype: str = "float32"


SHAPES = (
    Shape("B2 S1024 H8 D64 f32"),
    Shape("B2 S1024 H8 D64 f32 causal", causal=True),
    Shape("B2 S1024 H8/2 D64 f32 (GQA 4)", num_kv_heads=2),
    Shape("B2 S1024 H8/2 D64 f32 causal (GQA 4)", num_kv_heads=2, causal=True),
    Shape("B2 S1024 H8/1 D64 f32 (MQA)", num_kv_heads=1),
    Shape("B2 S1024 H8 D64 bf16 causal", causal=True, dtype="bfloat16"),
)


def make_inputs(s: Shape) -> tuple[jax.Array, ...]:
    rngs = [np.random.default_rng(seed) for seed in np.random.SeedSequence(0).spawn(4)]
    dtype = jnp.dtype(s.dtype)

    def normal(rng, shape):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)

    q = normal(rngs[0], (s.batch, s.seq_len, s.num_q_heads, s.head_dim))
    k = normal(rngs[1], (s.batch, s.seq_len, s.num_kv_heads, s.head_dim))
    v = normal(rngs[2], (s.batch, s.seq_len, s.num_kv_heads, s.head_dim))
    cotangent = normal(rngs[3], q.shape)
    return q, k, v, cotangent


def ours(s: Shape):
    def f(q, k, v):
        return reference(q, k, v, causal=s.causal, dtype=jnp.dtype(s.dtype))[0]

    return f


def theirs(s: Shape):
    def f(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=s.causal, implementation="xla")

    return f


def forward_and_backward(f):
    def g(q, k, v, cotangent):
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(cotangent)

    return g


def time_calls(fn, args, calls: int) -> float:
    """Milliseconds per call over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    result = None
    for _ in range(calls):
        result = fn(*args)
    jax.block_until_ready(result)
    return (time.perf_counter() - start) / calls * 1e3


def compare(fn_ours, fn_theirs, args, rounds: int, calls: int) -> tuple[float, float]:
    jax.block_until_ready(fn_ours(*args))
    jax.block_until_ready(fn_theirs(*args))
    t_ours, t_theirs = [], []
    for r in range(rounds):
        pair = ((fn_ours, t_ours), (fn_theirs, t_theirs))
        for fn, times in pair if r % 2 == 0 else pair[::-1]:
            times.append(time_calls(fn, args, calls))
    return statistics.median(t_ours), statistics.median(t_theirs)


def run(shapes, rounds: int, calls: int) -> tuple[list[str], bool]:
    lines = [f"{'shape':38s} {'mode':8s} {'ours ms':>9s} {'jax.nn ms':>9s} {'ratio':>6s}"]
    print(lines[0], flush=True)
    ok = True
    for s in shapes:
        q, k, v, cotangent = make_inputs(s)
        # Same outputs first: a fast wrong answer would be no win.
        a, b = jax.jit(ours(s))(q, k, v), jax.jit(theirs(s))(q, k, v)
        err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
        tol = 2e-2 if s.dtype == "bfloat16" else 1e-4
        if err > tol:
            raise AssertionError(f"{s.name}: outputs differ by {err:.2e} (tolerance {tol:.0e})")
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                fo, ft, args = jax.jit(ours(s)), jax.jit(theirs(s)), (q, k, v)
            else:
                fo, ft = jax.jit(forward_and_backward(ours(s))), jax.jit(forward_and_backward(theirs(s)))
                args = (q, k, v, cotangent)
            t_ours, t_theirs = compare(fo, ft, args, rounds, calls)
            ratio = t_ours / t_theirs
            ok &= ratio <= REQUIRED_RATIO
            lines.append(f"{s.name:38s} {mode:8s} {t_ours:9.1f} {t_theirs:9.1f} {ratio:6.2f}")
            print(lines[-1], flush=True)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--shape", action="append", help="only shapes whose name contains this (repeatable)")
    parser.add_argument("--output", type=pathlib.Path, help="also write the table here")
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if not args.shape or any(p in s.name for p in args.shape)]
    header = [
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}  jax {jax.__version__}  "
        f"{platform.processor() or platform.machine()} x{os.cpu_count()} ({jax.devices()[0].device_kind})",
        f"# command: python {' '.join([pathlib.Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])}",
        f"# median ms per call of {args.rounds} rounds x {args.calls} calls, implementations alternating; "
        f"requirement ours/jax.nn <= {REQUIRED_RATIO}",
        f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    print("\n".join(header), flush=True)
    lines, ok = run(shapes, args.rounds, args.calls)
    footer = f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; " + (
        "all within the requirement" if ok else "SOME ROWS EXCEED THE REQUIREMENT"
    )
    print(footer)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join([*header, *lines, footer]) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
