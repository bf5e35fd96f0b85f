"""Does the compiled ring overlap its ppermutes with compute on this machine's devices? (``docs/ring.rst``)

Compiles a causal, load-balanced ring over every local device (forward, and forward + backward) with the
best ``attention_with_lse`` here (Pallas-Triton on an NVIDIA GPU), prints each loop-body collective-permute
as scheduled (``ejkernel.parallel.hlo_overlap``) and the XLA_FLAGS in effect, and exits 1 when a permute
depends on its step's compute or an asynchronous one has no compute scheduled between its start and done.

    XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true python benchmarks/ring_overlap.py
    python benchmarks/ring_overlap.py --seq 16384 --heads 16 --head-dim 128 --dump /tmp/ring_hlo
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import ejkernel
from ejkernel.parallel.hlo_overlap import permute_overlap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--platform", default="auto")
    parser.add_argument("--dump", type=pathlib.Path, help="folder to write the compiled HLO texts into")
    args = parser.parse_args()
    devices = jax.devices()
    n = len(devices)
    if n < 2:
        print(f"needs at least 2 devices, found {n}")
        return 1
    mesh = Mesh(np.array(devices), ("seq",))
    spec = NamedSharding(mesh, PartitionSpec(None, "seq", None, None))
    q = jax.device_put(jnp.zeros((1, args.seq, args.heads, args.head_dim), jnp.bfloat16), spec)

    def out(q, k, v):
        return ejkernel.sharded_ring_attention(q, k, v, causal=True, mesh=mesh, axis_name="seq", load_balance=True,
                                               platform=args.platform)[0]

    programs = {
        "forward": jax.jit(out),
        "backward": jax.jit(jax.grad(lambda *a: jnp.sum(out(*a).astype(jnp.float32)), argnums=(0, 1, 2))),
    }
    print(f"devices: {n} x {devices[0].device_kind}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    failed = False
    for label, program in programs.items():
        hlo = program.lower(q, q, q).compile().as_text()
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"ring_{label}.hlo.txt").write_text(hlo)
        reports = permute_overlap(hlo)
        if not reports:
            print(f"{label}: no collective-permute in a loop body")
            failed = True
        for r in reports:
            ok = r.independent_of_compute and (not r.asynchronous or r.compute_overlapped > 0)
            failed |= not ok
            print(f"{label}: {r.name} in {r.computation}: {'async' if r.asynchronous else 'sync'}, "
                  f"independent={r.independent_of_compute}, issued_before_compute={r.issued_before_compute}, "
                  f"compute_between_start_and_done={r.compute_overlapped} {'ok' if ok else 'NOT OVERLAPPED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
