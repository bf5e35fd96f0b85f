"""Per-kernel GPU time of attention calls, from a JAX profiler trace: where a call's milliseconds go.

    PYTHONPATH=$PWD python benchmarks/kernel_profile.py packing      # packed row vs batch vs (fwd, fwd+bwd)
    PYTHONPATH=$PWD python benchmarks/kernel_profile.py dense --platform mosaic_gpu --causal   # B2 S8192 H16 D128
    PYTHONPATH=$PWD python benchmarks/kernel_profile.py packing --ablate triton-clean-keys  # a diagnostic (below)

Each call is jitted, warmed up, then run ``--calls`` times inside ``jax.profiler.trace``; the trace's
device events (``*.trace.json.gz``, the Perfetto/Chrome format) are summed by kernel name and divided by
the number of calls. Printed per call: total device ms per call and the top kernels with their share.

``--ablate triton-clean-keys`` times the Triton backward without its in-kernel zeroing of keys no query may
see (``packing.clean_keys``): what that guarantee costs. Results are then wrong for NaN keys; never a default.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import ejkernel  # noqa: E402
from ejkernel.bench.packing import PackingConfig, _inputs, packing_arguments, packing_calls  # noqa: E402


def say(*parts) -> None:
    print(*parts, flush=True)


def device_events(trace_dir: Path) -> list[dict]:
    """Complete events (``ph == "X"``) of the trace's GPU stream threads."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no trace under {trace_dir}")
    data = json.loads(gzip.open(files[-1]).read())
    pids = {e["pid"]: e["args"]["name"] for e in data["traceEvents"] if e.get("ph") == "M" and e.get("name") == "process_name"}
    gpu = {p for p, n in pids.items() if "/device:GPU" in n}
    if not gpu:  # a CPU run (checking this script): the host's XLA ops
        gpu = {p for p, n in pids.items() if "/host:CPU" in n}
    return [e for e in data["traceEvents"] if e.get("ph") == "X" and e.get("pid") in gpu and "dur" in e]


def profile(label: str, fn, args, calls: int, top: int) -> None:
    out = fn(*args)
    jax.block_until_ready(out)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
        events = device_events(Path(d))
    by_name: dict[str, float] = collections.defaultdict(float)
    for e in events:
        by_name[e["name"]] += e["dur"] / 1e3 / calls  # us -> ms per call
    total = sum(by_name.values())
    say(f"{label}: {total:.3f} ms/call on the device, {len(by_name)} kernels")
    for name, ms in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]:
        say(f"    {ms:8.3f} ms {100 * ms / max(total, 1e-9):5.1f}%  {name[:110]}")


def packing(a) -> None:
    c = PackingConfig(tokens=a.tokens, docs=a.docs)
    kernel = ejkernel.get_kernel("attention", a.platform)
    for call in packing_calls(c, ("packed",)):
        if call.variant == "dense_mask":
            continue
        inputs = _inputs(call, c.dtype, 0)

        def forward(q, k, v, extras, call=call):
            return kernel(q, k, v, causal=call.causal, dtype=c.dtype, **packing_arguments(extras))[0]

        def loss(q, k, v, extras):
            return jnp.sum(forward(q, k, v, extras).astype(jnp.float32))

        for mode, fn in (("fwd", jax.jit(forward)), ("fwd+bwd", jax.jit(jax.grad(loss, argnums=(0, 1, 2))))):
            profile(f"{call.variant} {mode}", fn, inputs, a.calls, a.top)


def dense(a) -> None:
    """One dense call (no packing) at ``--batch --seq --heads --head-dim``, forward and forward+backward."""
    kernel = ejkernel.get_kernel("attention", a.platform)
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (a.batch, a.seq, a.heads, a.head_dim)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)

    def forward(q, k, v):
        return kernel(q, k, v, causal=a.causal, dtype="bfloat16")[0]

    def loss(q, k, v):
        return jnp.sum(forward(q, k, v).astype(jnp.float32))

    label = f"B{a.batch} S{a.seq} H{a.heads} D{a.head_dim}{' causal' if a.causal else ''}"
    for mode, fn in (("fwd", jax.jit(forward)), ("fwd+bwd", jax.jit(jax.grad(loss, argnums=(0, 1, 2))))):
        profile(f"{label} {mode}", fn, (q, k, v), a.calls, a.top)


def ablate(what: str | None) -> None:
    if what == "triton-clean-keys":
        from ejkernel.kernels.pallas_triton import backward

        backward.clean_keys = lambda ok, *tiles: tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["packing", "dense"])
    ap.add_argument("--platform", default="triton")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=PackingConfig.tokens)
    ap.add_argument("--docs", type=int, default=PackingConfig.docs)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--ablate", choices=["triton-clean-keys"], default=None)
    a = ap.parse_args()
    say(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, platform {a.platform}"
        + (f", ablated: {a.ablate}" if a.ablate else ""))
    ablate(a.ablate)
    {"packing": packing, "dense": dense}[a.what](a)


if __name__ == "__main__":
    main()
