"""``ejkernel bench sweep``: per-pass kernel times of candidate block sizes for the Triton flash attention.

For each shape and causal flag, every candidate ``PassBlocks`` of each pass (``forward_call``, ``dkv_call``,
``dq_call``) is timed alone (``timing.time_calls``) on one set of padded operands, shared by every
candidate: the swept shapes' operands are larger than any cache. The sequences are padded to a multiple of
the largest candidate block, as a call is padded to a multiple of its passes' blocks. The backward passes
read the forward's base-2 lse through ``recompute_lse`` (empty rows ``+inf``) and ``delta = rowsum(dO * O)``,
as the kernel's own backward does. The block sizes the table chooses today (``choose_block_sizes``) are
always among the candidates, marked ``current``. FLOPs per pass: ``flops.pass_flops``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.bench.flops import PASS_FORWARDS, pass_flops, tflops_per_s
from ejkernel.bench.grids import BenchShape
from ejkernel.bench.runner import all_finite, failure_reason, make_inputs
from ejkernel.bench.timing import time_calls
from ejkernel.kernels.pallas_triton.backward import dkv_call, dq_call
from ejkernel.kernels.pallas_triton.blocks import SHORT_LEN, PassBlocks, choose_block_sizes, padded_head_dim
from ejkernel.kernels.pallas_triton.forward import forward_call
from ejkernel.kernels.pallas_triton.plan import Plan
from ejkernel.ops.attention.merge import recompute_lse

__all__ = [
    "PASSES",
    "HEAD_DIM_ROWS",
    "LONG_CANDIDATES",
    "SHORT_CANDIDATES",
    "SWEEP_SHAPES",
    "SweepConfig",
    "head_dim_row",
    "length_range",
    "parse_candidate",
    "candidates_for",
    "sweep_plan",
    "run_sweep",
]

PASSES = tuple(PASS_FORWARDS)  # ("forward", "dkv", "dq")
HEAD_DIM_ROWS = (64, 128, 256)  # the block table's rows: a head dim uses the first row at least its padded size

# Candidates (block_q, block_k, num_warps, num_stages) per head-dim row, for sequences longer than SHORT_LEN:
# the first sweep's losers dropped (benchmarks/NOTES-triton.md).
LONG_CANDIDATES: dict[int, dict[str, list[tuple[int, ...]]]] = {
    64: {"forward": [(64, 64, 4, 3), (128, 128, 4, 3), (64, 64, 4, 4), (64, 64, 8, 3), (64, 32, 4, 3), (128, 64, 4, 2)],
         "dkv": [(64, 64, 4, 3), (64, 64, 8, 3), (32, 64, 4, 4), (64, 128, 8, 3), (128, 64, 8, 3)],
         "dq": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 4, 3), (64, 64, 8, 3)]},
    128: {"forward": [(128, 128, 8, 3), (128, 128, 4, 3), (128, 64, 4, 3)],
          "dkv": [(32, 64, 4, 3), (32, 64, 4, 4), (32, 64, 8, 3), (64, 64, 8, 3), (32, 128, 8, 3), (16, 64, 4, 3),
                  (32, 32, 4, 3)],
          "dq": [(128, 128, 8, 2), (128, 64, 8, 3), (128, 128, 4, 2), (64, 128, 8, 2), (128, 32, 8, 3)]},
    256: {"forward": [(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3), (64, 64, 8, 3)],
          "dkv": [(32, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (16, 64, 8, 2), (32, 32, 4, 3), (32, 32, 8, 3),
                  (64, 32, 8, 2), (16, 32, 4, 3)],
          "dq": [(128, 32, 4, 3), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3), (128, 32, 8, 2),
                 (64, 64, 4, 2)]},
}  # fmt: skip

# Short sequences (max(Sq, Skv) <= SHORT_LEN): the long winners first, then smaller tiles, which give more
# programs per SM and skip more of a causal mask.
SHORT_CANDIDATES: dict[int, dict[str, list[tuple[int, ...]]]] = {
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
}  # fmt: skip


def _shape(b: int, s: int, h: int, d: int) -> BenchShape:
    return BenchShape(b, s, s, h, h, d, "sweep", f"D{d}")


# Long: the shapes the long rows were measured at; short: the FA3 grid's S512 and S1024 (hidden 2048).
SWEEP_SHAPES = (
    _shape(2, 8192, 16, 128), _shape(4, 4096, 16, 64), _shape(4, 4096, 8, 256),
    _shape(32, 512, 32, 64), _shape(32, 512, 16, 128), _shape(32, 512, 8, 256),
    _shape(16, 1024, 32, 64), _shape(16, 1024, 16, 128), _shape(16, 1024, 8, 256),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    dtype: str = "bfloat16"
    causals: tuple[bool, ...] = (False,)
    passes: tuple[str, ...] = PASSES
    warmup: int = 2
    rounds: int = 5
    calls: int | None = None  # None: sized so that a round lasts about target_round_s
    target_round_s: float = 0.05
    max_calls: int = 100
    budget_s: float | None = None  # start no new measurement after this many seconds
    seed: int = 0
    interpret: bool = False  # run the kernels in Pallas interpret mode (any device; slow)


def head_dim_row(head_dim: int) -> int:
    """The block table's head-dim row of a head dim (its padded size, rounded up to 64, 128 or 256)."""
    d = padded_head_dim(head_dim)
    for row in HEAD_DIM_ROWS:
        if d <= row:
            return row
    raise ValueError(f"head dim {head_dim} is above {HEAD_DIM_ROWS[-1]}: the Triton kernel does not serve it")


