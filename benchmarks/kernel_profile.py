"""Per-kernel GPU time of attention calls, from a JAX profiler trace: where a call's milliseconds go.

    PYTHONPATH=$PWD python benchmarks/kernel_profile.py packing      # packed row vs batch vs (fwd, fwd+bwd)

Each call is jitted, warmed up, then run ``--calls`` times inside ``jax.profiler.trace``; the trace's
device events (``*.trace.json.gz``, the Perfetto/Chrome format) are summed by kernel name and divided by
the number of calls. Printed per call: total device ms per call and the top kernels with their share.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["packing"])
    ap.add_argument("--platform", default="triton")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=PackingConfig.tokens)
    ap.add_argument("--docs", type=int, default=PackingConfig.docs)
    a = ap.parse_args()
    say(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    {"packing": packing}[a.what](a)


if __name__ == "__main__":
    main()
