"""Everything the Triton flash attention needs from a GPU, in one script: parity, block sweep, benchmark.

    PYTHONPATH=. python3 benchmarks/triton_gpu.py --parity --sweep --bench --grid --out $OUT

- ``--parity``: every capability class, forward and gradients (q, k, v, bias, sinks), through the registry
  (``platform="triton"``, which must serve the call) against the XLA oracle in float32 at highest precision,
  in bfloat16 and float32 (float16 on a few). Tolerances are ``ejkernel.check.TOLERANCE``.
- ``--sweep``: per-pass kernel times (forward, dK/dV, dQ) for candidate block configurations; the fastest
  rows go into ``ejkernel/kernels/pallas_triton/blocks.py`` by hand.
- ``--bench``: bf16 TFLOP/s of ours beside ``jax.nn.dot_product_attention`` (xla and cudnn) on the same
  device, forward and forward+backward, causal and not, at B2 S8192 H16 D128 and B4 S4096 H16 D64;
  ``--grid`` adds the FlashAttention-3 grid (16k tokens, hidden 2048, D 64/128/256). TFLOP/s =
  4·B·H·Sq·Skv·D (x0.5 causal, x3.5 forward+backward) / median time. Timing: jit, warm-up, ``--calls``
  back-to-back calls then one sync, median of ``--rounds`` rounds, random inputs.

Results go to ``--out`` (default ``benchmarks/results``) as ``triton_gpu.json`` and ``triton_gpu.txt`` with
the device name, jax version and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ejkernel.check import TOLERANCE, CheckCase, make_inputs, reference_for, run_case  # noqa: E402
from ejkernel.errors import FallbackWarning  # noqa: E402
from ejkernel.kernels.pallas_triton.blocks import BlockSizes, PassBlocks, choose_block_sizes  # noqa: E402
from ejkernel.kernels.pallas_triton.interface import flash_attention  # noqa: E402

PARITY_CASES = (
    CheckCase("plain-d128", batch=2, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128),
    CheckCase("causal-ragged", batch=2, q_len=700, kv_len=1100, num_q_heads=4, num_kv_heads=4, head_dim=64, causal=True),
    CheckCase("causal-sq>skv", batch=1, q_len=900, kv_len=300, num_q_heads=4, num_kv_heads=2, head_dim=64, causal=True),
    CheckCase("window", batch=2, q_len=1000, kv_len=800, num_q_heads=4, num_kv_heads=4, head_dim=64, sliding_window=(200, 50)),
    CheckCase("causal+window", batch=2, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128, causal=True, sliding_window=300),
    CheckCase("gqa4+bias-B,kv", batch=2, q_len=512, kv_len=640, num_q_heads=8, num_kv_heads=2, head_dim=128, bias_shape="B,kv"),
    CheckCase("mqa+mask-B,1+bias-1,q", batch=2, q_len=384, kv_len=500, num_q_heads=4, num_kv_heads=1, head_dim=64, bias_shape="1,q", mask_shape="B,1"),
    CheckCase("bias-1,1+mask-1,kv+causal", batch=2, q_len=300, kv_len=300, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="1,1", mask_shape="1,kv", causal=True),
    CheckCase("bias-B,q+mask-B,q", batch=2, q_len=256, kv_len=256, num_q_heads=2, num_kv_heads=2, head_dim=64, bias_shape="B,q", mask_shape="B,q"),
    CheckCase("bias-B,1+mask-1,1", batch=2, q_len=256, kv_len=320, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="B,1", mask_shape="1,1"),
    CheckCase("bias-1,kv", batch=2, q_len=256, kv_len=256, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="1,kv"),
    CheckCase("soft_cap", batch=2, q_len=1000, kv_len=1000, num_q_heads=4, num_kv_heads=4, head_dim=128, logits_soft_cap=5.0, softmax_scale=0.5),
    CheckCase("sinks+causal", batch=2, q_len=512, kv_len=900, num_q_heads=4, num_kv_heads=4, head_dim=64, sinks="per_head", causal=True),
    CheckCase("shared-sinks+gqa", batch=2, q_len=600, kv_len=600, num_q_heads=6, num_kv_heads=3, head_dim=64, sinks="shared"),
    CheckCase("d96", batch=2, q_len=777, kv_len=777, num_q_heads=4, num_kv_heads=4, head_dim=96, causal=True),
    CheckCase("d192", batch=1, q_len=640, kv_len=640, num_q_heads=4, num_kv_heads=2, head_dim=192),
    CheckCase("d256", batch=1, q_len=640, kv_len=700, num_q_heads=4, num_kv_heads=4, head_dim=256, causal=True),
    CheckCase("d256+bias+mask", batch=1, q_len=400, kv_len=500, num_q_heads=4, num_kv_heads=2, head_dim=256, bias_shape="B,q", mask_shape="1,kv"),
    CheckCase("d128+bias+causal", batch=1, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128, bias_shape="1,q", causal=True),
    CheckCase("dv!=d", batch=2, q_len=333, kv_len=555, num_q_heads=4, num_kv_heads=2, head_dim=128, v_head_dim=64),
    CheckCase("decode", batch=4, q_len=1, kv_len=1000, num_q_heads=8, num_kv_heads=2, head_dim=128, causal=True),
    CheckCase("decode-split", batch=2, q_len=1, kv_len=20000, num_q_heads=32, num_kv_heads=8, head_dim=128),
    CheckCase("decode-sq4+window+sinks", batch=2, q_len=4, kv_len=5000, num_q_heads=16, num_kv_heads=4, head_dim=128,
              causal=True, sliding_window=(1000, 0), sinks="per_head"),
    CheckCase("all", batch=2, q_len=500, kv_len=530, num_q_heads=4, num_kv_heads=2, head_dim=64, v_head_dim=32,
              causal=True, sliding_window=(300, 10), bias_shape="1,kv", mask_shape="B,1", logits_soft_cap=4.0,
              sinks="per_head", softmax_scale=0.3),
)
FLOAT16_CASES = ("plain-d128", "causal-ragged", "gqa4+bias-B,kv")


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------- parity
def parity(names=(), dtypes=()) -> list[dict]:
    rows = []
    for case in PARITY_CASES:
        if names and case.name not in names:
            continue
        args = make_inputs(case, 0)
        shape = (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim)
        cot = jnp.asarray(np.random.default_rng(np.random.SeedSequence([0, 1])).standard_normal(shape, dtype=np.float32))
        reference = reference_for(args, cot)
        wanted = ["bfloat16", "float32"] + (["float16"] if case.name in FLOAT16_CASES else [])
        for dtype in [d for d in wanted if not dtypes or d in dtypes]:
            t0 = time.perf_counter()
            try:
                r = run_case("triton", case, dtype, reference=reference)
                row = dict(case=case.name, dtype=dtype, served_by=r.served_by, errors=r.errors, tolerance=r.tolerance,
                           passed=r.passed and r.served_by == "triton")
            except Exception as e:  # noqa: BLE001  (report and go on)
                row = dict(case=case.name, dtype=dtype, served_by="error", errors={}, tolerance=TOLERANCE[dtype],
                           passed=False, error=f"{type(e).__name__}: {e}"[:2000])
                traceback.print_exc()
            row["seconds"] = round(time.perf_counter() - t0, 1)
            worst = max(row["errors"].values(), default=float("nan"))
            log(f"parity {case.name:28s} {dtype:9s} {row['served_by']:8s} worst {worst:.2e} "
                f"{'ok' if row['passed'] else 'FAIL'} ({row['seconds']}s)")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- timing
def time_fn(fn, args, calls: int, rounds: int) -> float:
    """Median seconds per call: warm-up, then rounds of back-to-back calls ended by one sync."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        outs = [fn(*args) for _ in range(calls)]
        jax.block_until_ready(outs)
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def flops(b, h, sq, skv, d, causal, backward):
    f = 4.0 * b * h * sq * skv * d
    return f * (0.5 if causal else 1.0) * (3.5 if backward else 1.0)


