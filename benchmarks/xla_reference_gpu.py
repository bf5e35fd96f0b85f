"""The dense XLA reference beside ``jax.nn.dot_product_attention(implementation="xla")`` on a GPU.

Times, on the FA3 grid's cells (bf16, 16k tokens, hidden 2048), jax.nn's XLA path and the reference as
committed, plus the variants of its products named by ``--variant`` (each patches one function of
``ejkernel.kernels.xla.reference`` for its own jit only), and prints ``jax.nn time / ours`` per cell (the
GPU issue's requirement: at least 0.95). ``--profile`` adds the per-kernel device time of jax.nn and each
variant at the first cell (``kernel_profile.profile``).

    PYTHONPATH=$PWD python benchmarks/xla_reference_gpu.py --cells d256-noncausal --variant pv-f32 --profile
    PYTHONPATH=$PWD python benchmarks/xla_reference_gpu.py --cells grid              # the whole grid, committed code
    PYTHONPATH=$PWD python benchmarks/xla_reference_gpu.py --cells grid --mode fwd+bwd --causal yes

Variants:
  rows         the reference as committed (on a GPU in bfloat16: P·V written in bfloat16, as jax.nn writes it)
  pv-f32       P·V written in float32 (then cast), so that its cotangent dP = dO·Vᵀ is float32: the earlier form
  default      Q·Kᵀ at the dtype's default precision (no named algorithm)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ejkernel.bench.grids import FA3_HEAD_DIMS, FA3_HIDDEN, FA3_SEQ_LENS, FA3_TOKENS  # noqa: E402
from ejkernel.bench.runner import build_step  # noqa: E402
from ejkernel.bench.timing import time_calls  # noqa: E402
from ejkernel.kernels.xla import reference  # noqa: E402

REQUIRED = 0.95


def _pv_f32(weights, v, dtype):
    """P·V written in float32 from ``dtype`` operands (bfloat16 products, float32 accumulation)."""
    algorithm = jax.lax.DotAlgorithmPreset.BF16_BF16_F32
    return jnp.einsum("bhqk,bkhd->bhqd", weights.astype(dtype), v, preferred_element_type=jnp.float32, precision=algorithm)


VARIANTS = {
    "rows": {},
    "pv-f32": {"_values_product": _pv_f32},
    "default": {"_products_precision": reference.matmul_precision},
}


@contextlib.contextmanager
def patched(variant: str):
    saved = {name: getattr(reference, name) for name in VARIANTS[variant]}
    try:
        for name, fn in VARIANTS[variant].items():
            setattr(reference, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(reference, name, fn)


def cells(which: str, modes=("fwd", "fwd+bwd"), causals=(False, True)) -> list[tuple[int, int, bool, str]]:
    """``(seq, head_dim, causal, mode)`` cells; ``modes`` and ``causals`` filter the grid's."""
    if which == "d256-noncausal":
        base = [(s, 256, False, "fwd+bwd") for s in FA3_SEQ_LENS]
        return base + [(s, d, False, "fwd+bwd") for d in (64, 128) for s in (2048, 8192)]
    return [(s, d, c, m) for m in modes for c in causals for d in FA3_HEAD_DIMS for s in FA3_SEQ_LENS]


def inputs(seq: int, head_dim: int) -> tuple[jax.Array, ...]:
    shape = (FA3_TOKENS // seq, seq, FA3_HIDDEN // head_dim, head_dim)
    keys = jax.random.split(jax.random.key(0), 4)
    return tuple(jax.random.normal(key, shape, jnp.bfloat16) for key in keys)


def step_for(name: str, causal: bool, mode: str):
    if name == "jax.nn":
        forward = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")  # noqa: E731
    else:
        forward = lambda q, k, v: reference.attention(q, k, v, causal=causal, dtype=jnp.bfloat16)[0]  # noqa: E731
    jitted = jax.jit(build_step(forward, mode))
    if name == "jax.nn":
        return jitted

    def call(*args):
        with patched(name):  # the first call traces under the variant; later ones reuse its executable
            return jitted(*args)

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", choices=("d256-noncausal", "grid"), default="d256-noncausal")
    p.add_argument("--variant", action="append", choices=tuple(VARIANTS), default=[])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both", help="the grid's passes")
    p.add_argument("--causal", choices=("no", "yes", "both"), default="both", help="the grid's masks")
    a = p.parse_args()
    modes = ("fwd", "fwd+bwd") if a.mode == "both" else (a.mode,)
    causals = {"no": (False,), "yes": (True,), "both": (False, True)}[a.causal]
    chosen = cells(a.cells, modes, causals)
    names = ["jax.nn", "rows", *[v for v in a.variant if v != "rows"]]
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; bf16; jax.nn time / ours (>= {REQUIRED})", flush=True)
    print(f"{'cell':34}" + "".join(f"{n + ' ms':>14}" for n in names) + "".join(f"{n:>10}" for n in names[1:]), flush=True)
    worst = {n: 9.0 for n in names[1:]}
    for seq, head_dim, causal, mode in chosen:
        args = inputs(seq, head_dim)
        label = f"S{seq} D{head_dim} {'causal' if causal else 'full'} {mode}"
        ms = {}
        for name in names:
            try:
                fn = step_for(name, causal, mode)
                ms[name] = 1e3 * time_calls(fn, [args], rounds=a.rounds, target_round_s=0.1).median_s
            except Exception as e:  # out of memory at the longest cells: reported, not fatal
                print(f"  {label} {name}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                ms[name] = float("nan")
        ratios = {n: ms["jax.nn"] / ms[n] for n in names[1:]}
        for n, r in ratios.items():
            if r == r:
                worst[n] = min(worst[n], r)
        print(f"{label:34}" + "".join(f"{ms[n]:14.3f}" for n in names) + "".join(f"{ratios[n]:10.3f}" for n in names[1:]), flush=True)
        del args
    print("worst ratio: " + ", ".join(f"{n} {w:.3f}" for n, w in worst.items()), flush=True)
    if a.profile:
        from kernel_profile import profile

        seq, head_dim, causal, mode = chosen[0]
        args = inputs(seq, head_dim)
        for name in names:
            profile(f"{name} S{seq} D{head_dim} {mode}", step_for(name, causal, mode), args, calls=3, top=12)


if __name__ == "__main__":
    main()