def length_range(shape: BenchShape) -> str:
    """``"short"`` where the block table's short-sequence rows apply (``max(Sq, Skv) <= SHORT_LEN``)."""
    return "short" if max(shape.q_len, shape.kv_len) <= SHORT_LEN else "long"


def parse_candidate(text: str) -> tuple[str, PassBlocks]:
    """``"PASS:BQ,BK[,WARPS[,STAGES]]"`` (e.g. ``"dkv:32,64,8,3"``) as ``(pass, PassBlocks)``."""
    name, sep, rest = text.partition(":")
    if not sep or name not in PASSES:
        raise ValueError(f"--candidate wants PASS:BQ,BK[,WARPS[,STAGES]] with PASS one of {PASSES}; got {text!r}")
    parts = [p.strip() for p in rest.split(",")]
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--candidate wants 2 to 4 positive integers after {name}:, got {text!r}")
    try:
        return name, PassBlocks(*(int(p) for p in parts))
    except ValueError as e:  # blocks that are not powers of 2 >= 16
        raise ValueError(f"--candidate {text}: {e}") from None


def _current(shape: BenchShape, causal: bool, dtype: str, pass_name: str) -> PassBlocks:
    itemsize = jnp.dtype(dtype).itemsize
    sizes = choose_block_sizes(shape.head_dim, shape.head_dim, shape.q_len, shape.kv_len, itemsize, causal=causal)
    return getattr(sizes, pass_name)


def candidates_for(
    shape: BenchShape, causal: bool, dtype: str, pass_name: str, custom: Sequence[PassBlocks] = ()
) -> tuple[list[PassBlocks], PassBlocks]:
    """``(candidates, current)``: ``custom`` or the default list of the shape's row and length range, with
    the table's current choice added where missing; duplicates dropped, order kept."""
    current = _current(shape, causal, dtype, pass_name)
    if custom:
        listed = list(custom)
    else:
        table = SHORT_CANDIDATES if length_range(shape) == "short" else LONG_CANDIDATES
        listed = [PassBlocks(*c) for c in table[head_dim_row(shape.head_dim)][pass_name]]
    return list(dict.fromkeys([*listed, current])), current


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def sweep_plan(shape: BenchShape, causal: bool, blocks: Iterable[PassBlocks], interpret: bool = False) -> Plan:
    """The kernels' plan for ``shape``, its sequences padded to a multiple of every block in ``blocks``."""
    blocks = list(blocks)
    return Plan(
        batch=shape.batch,
        q_len=shape.q_len,
        kv_len=shape.kv_len,
        q_len_pad=_round_up(shape.q_len, max(b.block_q for b in blocks)),
        kv_len_pad=_round_up(shape.kv_len, max(b.block_k for b in blocks)),
        num_q_heads=shape.num_q_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=padded_head_dim(shape.head_dim),
        v_head_dim=padded_head_dim(shape.head_dim),
        softmax_scale=shape.head_dim**-0.5,
        causal=causal,
        interpret=interpret,
    )


def _padded(x: jax.Array, seq: int, dim: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, seq - x.shape[1]), (0, 0), (0, dim - x.shape[3])))


def _operands(shape: BenchShape, plan: Plan, dtype: str, seed: int, forward: PassBlocks) -> tuple[jax.Array, ...]:
    """``(q, k, v, d_out, lse2, delta)``: random padded operands, the forward's lse as the backward reads it."""
    q, k, v, d_out = make_inputs(shape, dtype, 1, seed)[0]
    q, d_out = (_padded(x, plan.q_len_pad, plan.head_dim) for x in (q, d_out))
    k, v = (_padded(x, plan.kv_len_pad, plan.head_dim) for x in (k, v))
    out, lse2 = jax.jit(lambda q, k, v: forward_call(plan, forward, q, k, v, None, None, None))(q, k, v)
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    return q, k, v, d_out, recompute_lse(lse2), delta


