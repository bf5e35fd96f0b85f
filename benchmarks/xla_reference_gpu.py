"""Our XLA reference in each query layout beside ``jax.nn.dot_product_attention(implementation="xla")`` on a GPU.

For every cell of the FA3 grid (16k tokens, hidden 2048, bfloat16), causal and not, forward and
forward+backward (gradients w.r.t. q, k, v), it times the reference with ``_query_layout`` forced to
``"rows"`` and to ``"heads"``, and jax.nn's XLA path, each jitted, by ``ejkernel.bench.timing.time_calls``.
Lines print as cells finish; ``ratio`` is jax.nn's time over ours (the requirement: at least 0.95).

    PYTHONPATH=$PWD python benchmarks/xla_reference_gpu.py [--out DIR] [--budget-s 300] [--head-dim 256]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp

from ejkernel.bench.grids import fa3_grid
from ejkernel.bench.timing import time_calls
from ejkernel.kernels.xla import reference

LAYOUTS = ("rows", "heads")


def _ours(layout: str, causal: bool, backward: bool):
    def forward(q, k, v):
        with mock.patch.object(reference, "_query_layout", lambda: layout):  # read at trace time
            return reference.attention(q, k, v, causal=causal, dtype=jnp.bfloat16)[0]

    return _jitted(forward, backward)


def _jax_nn(causal: bool, backward: bool):
    def forward(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")

    return _jitted(forward, backward)


def _jitted(forward, backward: bool):
    if not backward:
        return jax.jit(forward)

    def loss(q, k, v, cotangent):
        return jnp.sum(forward(q, k, v).astype(jnp.float32) * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting cells after this long")
    parser.add_argument("--head-dim", type=int, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    rows, start = [], time.perf_counter()
    shapes = [s for s in fa3_grid() if args.head_dim is None or s.head_dim in args.head_dim]
    for shape in sorted(shapes, key=lambda s: (s.q_len, s.head_dim)):
        for backward in (False, True):
            for causal in (False, True):
                if time.perf_counter() - start > args.budget_s:
                    print("budget spent; cells left unmeasured", flush=True)
                    return _write(args.out, device, rows)
                keys = jax.random.split(jax.random.key(shape.q_len + shape.head_dim), 4)
                q = jax.random.normal(keys[0], (shape.batch, shape.q_len, shape.num_q_heads, shape.head_dim), jnp.bfloat16)
                k = jax.random.normal(keys[1], (shape.batch, shape.kv_len, shape.num_kv_heads, shape.head_dim), jnp.bfloat16)
                v = jax.random.normal(keys[2], k.shape, jnp.bfloat16)
                inputs = (q, k, v) + ((jax.random.normal(keys[3], q.shape, jnp.float32),) if backward else ())
                fns = {f"ours:{lay}": _ours(lay, causal, backward) for lay in LAYOUTS}
                fns["jax.nn:xla"] = _jax_nn(causal, backward)
                ms = {}
                for name, fn in fns.items():
                    try:
                        ms[name] = time_calls(fn, [inputs], rounds=args.rounds).median_s * 1e3
                    except Exception as e:  # noqa: BLE001 - a cell that cannot run (memory) is reported
                        ms[name] = None
                        print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
                row = {"batch": shape.batch, "seq": shape.q_len, "head_dim": shape.head_dim, "causal": causal,
                       "mode": "fwd+bwd" if backward else "fwd", "ms": ms}
                rows.append(row)
                ratios = "  ".join(
                    f"{lay} {ms['jax.nn:xla'] / ms[f'ours:{lay}']:.3f}" if ms["jax.nn:xla"] and ms[f"ours:{lay}"] else f"{lay} n/a"
                    for lay in LAYOUTS)
                print(f"S{shape.q_len:>5} D{shape.head_dim:<3} {row['mode']:<7} {'causal' if causal else 'full  '}  "
                      + "  ".join(f"{n} {t:.3f}ms" if t else f"{n} n/a" for n, t in ms.items())
                      + f"  | jax.nn/ours: {ratios}", flush=True)
                del fns, inputs, q, k, v
    return _write(args.out, device, rows)


def _write(out: pathlib.Path | None, device, rows: list[dict]) -> int:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "xla_reference_gpu.json").write_text(json.dumps(
            {"device": device.device_kind, "jax": jax.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
