"""Chunked against dense XLA attention on the CPU: time and peak memory at B1 H8 D64, S = 512..16k.

Each (path, length, mode) runs in its own process so that its peak resident memory (``ru_maxrss``) is its
own. Inputs are bfloat16 and every other argument is the default (``dtype=bfloat16``, non-causal unless
the mode says so); "fwd+bwd" takes gradients w.r.t. q, k and v. Reported per row: XLA's compiled
memory (``memory_analysis``: temporaries + arguments + outputs), the process's peak RSS, and the best
time of three calls (two when the warm-up call took over 5 s) after a warm-up call. The dense path runs
only where its compiled memory fits ``--dense-limit-gib``; the "auto" rows call ``ejkernel.attention``
with no argument changes and name the implementation the registry chose. The dense worker also runs the chunked path on the same inputs and
reports their largest relative difference (output and gradients; both bfloat16).

    python benchmarks/chunked_cpu.py [--output benchmarks/results/cpu/chunked.txt]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
MODES = ("fwd", "fwd+bwd", "causal fwd+bwd")
BATCH, HEADS, HEAD_DIM = 1, 8, 64
GIB = 1 << 30
MIB = 1 << 20


def _worker(path: str, seq: int, mode: str, dense_limit: float) -> dict:
    import jax
    import jax.numpy as jnp

    import ejkernel
    from ejkernel.check import relative_error
    from ejkernel.kernels.xla import chunked
    from ejkernel.kernels.xla.reference import attention as dense

    impls = {"dense": dense, "chunked": chunked.attention, "auto": ejkernel.attention}
    causal = mode.startswith("causal")
    backward = mode.endswith("bwd")
    keys = jax.random.split(jax.random.key(seq), 4)
    shape = (BATCH, seq, HEADS, HEAD_DIM)
    q, k, v, cot = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)

    def make(fn):
        def forward(q, k, v):
            return fn(q, k, v, causal=True)[0] if causal else fn(q, k, v)[0]

        def loss(q, k, v):
            return jnp.sum(forward(q, k, v).astype(jnp.float32) * cot.astype(jnp.float32))

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)) if backward else forward)

    record = {"path": path, "seq": seq, "mode": mode}
    if path == "auto":
        decision = ejkernel.explain(q, k, v, causal=causal)
        record["chose"] = decision.chosen.label
    fn = make(impls[path])
    compiled = fn.lower(q, k, v).compile()
    m = compiled.memory_analysis()
    record["compiled_bytes"] = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    if path == "dense" and record["compiled_bytes"] > dense_limit * GIB:
        record["skipped"] = f"needs {record['compiled_bytes'] / GIB:.1f} GiB compiled"
        return record
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(q, k, v))
    first = time.perf_counter() - start
    times = [first]
    for _ in range(3 if first < 5 else 2):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
    record["ms"] = 1e3 * min(times[1:])
    if path == "dense":
        other = jax.block_until_ready(make(chunked.attention)(q, k, v))
        pairs = zip(jax.tree.leaves(other), jax.tree.leaves(result), strict=True)
        record["rel_err_vs_chunked"] = max(relative_error(a, b) for a, b in pairs)
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return record


def _run(path: str, seq: int, mode: str, dense_limit: float) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, "--worker", path, str(seq), mode, "--dense-limit-gib", str(dense_limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"path": path, "seq": seq, "mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    name = r["path"] + (f" ({r['chose']})" if "chose" in r else "")
    head = f"{r['seq']:>6} {r['mode']:<15} {name:<20}"
    if "error" in r:
        return f"{head} error: {r['error']}"
    compiled = f"{r['compiled_bytes'] / MIB:>10.0f}"
    if "skipped" in r:
        return f"{head} {compiled} {'-':>10} {'-':>10}   not run: {r['skipped']}"
    line = f"{head} {compiled} {r['peak_rss_bytes'] / MIB:>10.0f} {r['ms']:>10.1f}"
    if "rel_err_vs_chunked" in r:
        line += f"   {r['rel_err_vs_chunked']:.1e}"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("PATH", "SEQ", "MODE"))
    parser.add_argument("--lengths", type=int, nargs="*", default=LENGTHS)
    parser.add_argument("--modes", nargs="*", default=MODES)
    parser.add_argument("--dense-limit-gib", type=float, default=12.0)
    parser.add_argument("--auto-lengths", type=int, nargs="*", default=(512, 1024, 16384))
    parser.add_argument("--output", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.worker:
        path, seq, mode = args.worker
        print(json.dumps(_worker(path, int(seq), mode, args.dense_limit_gib)))
        return

    import jax

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from ejkernel.kernels.xla.chunk_policy import CPU

    DENSE_SCORE_LIMIT = CPU.dense_score_limit

    lines = [
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}  jax {jax.__version__}  "
        f"{platform.machine()} x{os.cpu_count()} (cpu), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM",
        f"# command: python benchmarks/chunked_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip(),
        f"# B{BATCH} H{HEADS} D{HEAD_DIM}, bfloat16 inputs, default arguments; best of 3 calls (2 past 5 s) after a warm-up",
        f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"# automatic switch: chunked serves B*Hq*Sq*Skv >= DENSE_SCORE_LIMIT = {DENSE_SCORE_LIMIT} "
        f"(S >= {int((DENSE_SCORE_LIMIT / (BATCH * HEADS)) ** 0.5)} at B{BATCH} H{HEADS})",
        f"{'S':>6} {'mode':<15} {'path':<20} {'compiled':>10} {'peak RSS':>10} {'ms':>10}   rel.diff",
        f"{'':>6} {'':<15} {'':<20} {'MiB':>10} {'MiB':>10}",
    ]
    print("\n".join(lines), flush=True)
    for seq in args.lengths:
        for mode in args.modes:
            for path in ("dense", "chunked"):
                lines.append(_row(_run(path, seq, mode, args.dense_limit_gib)))
                print(lines[-1], flush=True)
    for seq in args.auto_lengths:
        lines.append(_row(_run("auto", seq, "fwd+bwd", args.dense_limit_gib)))
        print(lines[-1], flush=True)
    lines.append(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(lines[-1])
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
