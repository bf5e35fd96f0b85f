"""``ejkernel bench``: the harness's arithmetic, its n/a handling, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.bench import compare, flops, grids, implementations, runner, timing
from ejkernel.bench.cli import build_parser, run, select_shapes
from ejkernel.bench.dispatch import dispatch_report, lowered_text, normalize_hlo, same_program
from ejkernel.bench.progress import ProgressBar

# --- FLOP convention -------------------------------------------------------------------------------


def test_flops_convention():
    base = 4 * 2 * 3 * 5 * 7 * 11  # 4 B H Sq Skv D
    assert flops.attention_flops(2, 3, 5, 7, 11, causal=False, mode="fwd") == base
    assert flops.attention_flops(2, 3, 8, 8, 11, causal=True, mode="fwd") == 4 * 2 * 3 * 64 * 11 * 0.5
    assert flops.attention_flops(2, 3, 5, 7, 11, causal=False, mode="fwd+bwd") == base * 3.5
    assert flops.attention_flops(1, 16, 8192, 8192, 128, causal=True, mode="fwd+bwd") == pytest.approx(
        4 * 16 * 8192**2 * 128 * 0.5 * 3.5
    )
    with pytest.raises(ValueError, match="mode"):
        flops.attention_flops(1, 1, 1, 1, 1, causal=False, mode="bwd")


def test_causal_fraction_is_bottom_right():
    assert flops.causal_fraction(512, 512) == 0.5
    assert flops.causal_fraction(1, 4096) == 1.0  # a decode step sees the whole cache
    assert flops.causal_fraction(2, 4) == (3 + 4) / 8  # rows see keys 0..2 and 0..3
    assert flops.causal_fraction(4, 2) == (0 + 0 + 1 + 2) / 8  # the first rows see nothing


def test_tflops_and_peaks():
    assert flops.tflops_per_s(2e12, 0.5) == 4.0
    h100 = flops.device_peak("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100.nominal["bfloat16"] == pytest.approx(989.4) and h100.measured_matmul_bf16 == 790
    assert flops.device_peak("cpu") is None


# --- grids ---------------------------------------------------------------------------------------


def test_fa3_grid_geometry():
    shapes = grids.build_grid("fa3")
    assert len(shapes) == 3 * 6
    for s in shapes:
        assert s.batch * s.q_len == 16384 and s.num_q_heads * s.head_dim == 2048 and s.q_len == s.kv_len
    assert {s.head_dim for s in shapes} == {64, 128, 256}
    assert {s.q_len for s in shapes} == {512, 1024, 2048, 4096, 8192, 16384}


def test_other_grids():
    decode = grids.build_grid("decode")
    assert (
        {s.q_len for s in decode} == {1}
        and min(s.kv_len for s in decode) == 1024
        and max(s.kv_len for s in decode) == 131072
    )
    assert {s.num_q_heads // s.num_kv_heads for s in grids.build_grid("gqa")} == {1, 4, 8}
    small = grids.build_grid("small")
    assert max(s.q_len for s in small) <= 512
    with pytest.raises(ValueError, match="unknown grid"):
        grids.build_grid("huge")


def test_filters_and_custom_shape():
    kept = grids.filter_shapes(grids.build_grid("fa3"), max_seq=1024, head_dims=[128])
    assert [(s.q_len, s.head_dim) for s in kept] == [(512, 128), (1024, 128)]
    s = grids.parse_shape("2,1,4096,32,8,128")
    assert (s.batch, s.q_len, s.kv_len, s.num_q_heads, s.num_kv_heads, s.head_dim) == (2, 1, 4096, 32, 8, 128)
    for bad in ("1,2,3", "1,2,3,4,5,x", "1,8,8,6,4,64"):  # too few, not a number, 6 % 4 != 0
        with pytest.raises(ValueError):
            grids.parse_shape(bad)


def test_configurations_dedupe_decode():
    cfg = runner.BenchConfig()
    decode = grids.BenchShape(1, 1, 64, 4, 2, 8, "decode", forward_only=True)
    square = grids.BenchShape(1, 16, 16, 2, 2, 8)
    triples = runner.configurations([decode, square], cfg)
    assert [(c, m) for s, c, m in triples if s is decode] == [(False, "fwd")]
    assert len([t for t in triples if t[0] is square]) == 4


# --- timing arithmetic ---------------------------------------------------------------------------


def test_summarize_and_sizing():
    assert timing.summarize([3.0, 1.0, 2.0, 10.0]) == (2.5, 1.0, 10.0)
    assert timing.summarize([4.0]) == (4.0, 4.0, 4.0)
    assert timing.calls_per_round(0.001, 0.05, 100) == 50
    assert timing.calls_per_round(1.0, 0.05, 100) == 1
    assert timing.calls_per_round(1e-9, 0.05, 100) == 100
    assert timing.buffer_count(100 << 20, 256 << 20, 8) == 3
    assert timing.buffer_count(1 << 30, 256 << 20, 8) == 1
    assert timing.buffer_count(1 << 10, 256 << 20, 8) == 8


def test_time_calls_rotates_and_syncs_once_per_round():
    """A fake clock that advances 1 s per call: every sample is exactly 1 s; inputs rotate; one sync per round."""
    state = {"calls": 0, "syncs": 0, "used": []}

    def fn(x):
        state["calls"] += 1
        state["used"].append(x)
        return x

    def sync(tree):
        state["syncs"] += 1
        return tree

    t = timing.time_calls(
        fn, [(0,), (1,), (2,)], warmup=2, rounds=4, calls=5, clock=lambda: float(state["calls"]), sync=sync
    )
    assert t.samples_s == (1.0,) * 4 and (t.median_s, t.min_s, t.max_s) == (1.0, 1.0, 1.0)
    assert (t.rounds, t.calls_per_round, t.buffers) == (4, 5, 3)
    assert state["syncs"] == 2 + 4  # first call, warm-up, then one per round
    timed = state["used"][3:]
    assert timed[:6] == [0, 1, 2, 0, 1, 2]


# --- comparison ----------------------------------------------------------------------------------


def _record(median, low, high, impl="ejkernel:xla", status="ok"):
    r = {
        "impl": impl, "grid": "small", "label": "B1 S64 H4 D64", "causal": False, "mode": "fwd", "dtype": "bfloat16",
        "shape": {"batch": 1, "q_len": 64, "kv_len": 64, "num_q_heads": 4, "num_kv_heads": 4, "head_dim": 64},
        "status": status,
    }  # fmt: skip
    if status == "ok":
        r.update(median_ms=median, min_ms=low, max_ms=high)
    return r


def test_compare_flags_only_beyond_noise():
    base = _record(1.0, 0.9, 1.1)
    assert compare.classify(base, _record(1.05, 1.0, 1.2)) == "noise"  # ranges overlap
    assert compare.classify(base, _record(1.3, 1.2, 1.4)) == "regression"
    assert compare.classify(base, _record(0.7, 0.6, 0.8)) == "improvement"
    assert compare.classify(base, _record(1.15, 1.12, 1.18), threshold=0.2) == "noise"  # disjoint but small
    rows = compare.compare_results(
        [base, _record(2.0, 1.9, 2.1, impl="jax.nn:xla"), _record(1, 1, 1, impl="gone"), _record(1, 1, 1, impl="late")],
        [
            _record(1.3, 1.2, 1.4),
            _record(0, 0, 0, impl="jax.nn:xla", status="n/a"),
            _record(1, 1, 1, impl="new"),
            _record(0, 0, 0, impl="late", status="skipped"),
        ],
    )
    verdicts = {r["impl"]: r["verdict"] for r in rows}
    assert verdicts == {
        "ejkernel:xla": "regression",
        "jax.nn:xla": "broken",
        "new": "only in new",
        "gone": "only in base",
        "late": "not measured (skipped)",
    }
    assert compare.has_regressions(rows)
    assert "REGRESSION" in compare.format_comparison(rows)
    assert not compare.has_regressions(compare.compare_results([base], [_record(1.0, 0.95, 1.05)]))


# --- program identity and n/a handling -----------------------------------------------------------


def _qkv(shape=(1, 16, 2, 8), dtype=jnp.bfloat16):
    keys = jax.random.split(jax.random.key(1), 4)
    return [jax.random.normal(k, shape, dtype) for k in keys]


def test_normalize_hlo_ignores_names_but_not_programs():
    @jax.jit
    def inner_a(x):
        return jnp.sin(x) * 2

    @jax.jit
    def inner_b(x):
        return jnp.sin(x) * 2

    def outer_a(x):
        return inner_a(x) + 1

    def outer_b(y):
        return inner_b(y) + 1

    x = jnp.ones((4,), jnp.float32)
    a, b = jax.jit(outer_a).lower(x).as_text(), jax.jit(outer_b).lower(x).as_text()
    assert a != b  # function names differ...
    assert same_program(outer_a, outer_b, x) == (True, "")  # ...the program does not
    same, diff = same_program(outer_a, lambda x: inner_a(x) + 2, x)
    assert not same and diff
    assert "loc(" not in normalize_hlo(jax.jit(outer_a).lower(x).as_text(debug_info=True))


def test_dispatch_report_small():
    report = dispatch_report(seq_len=16, num_heads=2, head_dim=8, eager_rounds=2, eager_calls=2)
    assert report["all_same_program"], [c["diff"] for c in report["programs"]]
    assert len(report["programs"]) == 4
    eager = report["eager"]
    assert eager["dispatched_us"] > 0 and eager["direct_us"] > 0 and eager["decision_us"] > 0


def test_dispatched_triton_kernel_lowers_to_the_same_cuda_program():
    """On the GPU, dispatch reaches the Pallas-Triton kernel; lowered for CUDA here, its program (kernel
    IR included) must not depend on the call path: the bench's check would report a false difference."""
    from ejkernel.kernels.pallas_triton.interface import flash_attention
    from ejkernel.kernels.pallas_triton.spec import SPEC
    from ejkernel.ops.attention.algorithm import ATTENTION
    from ejkernel.registry import Kernel

    kernel = Kernel(ATTENTION, "triton", [SPEC], [], strict=True, interpret=False)  # as get_kernel builds it on a GPU
    impl = flash_attention
    s = jax.ShapeDtypeStruct((1, 64, 2, 32), jnp.bfloat16)
    dispatched = runner.build_step(lambda q, k, v: kernel(q, k, v, causal=True)[0], "fwd+bwd")
    direct = runner.build_step(lambda q, k, v: impl(q, k, v, causal=True)[0], "fwd+bwd")
    assert "triton" in lowered_text(direct, (s, s, s, s), ["cuda"])
    assert same_program(dispatched, direct, s, s, s, s, platforms=["cuda"]) == (True, "")
    other = runner.build_step(lambda q, k, v: impl(q, k, v, causal=False)[0], "fwd+bwd")
    assert not same_program(dispatched, other, s, s, s, s, platforms=["cuda"])[0]