def _pass_step(pass_name: str, plan: Plan, blocks: PassBlocks) -> Callable[..., Any]:
    """``(q, k, v, d_out, lse2, delta) -> the pass's outputs that must be finite``."""
    if pass_name == "forward":
        return lambda q, k, v, do, lse2, delta: forward_call(plan, blocks, q, k, v, None, None, None)[0]
    if pass_name == "dkv":
        return lambda q, k, v, do, lse2, delta: dkv_call(plan, blocks, q, k, v, None, None, do, lse2, delta)
    return lambda q, k, v, do, lse2, delta: dq_call(plan, blocks, q, k, v, None, None, do, lse2, delta)[0]


def _base_record(shape: BenchShape, causal: bool, dtype: str, pass_name: str, blocks: PassBlocks, current: bool):
    return {
        "label": shape.label,
        "shape": {
            "batch": shape.batch,
            "q_len": shape.q_len,
            "kv_len": shape.kv_len,
            "num_q_heads": shape.num_q_heads,
            "num_kv_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim,
        },
        "head_dim_row": head_dim_row(shape.head_dim),
        "range": length_range(shape),
        "causal": causal,
        "dtype": dtype,
        "pass": pass_name,
        "blocks": list(dataclasses.astuple(blocks)),
        "current": current,
        "flops": pass_flops(
            shape.batch, shape.num_q_heads, shape.q_len, shape.kv_len, shape.head_dim, causal=causal, pass_name=pass_name
        ),
        "status": "n/a",
        "reason": None,
    }


def _measure(record: dict[str, Any], step: Callable[..., Any], operands: tuple, config: SweepConfig) -> None:
    """Compiles and times one candidate, filling ``record`` in place (n/a with the reason on any failure)."""
    try:
        start = time.perf_counter()
        jitted = jax.jit(step)
        jitted.lower(*operands).compile()
        record["compile_s"] = round(time.perf_counter() - start, 3)
        timing = time_calls(
            jitted,
            [operands],
            warmup=config.warmup,
            rounds=config.rounds,
            calls=config.calls,
            target_round_s=config.target_round_s,
            max_calls=config.max_calls,
        )
        if not all_finite(jitted(*operands)):
            record["reason"] = "non-finite output on random inputs"
            return
    except Exception as e:  # a candidate that does not compile (shared memory, registers) is n/a, not fatal
        record["reason"] = failure_reason(e)
        return
    record.update(
        status="ok",
        median_ms=timing.median_s * 1e3,
        min_ms=timing.min_s * 1e3,
        max_ms=timing.max_s * 1e3,
        samples_ms=[s * 1e3 for s in timing.samples_s],
        rounds=timing.rounds,
        calls_per_round=timing.calls_per_round,
        tflops=tflops_per_s(record["flops"], timing.median_s),
    )


def run_sweep(
    shapes: Sequence[BenchShape],
    config: SweepConfig,
    custom: dict[str, Sequence[PassBlocks]] | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (shape, causal, pass, candidate), in that order; ``on_result`` sees each as it lands."""
    custom = custom or {}
    work = []
    for shape in shapes:
        for causal in config.causals:
            lists = {p: candidates_for(shape, causal, config.dtype, p, custom.get(p, ())) for p in config.passes}
            work.append((shape, causal, lists))
    total = sum(len(c) for _, _, lists in work for c, _ in lists.values())
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for shape, causal, lists in work:
        forward = _current(shape, causal, config.dtype, "forward")  # computes the lse the backward passes read
        plan = sweep_plan(shape, causal, [forward, *(b for c, _ in lists.values() for b in c)], config.interpret)
        operands: tuple | str | None = None
        for pass_name, (candidates, current) in lists.items():
            for blocks in candidates:
                record = _base_record(shape, causal, config.dtype, pass_name, blocks, blocks == current)
                if progress is not None:
                    progress(len(results), total, f"{shape.label}{' causal' if causal else ''} {pass_name} {record['blocks']}")
                if config.budget_s is not None and time.perf_counter() - started > config.budget_s:
                    record.update(status="skipped", reason=f"time budget of {config.budget_s:g} s spent")
                else:
                    if operands is None:
                        try:
                            operands = _operands(shape, plan, config.dtype, config.seed, forward)
                        except Exception as e:  # e.g. out of memory: every candidate of this shape is n/a
                            operands = failure_reason(e)
                    if isinstance(operands, str):
                        record["reason"] = f"could not create the operands: {operands}"
                    else:
                        _measure(record, _pass_step(pass_name, plan, blocks), operands, config)
                results.append(record)
                if on_result is not None:
                    on_result(record)
        del operands
    if progress is not None:
        progress(total, total, "done")
    return results
