"""``ejkernel bench sweep`` and ``ejkernel bench parity`` (interpret mode on tiny shapes), the scripts that
call them, and the curated result files the docs cite."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import subprocess

import jax
import pytest

from ejkernel.bench import flops, parity, sweep, sweep_report
from ejkernel.bench.cli import run
from ejkernel.bench.grids import BenchShape
from ejkernel.check import CheckCase
from ejkernel.kernels.pallas_triton.blocks import PassBlocks, choose_block_sizes

ROOT = pathlib.Path(__file__).resolve().parent.parent
ON_GPU = jax.devices()[0].platform == "gpu"

# --- sweep: candidates, plan, FLOPs --------------------------------------------------------------


def test_pass_flops_count_each_pass_matmuls():
    forward = flops.attention_flops(2, 4, 64, 96, 32, causal=True, mode="fwd")
    for name, factor in (("forward", 1.0), ("dkv", 2.0), ("dq", 1.5)):
        assert flops.pass_flops(2, 4, 64, 96, 32, causal=True, pass_name=name) == forward * factor
    with pytest.raises(ValueError, match="pass"):
        flops.pass_flops(1, 1, 1, 1, 1, causal=False, pass_name="delta")


def test_parse_candidate():
    assert sweep.parse_candidate("dkv:32,64,8,3") == ("dkv", PassBlocks(32, 64, 8, 3))
    assert sweep.parse_candidate("forward:64,32") == ("forward", PassBlocks(64, 32))
    for bad in ("dkv", "bwd:32,64", "dq:32", "dq:32,64,4,3,1", "dq:32,x", "dq:24,64"):
        with pytest.raises(ValueError, match="--candidate"):
            sweep.parse_candidate(bad)


def test_candidates_follow_the_row_and_length_range_and_include_the_current_choice():
    long = BenchShape(2, 8192, 8192, 16, 16, 128)
    short = BenchShape(32, 512, 512, 8, 8, 96)  # D96 pads to the D128 row
    assert (sweep.head_dim_row(96), sweep.length_range(long), sweep.length_range(short)) == (128, "long", "short")
    listed, current = sweep.candidates_for(long, False, "bfloat16", "dkv")
    assert current == choose_block_sizes(128, 128, 8192, 8192, 2).dkv and current in listed
    assert listed[: len(sweep.LONG_CANDIDATES[128]["dkv"])] == [PassBlocks(*c) for c in sweep.LONG_CANDIDATES[128]["dkv"]]
    listed, current = sweep.candidates_for(short, True, "bfloat16", "forward")
    assert listed[0] == PassBlocks(*sweep.SHORT_CANDIDATES[128]["forward"][0])
    assert current == choose_block_sizes(96, 96, 512, 512, 2, causal=True).forward and len(set(listed)) == len(listed)
    listed, current = sweep.candidates_for(short, False, "float32", "dq", [PassBlocks(16, 16)])
    assert listed == [PassBlocks(16, 16), current]
    with pytest.raises(ValueError, match="above 256"):
        sweep.head_dim_row(320)


def test_sweep_plan_pads_to_every_block():
    shape = BenchShape(1, 100, 300, 4, 2, 96)
    p = sweep.sweep_plan(shape, True, [PassBlocks(64, 32), PassBlocks(16, 128)])
    assert (p.q_len, p.kv_len, p.q_len_pad, p.kv_len_pad) == (100, 300, 128, 384)
    assert (p.head_dim, p.num_q_heads, p.num_kv_heads, p.causal) == (128, 4, 2, True)
    assert p.softmax_scale == pytest.approx(96**-0.5)


# --- sweep: winners and the rows for blocks.py ---------------------------------------------------


def _rec(label, length, causal, pass_name, blocks, ms, current=False, row=128, dtype="bfloat16"):
    return {
        "label": label, "head_dim_row": row, "range": length, "causal": causal, "dtype": dtype,
        "pass": pass_name, "blocks": list(blocks), "current": current, "status": "ok", "median_ms": ms,
        "min_ms": ms, "max_ms": ms, "tflops": 1.0,
    }  # fmt: skip


def test_winners_score_by_geometric_mean_over_the_bucket():
    a, b = (64, 64, 4, 3), (32, 64, 4, 3)
    results = [
        _rec("S512", "short", False, "dkv", a, 1.0), _rec("S512", "short", False, "dkv", b, 1.2),
        _rec("S1024", "short", False, "dkv", a, 2.0, current=True), _rec("S1024", "short", False, "dkv", b, 1.0),
        _rec("S1024", "short", False, "dkv", (16, 16, 4, 2), 0.1),  # ran on one shape only: does not compete
    ]  # fmt: skip
    (key, w), = sweep_report.winners(results).items()
    assert key == (128, 2, "short", False, "dkv")
    assert w["blocks"] == b and w["current"] == a  # sqrt(1.2 * 1) < sqrt(1 * 2)
    assert w["scores"][a] == pytest.approx((2.0**0.5) / (1.2**0.5))


def test_paste_rows():
    long = [_rec("S8192", "long", False, p, b, 1.0) for p, b in
            (("forward", (128, 128, 8, 3)), ("dkv", (32, 64, 4, 3)), ("dq", (128, 128, 8, 2)))]  # fmt: skip
    short = [
        _rec("S512", "short", True, "forward", (128, 128, 8, 3), 1.2), _rec("S512", "short", True, "forward", (64, 64, 4, 3), 1.0),
        _rec("S512", "short", True, "dq", (128, 128, 8, 2), 1.02), _rec("S512", "short", True, "dq", (64, 64, 4, 2), 1.0),
    ]  # fmt: skip
    text = sweep_report.paste_rows(long + short, threshold=0.03)
    lines = text.splitlines()
    assert lines[0] == "(128, 2): BlockSizes(PassBlocks(128, 128, 8, 3), PassBlocks(32, 64, 4, 3), PassBlocks(128, 128, 8, 2)),"
    assert lines[1] == "(128, True): {" and lines[-1] == "},"
    assert lines[2].startswith('    "forward": PassBlocks(64, 64, 4, 3),  # long row (128, 128, 8, 3): 1.200x')
    assert "dq" not in text.split("(128, True)")[1]  # 2 % faster than the long row: within the threshold
    causal_long = sweep_report.paste_rows([{**r, "causal": True} for r in long])
    assert causal_long.startswith("# causal")
    assert sweep_report.paste_rows(long[:1]) == "# D128 2-byte long: no row (dkv, dq not swept)"


# --- sweep end to end, in interpret mode -----------------------------------------------------------


def test_sweep_runs_in_interpret_mode(tmp_path, capsys):
    current = choose_block_sizes(16, 16, 32, 32, 2)  # what the table gives B1 S32 H2/1 D16 today
    same = [f"{p}:{','.join(str(b) for b in dataclasses.astuple(getattr(current, p)))}" for p in ("dkv", "dq")]
    code = run([
        "sweep", "--interpret", "--shape", "1,32,32,2,1,16", "--candidate", "forward:16,16", "--candidate", same[0],
        "--candidate", same[1], "--rounds", "1", "--warmup", "1", "--calls", "1", "--out", str(tmp_path),
        "--name", "tiny", "--quiet",
    ])  # fmt: skip
    assert code == 0
    doc = json.loads((tmp_path / "tiny.json").read_text())
    assert doc["schema"] == sweep_report.SCHEMA and doc["complete"] and doc["config"]["interpret"]
    assert doc["environment"]["command"].startswith("ejkernel bench sweep --interpret")
    records = doc["results"]
    assert [r["pass"] for r in records] == ["forward", "forward", "dkv", "dq"]  # a candidate equal to current: once
    assert [r["current"] for r in records] == [False, True, True, True]
    assert records[0]["blocks"] == [16, 16, 4, 2] and records[1]["blocks"] == list(dataclasses.astuple(current.forward))
    for r in records:
        assert r["status"] == "ok", r
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["rounds"] == 1
        assert r["flops"] == flops.pass_flops(1, 2, 32, 32, 16, causal=False, pass_name=r["pass"])
    text = (tmp_path / "tiny.txt").read_text()
    assert "interpret mode" in text and "rows for ejkernel/kernels/pallas_triton/blocks.py" in text
    assert "D64 2-byte short causal=no  forward" in text  # D16 is in the D64 row; S32 is short
    assert text in capsys.readouterr().out
    assert run(["render", str(tmp_path / "tiny.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "tiny.txt").read_text() == text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--interpret", "--candidate", "dkv:24,16"], "power of 2"),
        (["--interpret", "--candidate", "dq:16,16", "--pass", "forward"], "--pass leaves out"),
        (["--interpret", "--shape", "1,8,8,1,1,512"], "above 256"),
        (["--interpret", "--shape", "1,8,8"], "six positive integers"),
        (["--interpret", "--min-seq", "100000"], "no shapes left"),
        (["--interpret", "--pass", "delta"], "invalid choice"),
    ],
)
def test_sweep_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run(["sweep", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(ON_GPU, reason="on a GPU the sweep runs without --interpret")
def test_sweep_needs_a_gpu_or_interpret(capsys):
    with pytest.raises(SystemExit) as e:
        run(["sweep", "--shape", "1,32,32,2,1,16"])
    assert e.value.code == 2 and "--interpret" in capsys.readouterr().err


# --- parity ----------------------------------------------------------------------------------------


def test_parity_cases_and_dtypes():
    names = [c.name for c in parity.PARITY_CASES]
    assert len(names) == len(set(names)) == 27 and set(parity.FLOAT16_CASES) <= set(names)
    assert [c.name for c in parity.select_parity_cases(["all", "d96"])] == ["d96", "all"]
    assert parity.select_parity_cases() == parity.PARITY_CASES
    with pytest.raises(ValueError, match="unknown parity case"):
        parity.select_parity_cases(["plain"])  # a name of ejkernel check's cases, not of these
    plain = parity.select_parity_cases(["plain-d128"])[0]
    assert parity.dtypes_for(plain) == ["bfloat16", "float32", "float16"]
    assert parity.dtypes_for(parity.PARITY_CASES[-1], ["float16", "float32"]) == ["float32"]
    assert [parity.served_platform(s) for s in ("triton (interpret)", "xla:chunked", "triton")] == ["triton", "xla", "triton"]


def test_parity_runs_one_case_in_interpret_mode(tmp_path, capsys):
    code = run(["parity", "--interpret", "--case", "bias-1,kv", "--dtype", "float32", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    assert lines[0].startswith("PASS  bias-1,kv") and "served by triton (interpret)" in lines[0]
    assert re.search(r"worst \S+ \(d?\w+\) tol 2e-05", lines[0]) and lines[-1] == "1/1 passed"
    doc = json.loads((tmp_path / "parity_triton.json").read_text())
    assert doc["complete"] and doc["config"]["platform"] == "triton"
    (row,) = doc["results"]
    assert row["passed"] and set(row["errors"]) == {"out", "dquery", "dkey", "dvalue", "dbias"}


def test_a_call_served_by_another_platform_fails_parity():
    """D512 is beyond the Triton kernel: the registry serves it with XLA, exactly, and parity still fails."""
    case = CheckCase("d512", batch=1, q_len=16, kv_len=16, num_q_heads=1, num_kv_heads=1, head_dim=512)
    (row,) = parity.run_parity("triton", [case], ["float32"], interpret=True)
    assert max(row["errors"].values()) < 1e-5 and parity.served_platform(row["served_by"]) == "xla"
    assert not row["passed"] and "triton did not serve the call" in parity.format_row(row, "triton")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--case", "no-such-case", "--interpret"], "unknown parity case"),
        (["--platform", "nowhere"], "no attention implementation is registered"),
        (["--dtype", "float64"], "invalid choice"),
    ],
)
def test_parity_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run(["parity", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(ON_GPU, reason="on a GPU the Triton kernel runs without --interpret")
def test_parity_needs_the_platform_or_interpret(capsys):
    with pytest.raises(SystemExit) as e:
        run(["parity", "--case", "decode"])
    assert e.value.code == 2 and "--interpret runs it here" in capsys.readouterr().err


# --- the scripts -----------------------------------------------------------------------------------



def test_run_bench_rejects_an_unknown_phase():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_bench.sh"), "no-such-phase"], capture_output=True, text=True)
    assert proc.returncode == 2 and "parity" in proc.stderr and "sweep" in proc.stderr


# --- curated result files --------------------------------------------------------------------------

RESULTS = ROOT / "benchmarks" / "results"


def test_result_files_are_curated_tables_in_device_folders():
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert files
    for p in files:
        rel = p.relative_to(RESULTS)
        assert len(rel.parts) == 2, f"{rel}: results live in benchmarks/results/<device>/"
        assert not re.search(r"call\d|_log\.txt$", rel.name), f"{rel}: named after a run, or a run log"


def test_every_cited_result_file_exists():
    cited = set()
    pages = [ROOT / "docs" / f"{name}.rst" for name in ("performance", "triton", "chunked")]
    for page in [*pages, ROOT / "benchmarks" / "NOTES-triton.md"]:
        text = page.read_text()
        assert not re.search(r"(?<!--)\bcalls? ?\d", text), f"{page.name} names a run"  # not "--calls 10"
        cited |= set(re.findall(r"results/((?:cpu|h100)/[\w.]+)", text))
    assert len(cited) > 10
    for name in cited:  # "h100/fa3_d256.*" and "h100/headline.{json,txt}" are captured as "h100/<stem>."
        assert (RESULTS / name).is_file() or (name.endswith(".") and list(RESULTS.glob(f"{name}*"))), name