def random_qkv(b, s, h, d, dtype=jnp.bfloat16, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k, v, do = (jax.random.normal(kk, (b, s, h, d), jnp.float32).astype(dtype) for kk in ks)
    return q, k, v, do


def implementations(causal: bool, config: BlockSizes | None = None):
    def ours(q, k, v):
        return flash_attention(q, k, v, causal=causal, dtype=q.dtype, block_sizes=config)[0]

    def jax_nn(kind):
        def f(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=kind)
        return f

    return {"ejkernel-triton": ours, "jax.nn-cudnn": jax_nn("cudnn"), "jax.nn-xla": jax_nn("xla")}


def fwd_and_fwdbwd(fn):
    fwd = jax.jit(fn)

    @jax.jit
    def fwdbwd(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        return vjp(do)

    return fwd, fwdbwd


def bench_shape(name, b, s, h, d, causal, calls, rounds, impls=None, config=None):
    rows = []
    q, k, v, do = random_qkv(b, s, h, d)
    for impl, fn in implementations(causal, config).items():
        if impls and impl not in impls:
            continue
        fwd, fwdbwd = fwd_and_fwdbwd(fn)
        for passname, f, args in (("fwd", fwd, (q, k, v)), ("fwd+bwd", fwdbwd, (q, k, v, do))):
            row = dict(shape=name, batch=b, seq=s, heads=h, head_dim=d, causal=causal, impl=impl, pass_=passname)
            try:
                t = time_fn(f, args, calls, rounds)
                row.update(ms=t * 1e3, tflops=flops(b, h, s, s, d, causal, passname != "fwd") / t / 1e12)
            except Exception as e:  # noqa: BLE001
                row.update(ms=None, tflops=None, error=f"{type(e).__name__}: {str(e)[:300]}")
            log(f"bench {name:22s} causal={int(causal)} {impl:16s} {passname:8s} "
                + (f"{row['ms']:8.3f} ms {row['tflops']:6.1f} TFLOP/s" if row["ms"] else row["error"][:120]))
            rows.append(row)
    return rows


MAIN_SHAPES = (("B2 S8192 H16 D128", 2, 8192, 16, 128), ("B4 S4096 H16 D64", 4, 4096, 16, 64))


def bench(calls, rounds, grid_seqs, grid_dims, grid, rows=None, save=lambda: None) -> list[dict]:
    rows = [] if rows is None else rows
    for name, b, s, h, d in MAIN_SHAPES:
        for causal in (False, True):
            rows += bench_shape(name, b, s, h, d, causal, calls, rounds)
            save()
    if grid:
        for d in grid_dims:
            for s in grid_seqs:
                b, h = 16384 // s, 2048 // d
                for causal in (False, True):
                    rows += bench_shape(f"FA3 D{d} S{s}", b, s, h, d, causal, calls, rounds,
                                        impls=("ejkernel-triton", "jax.nn-cudnn"))
                    save()
    return rows


DECODE_LENGTHS = (4096, 16384, 131072)
DECODE_FORWARD = ((16, 128, 8, 3), (16, 64, 4, 3), (16, 128, 4, 3))


def decode_bench(calls, rounds, save=lambda: None, rows=None) -> list[dict]:
    """One decoding step, B8 Hq32 Hkv8 D128 bf16 (the harness's decode grid): ms and K/V GB/s per
    implementation; ours with the automatic plan, without key splits, and with other forward tiles."""
    rows = [] if rows is None else rows
    b, hq, hkv, d = 8, 32, 8, 128
    for skv in DECODE_LENGTHS:
        ks = jax.random.split(jax.random.key(skv), 3)
        q = jax.random.normal(ks[0], (b, 1, hq, d), jnp.bfloat16)
        k = jax.random.normal(ks[1], (b, skv, hkv, d), jnp.bfloat16)
        v = jax.random.normal(ks[2], (b, skv, hkv, d), jnp.bfloat16)
        base = choose_block_sizes(d, d, 1, skv, 2)
        impls = {
            "jax.nn-cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
            "jax.nn-xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
            "ours auto": lambda q, k, v: flash_attention(q, k, v)[0],
            "ours 1 split": lambda q, k, v: flash_attention(q, k, v, block_sizes=dataclasses.replace(base, kv_splits=1))[0],
        }
        for fw in DECODE_FORWARD[1:]:
            cfg = dataclasses.replace(base, forward=PassBlocks(*fw))
            impls[f"ours fwd {fw}"] = lambda q, k, v, cfg=cfg: flash_attention(q, k, v, block_sizes=cfg)[0]
        for impl, fn in impls.items():
            row = dict(shape=f"decode B{b} Skv{skv} H{hq}/{hkv} D{d}", impl=impl)
            try:
                t = time_fn(jax.jit(fn), (q, k, v), calls, rounds)
                row.update(ms=t * 1e3, gbps=2 * k.size * 2 / t / 1e9)
            except Exception as e:  # noqa: BLE001
                row.update(ms=None, error=f"{type(e).__name__}: {str(e)[:300]}")
            log(f"decode Skv{skv:<7d} {impl:28s} " + (f"{row['ms']:8.4f} ms {row['gbps']:7.0f} GB/s" if row["ms"] else row["error"][:150]))
            rows.append(row)
            save()
    return rows


# ---------------------------------------------------------------------------------------------- sweep
# Candidates per head dim (the first sweep's losers dropped; see NOTES-triton.md).
SWEEP = {
    128: {"forward": [(128, 128, 8, 3), (128, 128, 4, 3), (128, 64, 4, 3)],
          "dkv": [(32, 64, 4, 3), (32, 64, 4, 4), (32, 64, 8, 3), (64, 64, 8, 3), (32, 128, 8, 3), (16, 64, 4, 3),
                  (32, 32, 4, 3)],
          "dq": [(128, 128, 8, 2), (128, 64, 8, 3), (128, 128, 4, 2), (64, 128, 8, 2), (128, 32, 8, 3)]},
    64: {"forward": [(64, 64, 4, 3), (128, 128, 4, 3), (64, 64, 4, 4), (64, 64, 8, 3), (64, 32, 4, 3), (128, 64, 4, 2)],
         "dkv": [(64, 64, 4, 3), (64, 64, 8, 3), (32, 64, 4, 4), (64, 128, 8, 3), (128, 64, 8, 3)],
         "dq": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 4, 3), (64, 64, 8, 3)]},
    256: {"forward": [(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3), (64, 64, 8, 3)],
          "dkv": [(32, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (16, 64, 8, 2), (32, 32, 4, 3), (32, 32, 8, 3),
                  (64, 32, 8, 2), (16, 32, 4, 3)],
          "dq": [(128, 32, 4, 3), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3), (128, 32, 8, 2),
                 (64, 64, 4, 2)]},
}
# Short sequences (FA3-grid shapes, S <= 1024): the long-sequence winners first, then smaller tiles, which
# give more programs per SM and skip more of a causal mask.
SWEEP_SHORT = {
    64: {"forward": [(64, 64, 4, 3), (128, 64, 4, 3), (64, 32, 4, 3), (32, 64, 4, 3), (64, 64, 4, 2), (128, 128, 4, 3),
                     (64, 128, 4, 3), (32, 32, 4, 2)],
         "dkv": [(64, 64, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3),
                 (64, 64, 4, 2)],
         "dq": [(128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 64, 4, 3), (128, 128, 4, 3), (64, 128, 4, 3)]},
    128: {"forward": [(128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (64, 128, 8, 3),
                      (32, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2)],
          "dkv": [(32, 64, 4, 3), (64, 64, 4, 3), (32, 32, 4, 3), (16, 64, 4, 3), (64, 64, 8, 3), (32, 128, 8, 3),
                  (64, 32, 4, 3)],
          "dq": [(128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2), (32, 64, 4, 3),
                 (64, 32, 4, 3)]},
    256: {"forward": [(64, 64, 4, 3), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 3), (64, 64, 8, 3), (32, 64, 4, 2)],
          "dkv": [(32, 64, 8, 3), (16, 64, 8, 3), (32, 32, 8, 3), (16, 32, 4, 3), (32, 64, 4, 3), (16, 64, 4, 3)],
          "dq": [(64, 64, 4, 2), (32, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 3), (64, 64, 8, 2), (32, 64, 4, 2)]},
}
SHORT_SWEEP_LEN = 1024
SWEEP_SHAPES = (("B2 S8192 H16 D128", 2, 8192, 16, 128), ("B4 S4096 H16 D64", 4, 4096, 16, 64),
                ("B4 S4096 H8 D256", 4, 4096, 8, 256),
                ("B32 S512 H32 D64", 32, 512, 32, 64), ("B32 S512 H16 D128", 32, 512, 16, 128),
                ("B32 S512 H8 D256", 32, 512, 8, 256), ("B16 S1024 H32 D64", 16, 1024, 32, 64),
                ("B16 S1024 H16 D128", 16, 1024, 16, 128), ("B16 S1024 H8 D256", 16, 1024, 8, 256))


