"""Ring attention on forced host devices: parity with single-device attention, forward and every gradient.

Run as a script (``python tests/ring_cases.py [--extended]``) in a process whose ``XLA_FLAGS`` force 8 host
devices (``tests/test_ring_attention.py`` does that in a subprocess; ``nox -s ring`` too). Each case prints
``ok <name> <error>``; a failure raises. The oracle is the dense XLA reference on the whole sequence, in
float32 at the highest matmul precision; the ring runs the chunked XLA ``attention_with_lse`` per step.
``--extended`` (slow: not in CI) adds the Pallas-Triton and Pallas-TPU kernels in interpret mode, and
bfloat16, whose error against the float32 oracle must stay within twice single-device bfloat16's.

Tolerance: the ring's backward recomputes each pair and feeds it the merge's cotangents, whose float32
terms ``w * rowsum(g_O * o)`` cancel in the kernel's ``delta`` (``docs/ring.rst``): gradients agree to a few
1e-6 of their scale (single-device chunked: ~1e-6), hence 2e-5.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import ejkernel
from ejkernel.parallel.hlo_overlap import permute_overlap

TOLERANCE = 2e-5  # relative to the largest magnitude; float32 merges of n partials round at ~1e-6

# name, mesh axes {name: size}, sharded_ring_attention extras, shapes (B, S, Hq, Hkv, D, Dv), attention kwargs;
# "bias"/"mask"/"sinks" name the operand layouts to draw.
CASES = [
    ("causal-gqa-bias-sinks", {"seq": 2}, {}, (2, 48, 4, 2, 8, 8), {"causal": True}, {"bias": (1, 4), "sinks": (4, 2)}),
    ("window-mask-softcap-balanced", {"seq": 2}, {"load_balance": True}, (2, 48, 2, 2, 8, 8),
     {"causal": True, "sliding_window": (7, 0), "logits_soft_cap": 3.0}, {"mask": (2, 1)}),
    ("two-sided-window-bias-kv-shared-sinks-dv", {"seq": 4}, {}, (1, 64, 4, 2, 8, 16), {"sliding_window": (5, 11)},
     {"bias": (1, 2), "sinks": (3,)}),
    ("causal-mask-softcap-mqa", {"seq": 8}, {}, (1, 64, 2, 1, 8, 8), {"causal": True, "logits_soft_cap": 2.0},
     {"mask": (1, 1)}),
    ("causal-window-bias-sinks-balanced", {"seq": 8}, {"load_balance": True}, (1, 64, 2, 2, 8, 8),
     {"causal": True, "sliding_window": (9, 0)}, {"bias": (1, 2), "sinks": (2, 1)}),
    ("2d-batch-seq-causal-gqa-balanced", {"batch": 2, "seq": 4}, {"load_balance": True, "batch_axis": "batch"},
     (2, 64, 4, 2, 8, 8), {"causal": True}, {"bias": (2, 1), "sinks": (4, 1)}),
    ("2d-heads-seq-plain-gqa", {"heads": 2, "seq": 2}, {"head_axis": "heads"}, (1, 32, 4, 2, 8, 8),
     {}, {"bias": (1, 2), "sinks": (4, 1)}),
    # Packed rows: segments that cross shard and chunk boundaries, padding (negative ids), global kv_lengths.
    ("causal-segments-lengths-gqa-balanced", {"seq": 4}, {"load_balance": True}, (2, 64, 4, 2, 8, 8),
     {"causal": True}, {"segments": 4, "lengths": True, "sinks": (4, 1)}),
    ("window-segments-bias", {"seq": 2}, {}, (2, 48, 2, 1, 8, 8), {"sliding_window": (6, 3)},
     {"segments": 3, "bias": (2, 1)}),
    ("2d-batch-seq-lengths-mask", {"batch": 2, "seq": 2}, {"batch_axis": "batch"}, (2, 32, 2, 2, 8, 8),
     {"causal": True}, {"lengths": True, "mask": (1, 1)}),
]
#: Cases for the Pallas kernels in interpret mode (``--extended``): platform, then a case as above.
PALLAS_CASES = [
    (platform, (f"{platform}-window-bias-sinks-balanced", {"seq": 2}, {"load_balance": True}, (1, 32, 4, 2, 16, 16),
                {"causal": True, "sliding_window": (9, 0)}, {"bias": (1, 4), "sinks": (4, 2)}))
    for platform in ("triton", "pallas_tpu")
] + [
    (platform, (f"{platform}-causal-segments-lengths-balanced", {"seq": 2}, {"load_balance": True},
                (2, 64, 4, 2, 16, 16), {"causal": True}, {"segments": 3, "lengths": True}))
    for platform in ("triton", "pallas_tpu")
]

#: A bfloat16 case (``--extended``), in the layout of ``CASES``.
BF16_CASE = ("bf16-causal-window-bias-sinks-balanced", {"seq": 4}, {"load_balance": True}, (1, 64, 4, 2, 16, 16),
             {"causal": True, "sliding_window": (20, 0)}, {"bias": (1, 4), "sinks": (4, 2)})

#: The case whose compiled HLO (forward and backward rings) the overlap check reads.
OVERLAP_CASE = "2d-batch-seq-causal-gqa-balanced"


def _inputs(shapes, operands, seed):
    b, s, hq, hkv, d, dv = shapes
    keys = jax.random.split(jax.random.key(seed), 6)
    arrays = {
        "query": jax.random.normal(keys[0], (b, s, hq, d)),
        "key": jax.random.normal(keys[1], (b, s, hkv, d)),
        "value": jax.random.normal(keys[2], (b, s, hkv, dv)),
    }
    if "bias" in operands:
        bb, bh = operands["bias"]
        arrays["bias"] = jax.random.normal(keys[3], (bb, bh, s, s))
    if "mask" in operands:
        mb, mh = operands["mask"]
        arrays["attention_mask"] = jax.random.bernoulli(keys[4], 0.8, (mb, mh, s, s))
    if "sinks" in operands:
        arrays["softmax_aux"] = jax.random.normal(keys[5], operands["sinks"])
    rng = np.random.default_rng(seed)
    if "segments" in operands:  # sorted ids, each row padded (id -1) past a random end
        ids = np.sort(rng.integers(0, operands["segments"], (b, s)), axis=1)
        ids[np.arange(s)[None, :] >= rng.integers(s // 2, s + 1, (b, 1))] = -1
        arrays["q_segment_ids"] = arrays["kv_segment_ids"] = jnp.asarray(ids, jnp.int32)
    if "lengths" in operands:
        arrays["kv_lengths"] = jnp.asarray(rng.integers(0, s + 1, (b,)), jnp.int32)
    return arrays


#: Operands that take no gradient (boolean or integer).
_NOT_DIFFERENTIATED = ("attention_mask", "q_segment_ids", "kv_segment_ids", "kv_lengths")


def _value_and_grads(fn, arrays):
    """``{output, d<name>...}`` of ``sum(out * cos(out))``, and the compiled HLO text."""
    floats = [name for name in arrays if name not in _NOT_DIFFERENTIATED]

    def loss(*xs):
        out, _ = fn(**dict(zip(floats, xs, strict=True)), **{k: v for k, v in arrays.items() if k not in floats})
        return jnp.sum(out * jnp.cos(out)), out

    with jax.default_matmul_precision("highest"):
        compiled = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(floats))), has_aux=True)).lower(
            *(arrays[n] for n in floats)).compile()
        (_, out), grads = compiled(*(arrays[n] for n in floats))
    return {"output": out, **{f"d{n}": g for n, g in zip(floats, grads, strict=True)}}, compiled.as_text()


def run_case(name, axes, extras, shapes, semantics, operands, seed, platform="auto"):
    devices = np.array(jax.devices()[: int(np.prod(list(axes.values())))]).reshape(tuple(axes.values()))
    mesh = Mesh(devices, tuple(axes))
    arrays = _inputs(shapes, operands, seed)
    semantics = dict(semantics, dtype=jnp.float32)
    want, _ = _value_and_grads(lambda **a: ejkernel.attention(**a, **semantics, platform="xla"), arrays)
    got, hlo = _value_and_grads(
        lambda **a: ejkernel.sharded_ring_attention(**a, **semantics, mesh=mesh, axis_name="seq", **extras, platform=platform,
                                                 interpret=platform != "auto"), arrays)
    worst = 0.0
    for key in want:
        err = float(jnp.max(jnp.abs(got[key] - want[key])) / jnp.max(jnp.abs(want[key])))
        assert np.isfinite(err) and err < TOLERANCE, (name, key, err)
        worst = max(worst, err)
    return worst, hlo


def run_bf16_case(name, axes, extras, shapes, semantics, operands, seed):
    """The ring's bfloat16 error against the float32 oracle is within twice single-device bfloat16's."""
    mesh = Mesh(np.array(jax.devices()[: axes["seq"]]), ("seq",))
    arrays = {k: x.astype(jnp.bfloat16) if k != "attention_mask" else x for k, x in _inputs(shapes, operands, seed).items()}
    as_f32 = {k: x.astype(jnp.float32) if k != "attention_mask" else x for k, x in arrays.items()}
    want, _ = _value_and_grads(lambda **a: ejkernel.attention(**a, **semantics, dtype=jnp.float32, platform="xla"), as_f32)
    single, _ = _value_and_grads(lambda **a: ejkernel.attention(**a, **semantics, dtype=jnp.bfloat16), arrays)
    got, _ = _value_and_grads(lambda **a: ejkernel.sharded_ring_attention(
        **a, **semantics, dtype=jnp.bfloat16, mesh=mesh, axis_name="seq", **extras), arrays)
    worst = 0.0
    for key in want:
        scale = float(jnp.max(jnp.abs(want[key])))
        ring_err = float(jnp.max(jnp.abs(got[key].astype(jnp.float32) - want[key]))) / scale
        single_err = float(jnp.max(jnp.abs(single[key].astype(jnp.float32) - want[key]))) / scale
        assert ring_err <= 2 * single_err + 2e-3, (name, key, ring_err, single_err)
        worst = max(worst, ring_err)
    return worst


def check_overlap(hlo: str) -> str:
    """Every ring step's ``ppermute`` needs no compute of its step and is issued before it (and, where the
    backend has asynchronous collectives, has compute scheduled between its start and done)."""
    reports = permute_overlap(hlo)
    assert len({r.computation for r in reports}) >= 2, reports  # the forward ring and the backward ring
    for r in reports:
        assert r.independent_of_compute and r.issued_before_compute, r
        if r.asynchronous:
            assert r.compute_overlapped > 0, r
    return f"{len(reports)} {'async' if all(r.asynchronous for r in reports) else 'sync'}"


def main() -> None:
    assert len(jax.devices()) >= 8, "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
    for seed, case in enumerate(CASES):
        start = time.perf_counter()
        err, hlo = run_case(*case, seed=seed)
        print(f"ok {case[0]} {err:.1e} {time.perf_counter() - start:.1f}s", flush=True)
        if case[0] == OVERLAP_CASE:
            print(f"ok overlap {check_overlap(hlo)}", flush=True)
    if "--extended" in sys.argv:
        for seed, (platform, case) in enumerate(PALLAS_CASES):
            start = time.perf_counter()
            err, _ = run_case(*case, seed=seed, platform=platform)
            print(f"ok {case[0]} {err:.1e} {time.perf_counter() - start:.1f}s", flush=True)
        start = time.perf_counter()
        err = run_bf16_case(*BF16_CASE, seed=0)
        print(f"ok {BF16_CASE[0]} {err:.1e} {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