def test_baselines_compute_what_ejkernel_computes():
    """The timed functions agree (bf16 tolerance), decode causal included: the comparison is fair."""
    cands = {c.name: c for c in implementations.all_candidates(["ejkernel:xla", "jax.nn:xla"])[0]}
    for shape, causal in ((grids.BenchShape(1, 16, 16, 4, 2, 8), True), (grids.BenchShape(1, 1, 24, 4, 2, 8), True)):
        q, k, v, _ = runner.make_inputs(shape, "bfloat16", 1)[0]
        ours = cands["ejkernel:xla"].make(shape, causal, "bfloat16")(q, k, v).astype(jnp.float32)
        theirs = cands["jax.nn:xla"].make(shape, causal, "bfloat16")(q, k, v).astype(jnp.float32)
        # Both run in bfloat16 (eps 7.8e-3) with different operation orders: a few bf16 ulps apart.
        np.testing.assert_allclose(ours, theirs, atol=2e-2, rtol=2e-2)
    with pytest.raises(implementations.Unsupported, match="top-left"):
        cands["jax.nn:xla"].make(grids.BenchShape(1, 8, 16, 2, 2, 8), True, "bfloat16")


def test_failures_become_na_records():
    def broken(shape, causal, dtype):
        def forward(q, k, v):
            raise ValueError("kernel exploded\nsecond line")

        return forward

    shape = grids.BenchShape(1, 8, 8, 2, 2, 8)
    cands = [
        implementations.Candidate("broken", "baseline", broken),
        implementations.Candidate("absent", "baseline", broken, unavailable="not on this machine"),
        implementations.Candidate("nan", "baseline", lambda shape, causal, dtype: lambda q, k, v: q / 0.0 * 0.0),
    ]
    cfg = runner.BenchConfig(rounds=1, warmup=1, calls=1, causals=(False,), modes=("fwd",))
    records = runner.run_benchmarks([shape], cands, cfg)
    assert [r["status"] for r in records] == ["n/a", "n/a", "n/a"]
    assert records[0]["reason"] == "ValueError: kernel exploded" and records[1]["reason"] == "not on this machine"
    assert records[2]["reason"] == "non-finite output on random inputs"
    over = runner.run_benchmarks([shape], cands, runner.BenchConfig(budget_s=-1.0, causals=(False,), modes=("fwd",)))
    assert {r["status"] for r in over} == {"skipped"}