def sweep(calls, rounds, shapes=SWEEP_SHAPES, causals=(False,)) -> list[dict]:
    """Times each pass's kernel alone (padded operands, precomputed lse/delta) for each candidate."""
    from ejkernel.kernels.pallas_triton.backward import dkv_call, dq_call
    from ejkernel.kernels.pallas_triton.forward import forward_call
    from ejkernel.kernels.pallas_triton.plan import Plan

    rows = []
    for name, b, s, h, d in shapes:
        q, k, v, do = random_qkv(b, s, h, d)
        for causal in causals:
            p = Plan(batch=b, q_len=s, kv_len=s, q_len_pad=s, kv_len_pad=s, num_q_heads=h, num_kv_heads=h,
                        head_dim=d, v_head_dim=d, softmax_scale=d ** -0.5, causal=causal)
            out, lse2 = jax.jit(lambda q, k, v: forward_call(p, PassBlocks(64, 64), q, k, v, None, None, None))(q, k, v)
            delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), out.astype(jnp.float32))
            for pass_name, candidates in (SWEEP_SHORT if s <= SHORT_SWEEP_LEN else SWEEP)[d].items():
                for cand in candidates:
                    c = PassBlocks(*cand)
                    if pass_name == "forward":
                        fn = jax.jit(lambda q, k, v, c=c: forward_call(p, c, q, k, v, None, None, None))
                        args, fl = (q, k, v), flops(b, h, s, s, d, causal, False)
                    elif pass_name == "dkv":
                        fn = jax.jit(lambda q, k, v, do, lse2, delta, c=c: dkv_call(p, c, q, k, v, None, None, do, lse2, delta))
                        args, fl = (q, k, v, do, lse2, delta), flops(b, h, s, s, d, causal, False) * 2.0
                    else:
                        fn = jax.jit(lambda q, k, v, do, lse2, delta, c=c: dq_call(p, c, q, k, v, None, None, do, lse2, delta))
                        args, fl = (q, k, v, do, lse2, delta), flops(b, h, s, s, d, causal, False) * 1.5
                    row = dict(shape=name, causal=causal, pass_=pass_name, config=cand)
                    try:
                        t = time_fn(fn, args, calls, rounds)
                        row.update(ms=t * 1e3, tflops=fl / t / 1e12)
                        log(f"sweep {name:20s} causal={int(causal)} {pass_name:7s} {cand} {t*1e3:8.3f} ms {fl/t/1e12:6.1f} TFLOP/s(matmul)")
                    except Exception as e:  # noqa: BLE001
                        row.update(ms=None, error=f"{type(e).__name__}: {str(e)[:300]}")
                        log(f"sweep {name:20s} causal={int(causal)} {pass_name:7s} {cand} FAILED {row['error'][:150]}")
                    rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- report
