"""One-call probe of the Mosaic-GPU (Hopper) flash attention on the device: environment, compile, parity, speed.

    python benchmarks/mosaic_gpu_probe.py                 # everything
    python benchmarks/mosaic_gpu_probe.py --quick         # compile + 3 parity cases + 2 timing cells
    python benchmarks/mosaic_gpu_probe.py causal-gqa-d128 time-b2-s8192-d128-causal   # named cases only
    python benchmarks/mosaic_gpu_probe.py --native        # the native backward: compile, parity, speed
    python benchmarks/mosaic_gpu_probe.py --list          # the case names

Stages, each case in its own try/except that prints the exception (type and first lines) and goes on,
every line flushed as it finishes:

1. ``env``: jax version, device, compute capability, what ``explain`` picks for a plain bf16 call.
2. ``compile-*``: lowers and compiles the forward kernel alone at each head dim (the first place a Mosaic
   error shows), then runs it once.
3. ``parity-*``: output and gradients of ``ejkernel.attention(..., platform="mosaic_gpu", strict=True)``
   against the float32 XLA oracle (``ejkernel.check.oracle``), next to the XLA reference run in the same
   dtype; ``ok`` where every error is within ``ejkernel.check.TOLERANCE`` or 1.5x the XLA reference's own.
4. ``time-*``: TFLOP/s forward and forward+backward (4·B·H·Sq·Skv·D forward, halved when causal, x3.5 for
   forward+backward) of mosaic_gpu, triton and cuDNN (``jax.nn.dot_product_attention(implementation="cudnn")``):
   warm-up, then ``--rounds`` rounds of ``--calls`` back-to-back jitted calls and one ``block_until_ready``,
   the median round.
5. ``blocks-*``: the forward at B2 S8192 H16 D128 with other ``ForwardBlocks`` (tuning data).
6. ``order-*``: causal D128 with the query blocks launched heavy first (the default) or in grid order:
   the forward at S8192 and S16384 (``ForwardBlocks.heavy_first``), forward+backward with the native
   backward at S8192 (``BackwardBlocks.dq_heavy_first``).
7. ``persistent-*``: the forward on a grid over the query blocks (``persistent_ctas=0``, the default) or on
   one CTA per SM looping over them (``ForwardBlocks.persistent_ctas``): non-causal D128 at S512, S2048,
   S8192 and S16384, D64 and D256 at S8192 (the FA3 grid's batch and heads), and causal D128 at S8192.

The native backward (``backward="mosaic"``, not yet the default) has its own stages, all in ``--native``:

- ``compile-bwd-d64``, ``compile-bwd-d128``: its dK/dV and dQ kernels alone, compiled and run once on
  all-ones inputs (in a child process of their own, so a hang skips only the native stages);
- ``parity-native-*``: ``parity-*``'s cells (head dims up to 128) with ``backward="mosaic"``;
- ``time-native-*``: ``time-*``'s cells (head dims up to 128), forward and forward+backward of the
  forward with the Triton backward (the default), with the native backward, and cuDNN, side by side;
- ``bwd-blocks-*``: forward+backward at B2 S8192 H16 D128 causal with other ``BackwardBlocks``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import ejkernel  # noqa: E402
from ejkernel.check import TOLERANCE, CheckCase, make_inputs, oracle, relative_error  # noqa: E402
from ejkernel.errors import FallbackWarning  # noqa: E402

REFERENCE_MARGIN = 1.5


def say(*parts) -> None:
    print(*parts, flush=True)


def failure(name: str, e: BaseException) -> None:
    lines = [ln for ln in str(e).splitlines() if ln.strip()][:8]
    say(f"{name}: FAIL {type(e).__name__}: " + "\n    ".join(lines))
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in tb if "ejkernel" in f.filename][-4:]
    if ours:
        say("    at " + " <- ".join(reversed(ours)))


# ------------------------------------------------------------------------------------------------ stages


def env() -> None:
    dev = jax.devices()[0]
    say(
        f"env: jax {jax.__version__}, python {sys.version.split()[0]}, device {dev.device_kind} "
        f"(compute capability {getattr(dev, 'compute_capability', '?')}), ejkernel at {Path(ejkernel.__file__).parent}"
    )
    q = jax.ShapeDtypeStruct((2, 1024, 8, 128), jnp.bfloat16)
    say("env: explain auto ->", str(ejkernel.explain(q, q, q, causal=True)).replace("\n", " | "))
    for spec in ejkernel.registry.kernel_specs("attention"):
        say(
            f"env: {spec.platform:12s} priority {spec.priority:4d} available: {spec.hardware_reason('cuda', False) or 'yes'}"
        )


def compile_forward(d: int) -> None:
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import choose_forward_blocks
    from ejkernel.kernels.pallas_mosaic_gpu.forward import forward_call
    from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan

    c = choose_forward_blocks(d, 1024)
    for causal in (False, True):
        p = Plan(1, 1024, 1024, 1024, 1024, 4, 2, d, 1 / math.sqrt(d), causal, None, False)
        q = jnp.ones((1, 1024, 4, d), jnp.bfloat16)
        k = jnp.ones((1, 1024, 2, d), jnp.bfloat16)
        t = time.perf_counter()
        f = jax.jit(lambda q, k, v: forward_call(p, c, q, k, v))
        compiled = f.lower(q, k, k).compile()
        out, lse = compiled(q, k, k)
        out.block_until_ready()
        # all-ones inputs: every row averages ones, so the output is 1 everywhere
        finite = bool(jnp.isfinite(out.astype(jnp.float32)).all()) and bool(jnp.isfinite(lse).all())
        mean = float(jnp.mean(out.astype(jnp.float32)))
        say(
            f"compile-d{d}-{'causal' if causal else 'full'}: ok {time.perf_counter() - t:.1f}s {c} "
            f"out finite {finite} mean {mean:.4f} (want 1.0)"
        )


def compile_backward(d: int) -> None:
    from ejkernel.kernels.pallas_mosaic_gpu.backward import backward_call
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import choose_backward_blocks
    from ejkernel.kernels.pallas_mosaic_gpu.plan import Plan

    c = choose_backward_blocks(d)
    for causal in (False, True):
        p = Plan(1, 1024, 1024, 1024, 1024, 4, 2, d, 1 / math.sqrt(d), causal, None, False)
        q = jnp.ones((1, 1024, 4, d), jnp.bfloat16)
        k = jnp.ones((1, 1024, 2, d), jnp.bfloat16)
        lse = jnp.zeros((1, 4, 1024), jnp.float32)
        d_lse = jnp.zeros((1, 1024, 4), jnp.float32)
        t = time.perf_counter()
        f = jax.jit(lambda q, k, v, o, lse, do, d_lse: backward_call(p, c, (q, k, v, o, lse), (do, d_lse)))
        compiled = f.lower(q, k, k, q, lse, q, d_lse).compile()
        dq, dk, dv = compiled(q, k, k, q, lse, q, d_lse)
        jax.block_until_ready(dv)
        # all ones: dP = delta = D everywhere, so dS, dQ and dK are 0; dV sums probabilities exp(s - 0)
        finite = all(bool(jnp.isfinite(x.astype(jnp.float32)).all()) for x in (dq, dk, dv))
        dqk = max(float(jnp.max(jnp.abs(x.astype(jnp.float32)))) for x in (dq, dk))
        say(
            f"compile-bwd-d{d}-{'causal' if causal else 'full'}: ok {time.perf_counter() - t:.1f}s {c} "
            f"finite {finite} max|dq|,|dk| {dqk:.2e} (want 0)"
        )


PARITY = {
    # name: (B, Sq, Skv, Hq, Hkv, D, dtype, causal, window)
    "plain-d128": (2, 1024, 1024, 4, 4, 128, "bfloat16", False, None),
    "causal-d128": (2, 1024, 1024, 4, 4, 128, "bfloat16", True, None),
    "causal-gqa-d128": (1, 777, 1000, 8, 2, 128, "bfloat16", True, None),
    "empty-rows-gqa-d64": (1, 700, 260, 6, 3, 64, "bfloat16", True, None),
    "window-d64-fp16": (2, 2048, 2048, 4, 2, 64, "float16", True, (256, 0)),
    "window2-d128": (1, 1500, 1300, 4, 1, 128, "bfloat16", False, (200, 60)),
    "causal-d256": (1, 512, 512, 4, 2, 256, "bfloat16", True, None),
    "plain-d256-fp16": (1, 640, 900, 2, 2, 256, "float16", False, None),
    "d96-padded": (2, 384, 384, 4, 4, 96, "bfloat16", True, None),
    "short-q-mqa": (2, 100, 900, 8, 1, 128, "bfloat16", True, None),
    "long-causal-d128": (1, 8192, 8192, 2, 2, 128, "bfloat16", True, None),
}


def _grads(fn, args, dtype, cot):
    diff = {k: args[k] for k in ("query", "key", "value")}
    rest = {k: v for k, v in args.items() if k not in diff}

    @jax.jit
    def run(diff, cot):
        out, vjp = jax.vjp(lambda d: fn(**d, **rest, dtype=dtype)[0], diff)
        return out, vjp(cot.astype(out.dtype))[0]

    return run(diff, cot)


#: The parity cells the native backward serves (head dims up to 128).
NATIVE_PARITY = [n for n, cell in PARITY.items() if cell[5] <= 128]


def _native_kernel(backward_blocks=None):
    from ejkernel.kernels.pallas_mosaic_gpu.interface import flash_attention

    def fn(*args, **kwargs):
        return flash_attention(*args, **kwargs, backward="mosaic", backward_blocks=backward_blocks)

    return fn


def parity(name: str, native_backward: bool = False) -> None:
    b, sq, skv, hq, hkv, d, dtype, causal, window = PARITY[name]
    case = CheckCase(name, b, sq, skv, hq, hkv, d, None, causal, window)
    args = make_inputs(case, 0)
    cot = jax.random.normal(jax.random.key(7), (b, sq, hq, d))
    ref_out, ref_grads = oracle(args, cot)
    t = time.perf_counter()
    ours = ejkernel.get_kernel("attention", "mosaic_gpu", strict=True)
    assert ours.explain(**args, dtype=dtype).chosen.platform == "mosaic_gpu"
    if native_backward:
        ours = _native_kernel()
    out, grads = _grads(ours, args, dtype, cot)
    elapsed = time.perf_counter() - t
    xla = ejkernel.get_kernel("attention", "xla")
    xout, xgrads = _grads(xla, args, dtype, cot)
    errors = {"out": relative_error(out, ref_out)} | {f"d{k[0]}": relative_error(grads[k], ref_grads[k]) for k in grads}
    xerrors = {"out": relative_error(xout, ref_out)} | {
        f"d{k[0]}": relative_error(xgrads[k], ref_grads[k]) for k in xgrads
    }
    ok = all(e <= TOLERANCE[dtype] or e <= REFERENCE_MARGIN * xerrors[k] for k, e in errors.items())
    fmt = lambda es: " ".join(f"{k} {v:.2e}" for k, v in es.items())  # noqa: E731
    label = f"parity-native-{name}" if native_backward else f"parity-{name}"
    say(
        f"{label}: {'ok' if ok else 'MISMATCH'} {dtype} | mosaic {fmt(errors)} | xla-{dtype} {fmt(xerrors)} "
        f"| {elapsed:.1f}s incl. compile"
    )


def _timed(f, *args, calls: int, rounds: int) -> float:
    out = f(*args)
    jax.block_until_ready(out)
    out = f(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def _implementations(causal: bool, forward_blocks=None, native_backward: bool = False, backward_blocks=None):
    if backward_blocks is not None:
        native = _native_kernel(backward_blocks)
        return {"mosaic_gpu+native-bwd": lambda q, k, v: native(q, k, v, causal=causal)[0]}
    if native_backward:
        native = _native_kernel()
        default = ejkernel.get_kernel("attention", "mosaic_gpu", strict=True)

        def cudnn(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

        return {
            "mosaic_gpu+triton-bwd": lambda q, k, v: default(q, k, v, causal=causal)[0],
            "mosaic_gpu+native-bwd": lambda q, k, v: native(q, k, v, causal=causal)[0],
            "cudnn": cudnn,
        }
    if forward_blocks is not None:
        from ejkernel.kernels.pallas_mosaic_gpu.interface import flash_attention

        return {"mosaic_gpu": lambda q, k, v: flash_attention(q, k, v, causal=causal, forward_blocks=forward_blocks)[0]}

    def ek(platform):  # strict: a call the platform cannot serve raises instead of timing another one
        return lambda q, k, v: ejkernel.get_kernel("attention", platform, strict=True)(q, k, v, causal=causal)[0]

    def cudnn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    return {"mosaic_gpu": ek("mosaic_gpu"), "triton": ek("triton"), "cudnn": cudnn}


TIMING = {
    # name: (B, S, H, D, causal)
    "time-b2-s8192-d128": (2, 8192, 16, 128, False),
    "time-b2-s8192-d128-causal": (2, 8192, 16, 128, True),
    "time-b1-s16384-d128-causal": (1, 16384, 16, 128, True),
    "time-b1-s16384-d128": (1, 16384, 16, 128, False),
    "time-b2-s8192-d64": (2, 8192, 32, 64, False),
    "time-b2-s8192-d256": (2, 8192, 8, 256, False),
    "time-b32-s512-d128": (32, 512, 16, 128, False),
    "time-b8-s2048-d128": (8, 2048, 16, 128, False),
    "time-b4-s2048-d128": (4, 2048, 16, 128, False),
    "time-b4-s2048-d128-causal": (4, 2048, 16, 128, True),
    "time-b4-s2048-d64": (4, 2048, 16, 64, False),
    "time-b4-s2048-d64-causal": (4, 2048, 16, 64, True),
    "time-b4-s2048-d256": (4, 2048, 16, 256, False),
    "time-b4-s2048-d256-causal": (4, 2048, 16, 256, True),
}


#: The timing cells the native backward serves, as ``time-native-*``.
NATIVE_TIMING = {n.replace("time-", "time-native-", 1): n for n, cell in TIMING.items() if cell[3] <= 128}


def _inputs(b, s, h, d):
    ks = jax.random.split(jax.random.key(0), 4)
    return [jax.random.normal(k, (b, s, h, d), jnp.bfloat16) for k in ks]


def timing(
    name: str,
    calls: int,
    rounds: int,
    only=None,
    forward_blocks=None,
    label=None,
    native_backward: bool = False,
    backward_blocks=None,
) -> None:
    b, s, h, d, causal = TIMING[name]
    q, k, v, do = _inputs(b, s, h, d)
    flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
    for impl, fn in _implementations(causal, forward_blocks, native_backward, backward_blocks).items():
        if only is not None and impl not in only:
            continue
        tag = f"{label or name} {impl}"
        try:
            fwd = jax.jit(fn)
            t_fwd = _timed(fwd, q, k, v, calls=calls, rounds=rounds)
            line = f"{tag}: fwd {flops / t_fwd / 1e12:6.1f} TFLOP/s ({t_fwd * 1e3:.3f} ms)"
        except Exception as e:  # noqa: BLE001
            failure(f"{tag} fwd", e)
            continue
        if forward_blocks is not None:
            say(line)
            continue
        try:
            grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum((fn(q, k, v) * do).astype(jnp.float32)), argnums=(0, 1, 2)))
            t_bwd = _timed(grad, q, k, v, calls=calls, rounds=rounds)
            line += f" | fwd+bwd {3.5 * flops / t_bwd / 1e12:6.1f} TFLOP/s ({t_bwd * 1e3:.3f} ms)"
        except Exception as e:  # noqa: BLE001
            say(line)
            failure(f"{tag} fwd+bwd", e)
            continue
        say(line)


def block_variants():
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import SMEM_LIMIT, ForwardBlocks, smem_bytes

    out = {}
    for bk in (64, 128, 192, 256):
        for stages in (2, 3, 4):
            for sb in (True, False):
                c = ForwardBlocks(64, bk, stages, sb)
                if smem_bytes(128, 2, c) <= SMEM_LIMIT:
                    out[f"blocks-k{bk}-s{stages}{'' if sb else '-nosched'}"] = c
    return out


def backward_block_variants():
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import SMEM_LIMIT, BackwardBlocks, dkv_smem_bytes, dq_smem_bytes

    out = {}
    for bq in (64,):  # 128 streamed queries: dK, dV, Sᵀ and dPᵀ would take 256 registers a thread at D=128
        for bk in (64, 128):
            for stages in (2, 3):
                c = BackwardBlocks(bq, stages, bk, stages)
                if max(dkv_smem_bytes(128, 2, c), dq_smem_bytes(128, 2, c)) <= SMEM_LIMIT:
                    out[f"bwd-blocks-q{bq}-k{bk}-s{stages}"] = c
    return out


def order_variants():
    """``order-*`` stages: ``(timing cell, forward blocks or None, backward blocks or None)``."""
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import BackwardBlocks, ForwardBlocks

    out = {}
    for first in (True, False):
        tag = "heavy" if first else "launch"
        for cell in ("time-b2-s8192-d128-causal", "time-b1-s16384-d128-causal"):
            out[f"order-fwd-{tag}-{cell.split('-')[2]}"] = (cell, ForwardBlocks(64, 128, 2, heavy_first=first), None)
        out[f"order-bwd-{tag}-s8192"] = ("time-b2-s8192-d128-causal", None, BackwardBlocks(dq_heavy_first=first))
    return out


def persistent_variants():
    """``persistent-*`` stages: ``(timing cell, forward blocks)``, the grid's and one CTA per SM's."""
    import dataclasses

    from ejkernel.kernels.pallas_mosaic_gpu.blocks import choose_forward_blocks

    sms = getattr(jax.devices()[0], "core_count", None) or 132
    out = {}
    for cell in ("time-b32-s512-d128", "time-b8-s2048-d128", "time-b2-s8192-d64", "time-b2-s8192-d128",
                 "time-b2-s8192-d256", "time-b1-s16384-d128", "time-b2-s8192-d128-causal"):
        b, s, h, d, causal = TIMING[cell]
        grid = choose_forward_blocks(d, s)
        name = cell.removeprefix("time-")
        out[f"persistent-grid-{name}"] = (cell, grid)
        out[f"persistent-sms-{name}"] = (cell, dataclasses.replace(grid, persistent_ctas=sms))
    return out


def _isolated(compiles: list[str], timeout: int, what: str) -> bool:
    """Runs the compile stages ``compiles`` in a child process with a time limit; whether they may go on.

    A kernel that deadlocks on its barriers or faults would take the whole probe down.
    """
    cmd = [sys.executable, __file__, *compiles, "--no-isolate"]
    try:
        rc = subprocess.run(cmd, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
        say(f"compile: TIMEOUT after {timeout}s (a barrier deadlock?) in {what}")
    # 1: a Python-level error in some head dim (each later stage reports its own); else a hang or a crash.
    if rc not in (0, 1):
        say(f"compile: child ended with {rc}; skipping every {what} stage")
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help="case names (default: all); see --list")
    ap.add_argument("--quick", action="store_true", help="compile, three parity cases, two timing cells")
    ap.add_argument("--native", action="store_true", help="the native backward's compile, parity and timing stages")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-isolate", action="store_true", help="run the compile stage in this process")
    ap.add_argument("--compile-timeout", type=int, default=300)
    a = ap.parse_args()
    blocks = block_variants()
    stages = {"env": env, **{f"compile-d{d}": (lambda d=d: compile_forward(d)) for d in (64, 128, 256)}}
    stages |= {f"compile-bwd-d{d}": (lambda d=d: compile_backward(d)) for d in (64, 128)}
    stages |= {f"parity-{n}": (lambda n=n: parity(n)) for n in PARITY}
    stages |= {f"parity-native-{n}": (lambda n=n: parity(n, native_backward=True)) for n in NATIVE_PARITY}
    stages |= {n: (lambda n=n: timing(n, a.calls, a.rounds)) for n in TIMING}
    stages |= {
        n: (lambda n=n, base=base: timing(base, a.calls, a.rounds, label=n, native_backward=True))
        for n, base in NATIVE_TIMING.items()
    }
    stages |= {
        n: (lambda n=n, c=c: timing("time-b2-s8192-d128-causal", a.calls, a.rounds, ("mosaic_gpu",), c, n))
        for n, c in blocks.items()
    }
    stages |= {
        n: (lambda n=n, c=c: timing("time-b2-s8192-d128-causal", a.calls, a.rounds, label=n, backward_blocks=c))
        for n, c in backward_block_variants().items()
    }
    stages |= {
        n: (lambda n=n, cell=cell, f=f, bb=bb: timing(cell, a.calls, a.rounds, None if bb else ("mosaic_gpu",), f, n,
                                                     backward_blocks=bb))
        for n, (cell, f, bb) in order_variants().items()
    }
    stages |= {
        n: (lambda n=n, cell=cell, f=f: timing(cell, a.calls, a.rounds, ("mosaic_gpu",), f, n))
        for n, (cell, f) in persistent_variants().items()
    }
    native_stages = ("compile-bwd-", "parity-native-", "time-native-", "bwd-blocks-")
    if a.list:
        say("\n".join(stages))
        return
    if a.cases:
        names = [n if n in stages else f"parity-{n}" for n in a.cases]
    elif a.quick:
        names = [
            "env",
            "compile-d64",
            "compile-d128",
            "compile-d256",
            "parity-causal-gqa-d128",
            "parity-window-d64-fp16",
            "parity-causal-d256",
            "time-b2-s8192-d128",
            "time-b2-s8192-d128-causal",
        ]
    elif a.native:
        names = ["env", "compile-d128", *(n for n in stages if n.startswith(native_stages))]
    else:
        names = list(stages)
    warnings.simplefilter("ignore", FallbackWarning)
    skip_mosaic = skip_native = False
    compiles = [n for n in names if n.startswith("compile-")]
    if compiles and not a.no_isolate:
        forward_compiles = [n for n in compiles if not n.startswith(native_stages)]
        backward_compiles = [n for n in compiles if n.startswith(native_stages)]
        if forward_compiles:
            skip_mosaic = not _isolated(forward_compiles, a.compile_timeout, "mosaic_gpu")
        if backward_compiles and not skip_mosaic:
            skip_native = not _isolated(backward_compiles, a.compile_timeout, "native backward")
        skip_native = skip_native or skip_mosaic
        names = [n for n in names if n not in compiles]
    failed: list[str] = []
    for name in names:
        if name not in stages:
            say(f"{name}: unknown case (see --list)")
            continue
        if skip_native and name.startswith(native_stages):
            say(f"{name}: skipped (the native backward did not compile and run)")
            continue
        if skip_mosaic and (name.startswith(("parity-", "blocks-"))):
            say(f"{name}: skipped (the kernel did not compile and run)")
            continue
        try:
            if skip_mosaic and name in TIMING:
                timing(name, a.calls, a.rounds, only=("triton", "cudnn"))
            else:
                stages[name]()
        except Exception as e:  # noqa: BLE001
            failure(name, e)
            failed.append(name)
    say("done")
    if any(n.startswith("compile-") for n in failed):
        sys.exit(1)  # tells a parent probe that the kernel raised (rather than hung or crashed)


if __name__ == "__main__":
    main()