def test_progress_bar_writes_lines_off_a_terminal():
    import io

    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    bar(3, 10, "step")
    bar(10, 10, "done")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[###.......] 3/10") and lines[0].endswith("step")
    assert lines[1].startswith("[##########] 10/10")


def test_cli_shape_selection():
    args = build_parser().parse_args(
        ["--grid", "fa3", "--max-seq", "1024", "--head-dim", "256", "--shape", "1,1,64,4,1,32"]
    )
    shapes = select_shapes(args)
    assert [(s.grid, s.q_len, s.head_dim) for s in shapes] == [("fa3", 512, 256), ("fa3", 1024, 256), ("custom", 1, 32)]
    assert {s.grid for s in select_shapes(build_parser().parse_args([]))} == {"small"}
    with pytest.raises(SystemExit):
        run(["--grid", "fa3", "--max-seq", "16"])  # nothing left: a usage error, not an empty run


# --- end to end ----------------------------------------------------------------------------------


def test_end_to_end_one_shape_one_round(tmp_path, capsys):
    code = run([
        "--shape", "1,32,32,2,2,16", "--rounds", "1", "--warmup", "1", "--calls", "1", "--causal", "yes",
        "--impl", "ejkernel:xla", "--impl", "jax.nn", "--out", str(tmp_path), "--name", "tiny", "--no-dispatch", "--quiet",
    ])  # fmt: skip
    assert code == 0
    doc = json.loads((tmp_path / "tiny.json").read_text())
    env = doc["environment"]
    assert doc["complete"] and env["jax"] == jax.__version__ and env["device_kind"] and env["date"]
    assert env["command"].startswith("ejkernel bench --shape 1,32,32,2,2,16")
    by_impl = {(r["impl"], r["mode"]): r for r in doc["results"]}
    for mode in ("fwd", "fwd+bwd"):
        ok = by_impl[("ejkernel:xla", mode)]
        assert ok["status"] == "ok" and ok["rounds"] == 1 and ok["calls_per_round"] == 1
        assert ok["min_ms"] <= ok["median_ms"] <= ok["max_ms"]
        expected = flops.attention_flops(1, 2, 32, 32, 16, causal=True, mode=mode)
        assert ok["flops"] == expected and math.isclose(ok["tflops"], expected / (ok["median_ms"] * 1e-3) / 1e12)
        assert ok["peak_memory_bytes"] and ok["peak_memory_bytes"] > 0
        assert by_impl[("jax.nn:xla", mode)]["status"] == "ok"
        cudnn = by_impl[("jax.nn:cudnn", mode)]
        if jax.devices()[0].platform == "cpu":
            assert cudnn["status"] == "n/a" and "NVIDIA" in cudnn["reason"]
    table = (tmp_path / "tiny.txt").read_text()
    assert "ejkernel:xla" in table and "jax.nn:cudnn" in table
    captured = capsys.readouterr()
    assert table in captured.out
    try:
        import matplotlib  # noqa: F401

        assert (tmp_path / "tiny.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in captured.err
    path = str(tmp_path / "tiny.json")
    assert run(["compare", path, path]) == 0
    assert "no change beyond noise" in capsys.readouterr().out
    assert run(["render", path, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "tiny.txt").read_text() == table


_TINY_PACKING = ["--tokens", "64", "--docs", "4", "--heads", "2", "--head-dim", "16", "--cache", "128",
                 "--decode-batch", "2", "--decode-heads", "4", "--decode-kv-heads", "1"]


def test_packing_comparisons_compute_the_same_attention():
    """Each comparison is fair: the packed row equals the batch of its documents and the dense-mask call, the
    half-full cache's kv_lengths equal its mask (the full cache is the reference for the time only)."""
    from ejkernel.bench import packing
    from ejkernel.kernels.xla.reference import attention

    c = packing.PackingConfig(64, 4, 2, 16, 128, 2, 4, 1, "float32")
    outs = {}
    for call in packing.packing_calls(c):
        q, k, v, extras = packing._inputs(call, "float32", 0)
        if call.variant == "batch":  # the same documents as the packed row's, one per batch row
            q0, k0, v0, _ = packing._inputs(packing.packing_calls(c, ("packed",))[0], "float32", 0)
            q, k, v = (x.reshape(call.q_shape) for x in (q0, k0, v0))
        with jax.default_matmul_precision("highest"):
            run = jax.jit(lambda q, k, v, extras, causal=call.causal: attention(q, k, v, causal=causal, dtype="float32", **packing.packing_arguments(extras))[0])
            outs[call.case, call.variant] = np.asarray(run(q, k, v, extras))
    np.testing.assert_allclose(outs["packed", "segment_ids"].reshape(outs["packed", "batch"].shape),
                               outs["packed", "batch"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["packed", "segment_ids"], outs["packed", "dense_mask"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["kv_lengths", "half_cache"], outs["kv_lengths", "dense_mask"], rtol=1e-5, atol=1e-6)


def test_packing_bench_end_to_end(tmp_path, capsys):
    code = run(["packing", *_TINY_PACKING, "--rounds", "1", "--warmup", "1", "--calls", "1", "--platform", "xla",
                "--out", str(tmp_path), "--name", "p"])
    assert code == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert [(r["case"], r["variant"]) for r in doc["results"]] == [
        ("packed", "segment_ids"), ("packed", "batch"), ("packed", "dense_mask"),
        ("kv_lengths", "half_cache"), ("kv_lengths", "full_cache"), ("kv_lengths", "dense_mask"),
    ]
    assert {q["ratio"]: q["target"] for q in doc["ratios"]} == {
        "packed/batch": 1.15, "packed dense_mask/segment_ids": None, "half_cache/full_cache": 0.6,
        "kv_lengths dense_mask/half_cache": None,
    }
    assert "packed/batch:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["packing", "--tokens", "10", "--docs", "3"])  # not a whole number of documents: a usage error
