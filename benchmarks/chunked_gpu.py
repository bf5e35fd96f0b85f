"""Chunked against dense XLA attention on a GPU: which chunk sizes, and from which size on, chunking pays.

The chunk-size defaults and the dense/chunked switch (``ejkernel/kernels/xla/chunk_policy.py``) were first
measured on a 2-core CPU (``chunked_cpu.py``). This script times, on the device at hand, bfloat16 D128, non-causal:
the dense reference, ``jax.nn.dot_product_attention(implementation="xla")`` and the chunked path at
several ``(block_q, block_kv)`` (``default`` = the library's default policy), forward and forward+backward,
plus XLA's compiled memory of each. One JSON line per row on stdout, a table at the end.

    PYTHONPATH=. python3 benchmarks/chunked_gpu.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp

import ejkernel
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as dense

# (name, B, Sq, Skv, Hq, Hkv)
SHAPES = (
    ("B8 S1024 H16", 8, 1024, 1024, 16, 16),
    ("B16 S1024 H16", 16, 1024, 1024, 16, 16),
    ("B4 S4096 H16/4", 4, 4096, 4096, 16, 4),
    ("B1 S16384 H16", 1, 16384, 16384, 16, 16),
    ("decode B8 Skv131072 H32/8", 8, 1, 131072, 32, 8),
)
BLOCKS = ("default", (256, 512), (512, 512), (1024, 1024), (2048, 1024), (4096, 512))
HEAD_DIM = 128


def timed(fn, args, min_s=0.2):
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = max(time.perf_counter() - t0, 1e-5)
    calls = max(1, min(50, int(min_s / one)))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def make(fn, backward):
    """A jitted ``(q, k, v, cot)`` function; ``cot`` is an argument (a closed-over array would be folded)."""
    def forward(q, k, v, cot):
        del cot
        return fn(q, k, v)

    def loss(q, k, v, cot):
        return jnp.sum(fn(q, k, v).astype(jnp.float32) * cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)) if backward else forward)


def implementations(sq, skv):
    yield "jax.nn:xla", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    yield "dense", lambda q, k, v: dense(q, k, v)[0]
    yield "ejkernel xla (auto)", lambda q, k, v: ejkernel.attention(q, k, v, platform="xla")[0]
    for blocks in BLOCKS:
        if blocks == "default":
            yield "chunked default", lambda q, k, v: chunked_attention(q, k, v)[0]
            continue
        bq, bkv = min(blocks[0], sq), min(blocks[1], skv)
        if sq == 1 and blocks[0] > 256:  # decode: block_q is 1 anyway; vary block_kv only
            bkv = min(blocks[0] * 8, skv)
        yield f"chunked {bq}x{bkv}", lambda q, k, v, bq=bq, bkv=bkv: chunked_attention(q, k, v, block_q=bq, block_kv=bkv)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shapes", default="", help="comma-separated indices into SHAPES")
    ap.add_argument("--impls", default="", help="comma-separated implementation names (default: all)")
    ap.add_argument("--tag", default="chunked_gpu")
    a = ap.parse_args()
    rows = []
    shapes = SHAPES if not a.shapes else [SHAPES[int(i)] for i in a.shapes.split(",")]
    for name, b, sq, skv, hq, hkv in shapes:
        ks = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(ks[0], (b, sq, hq, HEAD_DIM), jnp.bfloat16)
        k = jax.random.normal(ks[1], (b, skv, hkv, HEAD_DIM), jnp.bfloat16)
        v = jax.random.normal(ks[2], (b, skv, hkv, HEAD_DIM), jnp.bfloat16)
        cot = jax.random.normal(ks[3], (b, sq, hq, HEAD_DIM), jnp.float32)
        seen = set()
        for impl, fn in implementations(sq, skv):
            if impl in seen or (a.impls and impl not in a.impls.split(",")):
                continue
            seen.add(impl)
            for mode in ("fwd", "fwd+bwd"):
                if sq == 1 and mode == "fwd+bwd":
                    continue
                row = dict(shape=name, impl=impl, mode=mode)
                try:
                    f = make(fn, mode == "fwd+bwd")
                    mem = f.lower(q, k, v, cot).compile().memory_analysis()
                    row["compiled_mib"] = round((mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                                 + mem.output_size_in_bytes) / 2**20)
                    row["ms"] = round(timed(f, (q, k, v, cot)) * 1e3, 3)
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                print(json.dumps(row), flush=True)
                rows.append(row)
    dev = jax.devices()[0]
    head = f"# {getattr(dev, 'device_kind', dev)}  jax {jax.__version__}  bf16 D{HEAD_DIM} non-causal"
    lines = [head, f"{'shape':28s} {'mode':8s} {'impl':22s} {'ms':>9s} {'MiB':>7s}"]
    for r in rows:
        lines.append(f"{r['shape']:28s} {r['mode']:8s} {r['impl']:22s} {r.get('ms', 'err'):>9} "
                     f"{r.get('compiled_mib', '-'):>7}")
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.tag}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
