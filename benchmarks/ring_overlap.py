"""Does the compiled ring overlap its ppermutes with compute, on local devices or a TPU topology? (``docs/ring.rst``)

Compiles a causal, load-balanced bfloat16 ring (forward, and forward + backward: ``value_and_grad`` of a loss
over q, k, v) over every local device, or with ``--topology`` over the chips of a TPU topology through libtpu's
compiler, with no TPU (``pip install "jax[tpu]"``; ``nox -s ring_tpu_compile``). Prints each loop-body
collective-permute as scheduled (``ejkernel.parallel.hlo_overlap``) and the compiler flags in effect, and exits
1 when a permute depends on its step's compute or an asynchronous one has no compute scheduled between its
start and done. ``--platform`` (repeatable) picks the ``attention_with_lse`` of the steps; the default is the
best one here ("auto": Pallas-Triton on an NVIDIA GPU), or with ``--topology`` both the chunked XLA step and
the Pallas TPU kernel. A requested step that would fall back to another is an error.

    XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true python benchmarks/ring_overlap.py
    python benchmarks/ring_overlap.py --seq 16384 --heads 16 --head-dim 128 --dump /tmp/ring_hlo
    python benchmarks/ring_overlap.py --topology v5e:2x2 --platform xla --platform pallas_tpu
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import ejkernel
from ejkernel.parallel.hlo_overlap import permute_overlap


def _compile(fn, args):
    jitted = jax.jit(fn)
    return (jitted.trace(*args).lower() if hasattr(jitted, "trace") else jitted.lower(*args)).compile()


def _programs(mesh, platform):
    def out(q, k, v):
        return ejkernel.sharded_ring_attention(q, k, v, causal=True, mesh=mesh, axis_name="seq", load_balance=True,
                                               platform=platform)[0]

    def loss(q, k, v):
        return jnp.sum(out(q, k, v).astype(jnp.float32))

    return {"forward": out, "forward+backward": jax.value_and_grad(loss, argnums=(0, 1, 2))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--platform", action="append", help="the steps' implementation (repeatable)")
    parser.add_argument("--topology", help='compile for a TPU topology without a TPU, e.g. "v5e:2x2" (needs libtpu)')
    parser.add_argument("--dump", type=pathlib.Path, help="folder to write the compiled HLO texts into")
    args = parser.parse_args()
    if args.topology:
        from jax.experimental import topologies

        devices = list(topologies.get_topology_desc(args.topology, "tpu").devices)
        # The registry picks the steps' kernel for the device JAX would place a computation on: a TPU chip.
        place = jax.default_device(devices[0])
        platforms = args.platform or ["xla", "pallas_tpu"]
        flags = f"LIBTPU_INIT_ARGS={os.environ.get('LIBTPU_INIT_ARGS', '')!r}"
    else:
        devices = jax.devices()
        place = contextlib.nullcontext()
        platforms = args.platform or ["auto"]
        flags = f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    n = len(devices)
    if n < 2:
        print(f"needs at least 2 devices, found {n}")
        return 1
    mesh = Mesh(np.array(devices), ("seq",))
    spec = NamedSharding(mesh, PartitionSpec(None, "seq", None, None))
    q = jax.ShapeDtypeStruct((1, args.seq, args.heads, args.head_dim), jnp.bfloat16, sharding=spec)
    where = f"topology {args.topology}" if args.topology else "local devices"
    print(f"{where}: {n} x {devices[0].device_kind}; {flags}; q, k, v {q.shape} {q.dtype}, causal, load balanced")
    failed = False
    for platform in platforms:
        for label, fn in _programs(mesh, platform).items():
            with place, warnings.catch_warnings():
                warnings.simplefilter("error", ejkernel.FallbackWarning)  # the step asked for, or nothing
                hlo = _compile(fn, (q, q, q)).as_text()
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"ring_{platform}_{label.replace('+', '_')}.hlo.txt").write_text(hlo)
            reports = permute_overlap(hlo)
            loops = sorted({r.computation for r in reports})
            kernels = hlo.count('custom_call_target="tpu_custom_call"')
            print(f"{platform} {label}: {len(loops)} ring loop(s), "
                  f"{', '.join(str(sum(r.computation == c for r in reports)) for c in loops) or 0} permute(s) each"
                  + (f", {kernels} Mosaic kernel call(s)" if args.topology else ""))
            if not reports:
                print(f"{platform} {label}: no collective-permute in a loop body")
                failed = True
            for r in reports:
                ok = r.independent_of_compute and (not r.asynchronous or r.compute_overlapped > 0)
                failed |= not ok
                print(f"  {r.name} in {r.computation}: {'async' if r.asynchronous else 'sync'}, "
                      f"independent={r.independent_of_compute}, issued_before_compute={r.issued_before_compute}, "
                      f"compute_between_start_and_done={r.compute_overlapped} {'ok' if ok else 'NOT OVERLAPPED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