def environment() -> dict:
    dev = jax.devices()[0]
    return dict(device=getattr(dev, "device_kind", str(dev)), platform=dev.platform, jax=jax.__version__,
                date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                default_configs={str(d): str(choose_block_sizes(d, d, 8192, 8192, 2)) for d in (64, 128, 256)})


def table(rows: list[dict]) -> str:
    lines = ["| shape | causal | pass | ejkernel-triton | jax.nn-cudnn | jax.nn-xla |", "|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        key = (r["shape"], r["causal"], r["pass_"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        cells = []
        for impl in ("ejkernel-triton", "jax.nn-cudnn", "jax.nn-xla"):
            r = next((r for r in rows if (r["shape"], r["causal"], r["pass_"]) == key and r["impl"] == impl), None)
            cells.append("-" if r is None else ("fail" if r["tflops"] is None else f"{r['tflops']:.0f}"))
        lines.append(f"| {key[0]} | {int(key[1])} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--parity-cases", default="", help="';'-separated case names (default: all)")
    ap.add_argument("--parity-dtypes", default="", help="comma-separated dtypes (default: all)")
    ap.add_argument("--report", default="", help="only render the text report of a saved JSON file")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-shapes", default="", help="comma-separated indices into SWEEP_SHAPES")
    ap.add_argument("--sweep-causal", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--decode", action="store_true", help="decoding steps: ours (plans) beside cuDNN and XLA")
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--grid-seqs", default="1024,4096,16384")
    ap.add_argument("--grid-dims", default="64,128,256")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--tag", default="triton_gpu")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore", FallbackWarning)
    if a.report:
        report(json.loads(pathlib.Path(a.report).read_text()), pathlib.Path(a.report).with_suffix(".txt"))
        return
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(environment=environment())
    log(json.dumps(result["environment"]))
    t0 = time.perf_counter()

    def save(result):
        (out / f"{a.tag}.json").write_text(json.dumps(result, indent=1, default=str))

    if a.parity:
        result["parity"] = parity([n for n in a.parity_cases.split(";") if n], [d for d in a.parity_dtypes.split(",") if d])
        save(result)
    if a.sweep:
        shapes = SWEEP_SHAPES if not a.sweep_shapes else tuple(SWEEP_SHAPES[int(i)] for i in a.sweep_shapes.split(","))
        result["sweep"] = sweep(a.calls, a.rounds, shapes, (False, True) if a.sweep_causal else (False,))
        save(result)
    if a.bench:
        result["bench"] = []
        bench(a.calls, a.rounds, [int(x) for x in a.grid_seqs.split(",")], [int(x) for x in a.grid_dims.split(",")],
              a.grid, rows=result["bench"], save=lambda: save(result))
    if a.decode:
        result["decode"] = []
        decode_bench(a.calls, a.rounds, save=lambda: save(result), rows=result["decode"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save(result)
    report(result, out / f"{a.tag}.txt")


def report(result: dict, path: pathlib.Path) -> None:
    lines = [f"# {result['environment']['device']}  jax {result['environment']['jax']}  {result['environment']['date']}"]
    if "parity" in result:
        bad = [r for r in result["parity"] if not r["passed"]]
        lines.append(f"parity: {len(result['parity']) - len(bad)}/{len(result['parity'])} passed")
        lines += [f"  FAIL {r['case']} {r['dtype']} {r['served_by']} {r.get('error', r['errors'])}" for r in bad]
    if "sweep" in result:
        for key in sorted({(r["shape"], r["causal"], r["pass_"]) for r in result["sweep"]}):
            ok = [r for r in result["sweep"] if (r["shape"], r["causal"], r["pass_"]) == key and r.get("ms")]
            if ok:
                best = min(ok, key=lambda r: r["ms"])
                lines.append(f"sweep best {key[0]} causal={int(key[1])} {key[2]}: {best['config']} {best['ms']:.3f} ms")
    if "bench" in result:
        lines.append("TFLOP/s (bf16):")
        lines.append(table(result["bench"]))
    if "decode" in result:
        lines.append("decoding step, bf16 (ms; K/V GB/s):")
        lines += [f"  {r['shape']:32s} {r['impl']:28s} " + (f"{r['ms']:8.4f} ms {r['gbps']:7.0f} GB/s" if r.get("ms") else "error")
                  for r in result["decode"]]
    text = "\n".join(lines)
    path.write_text(text + "\n")
    log(text)


if __name__ == "__main__":
    main()
