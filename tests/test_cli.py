"""The ``ejkernel`` command line: ``info`` and ``check`` (quick cases only, to stay inside the CI budget)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ejkernel import check, cli, registry
from ejkernel.kernels.xla import spec as xla_spec
from ejkernel.kernels.xla.reference import reference_attention

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _off_by_a_thousandth(call):
    out, weights = reference_attention(call)
    return out * jnp.asarray(1.001, out.dtype), weights


def _wrong_sink_gradient(call):
    """Exact forward, but the sinks' gradient is 1.5 times too large."""
    aux = call.softmax_aux
    if aux is not None:
        call = dataclasses.replace(call, softmax_aux=aux + 0.5 * (aux - jax.lax.stop_gradient(aux)))
    return reference_attention(call)


@pytest.fixture
def register_wrong():
    """Registers a deliberately wrong CPU implementation under ``platform`` for one test."""
    keys = []

    def register(platform, wrong, **capabilities):
        def build(interpret):
            return wrong

        spec = registry.KernelSpec(
            name="attention",
            platform=platform,
            priority=900,
            devices=frozenset({"cpu"}),
            build=build,
            capabilities=dataclasses.replace(xla_spec.REFERENCE.capabilities, **capabilities),
            description="deliberately wrong",
        )
        registry.register_kernel(spec)
        keys.append(spec.key)

    yield register
    for key in keys:
        registry.unregister_kernel(key)


def test_info_lists_xla_as_runnable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-m", "ejkernel.cli", "info"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ejkernel on cpu:")
    header = lines[1].split()
    assert header[:5] == ["name", "platform", "variant", "priority", "devices"]
    rows = [line.split() for line in lines[2:]]
    xla = [r for r in rows if r[:3] == ["attention", "xla", "default"]]
    assert len(xla) == 1 and xla[0][5] == "yes", proc.stdout
    for r in rows:
        if r[1] in ("pallas_tpu", "triton"):  # registered Pallas kernels: interpret only on the CPU
            assert " ".join(r[5:7]) == "interpret only", r


def test_check_quick_passes(capsys):
    code = cli.main(["check", "--platform", "xla", "--dtype", "float32", "--quick"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == f"{len(check.QUICK_CASES)}/{len(check.QUICK_CASES)} passed"
    for name in check.QUICK_CASES:
        assert any(line.startswith("PASS     xla") and f" {name} " in line for line in lines), name


def test_check_fails_on_a_wrong_implementation(register_wrong, capsys):
    register_wrong("testwrong", _off_by_a_thousandth)
    code = cli.main(["check", "--platform", "testwrong", "--dtype", "float32", "--case", "plain"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.splitlines()[0].split()[:3] == ["FAIL", "testwrong", "plain"]
    assert "served by testwrong" in out
    assert out.splitlines()[-1] == "0/1 passed"


def test_check_catches_a_wrong_sink_gradient(register_wrong, capsys):
    """The sinks' gradient is measured against the size of its terms; a real error still fails."""
    register_wrong("testwrongsinks", _wrong_sink_gradient)
    code = cli.main(["check", "--platform", "testwrongsinks", "--case", "sinks", "--case", "shared_sinks+gqa"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    failures = [line for line in lines if line.startswith("FAIL")]
    assert len(failures) == 4, lines  # both cases, float32 and bfloat16
    assert all("(dsoftmax_aux)" in line for line in failures), failures


def test_check_compares_xla_with_an_independent_oracle(capsys):
    """The float32 XLA rows are measured against a float64 oracle: their error is small but never exactly 0."""
    code = cli.main(["check", "--platform", "xla", "--dtype", "float32", "--case", "plain"])
    line = capsys.readouterr().out.splitlines()[0]
    assert code == 0 and line.startswith("PASS")
    error = float(line.split("max err ")[1].split()[0])
    assert 0 < error < 1e-5, line


def test_check_reports_a_fallback_and_fails_a_named_platform(register_wrong, capsys):
    """A platform that cannot serve a case: the line says FALLBACK (not PASS), and naming it fails the check."""
    register_wrong("testnocausal", reference_attention, causal=False)
    code = cli.main(["check", "--platform", "testnocausal", "--dtype", "float32", "--case", "plain", "--case", "causal"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1, lines
    assert lines[0].split()[:3] == ["PASS", "testnocausal", "plain"]
    assert lines[1].split()[:3] == ["FALLBACK", "testnocausal", "causal"] and "served by xla" in lines[1]
    assert lines[-1].startswith("1/2 passed (1 served by another platform")


def test_check_rejects_an_unknown_platform_as_usage(capsys):
    assert cli.main(["check", "--platform", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert "unknown platform" in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_check_prints_each_line_as_it_finishes(monkeypatch, capsys):
    seen = []

    def results(**kwargs):
        for case in ("plain", "causal"):
            seen.append(capsys.readouterr().out)  # what was printed before this result was computed
            yield check.CheckResult("xla", case, "float32", "xla", {"out": 1e-7}, 2e-5)

    monkeypatch.setattr(check, "iter_check", results)
    assert cli.main(["check", "--platform", "xla"]) == 0
    assert seen[0] == "" and seen[1].startswith("PASS") and " plain " in seen[1]


def test_check_compiles_ahead_without_changing_results_or_order():
    """Rows compiled by a pool of threads come back in order, with the errors of a one-thread run."""
    cases = check.select_cases(["plain", "causal"])
    one = check.run_check(platforms=["xla"], cases=cases, dtype="float32", workers=1)
    pooled = check.run_check(platforms=["xla"], cases=cases, dtype="float32", workers=3)
    assert [(r.case, r.errors) for r in pooled] == [(r.case, r.errors) for r in one]
    assert [r.case for r in one] == ["plain", "causal"]


def test_check_rejects_no_workers_as_usage(capsys):
    assert cli.main(["check", "--platform", "xla", "--workers", "0"]) == 2
    assert "workers must be at least 1" in capsys.readouterr().err


def test_check_rejects_an_unknown_case(capsys):
    assert cli.main(["check", "--case", "no-such-case"]) == 2
    assert "unknown check case" in capsys.readouterr().err


def test_select_cases():
    assert [c.name for c in check.select_cases(quick=True)] == list(check.QUICK_CASES)
    assert [c.name for c in check.select_cases(["decode", "plain"])] == ["plain", "decode"]
    assert check.select_cases() == check.CASES


def test_check_of_every_platform_does_not_run_what_a_platform_does_not_serve(register_wrong, capsys):
    """Without --platform, a case a platform does not serve is N/A, not run (its fallback's rows check it)."""
    register_wrong("testnocausal", reference_attention, causal=False)
    code = cli.main(["check", "--dtype", "float32", "--case", "causal"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, lines
    row = next(line for line in lines if " testnocausal " in line)
    assert row.startswith("N/A") and "causal unsupported" in row and "xla's rows check it" in row, row
    assert "1 not served by their platform, not run" in lines[-1]


# --- help ----------------------------------------------------------------------------------------

RST_MARKUP = re.compile(r"`|:(func|class|meth|doc|mod|ref):|^\s*\.\. \w+::", re.M)  # literals, roles, directives
BENCH_COMMANDS = ("compare", "render", "sweep", "parity", "packing", "table")


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [(), ("info",), ("check",), ("bench",), *(("bench", c) for c in BENCH_COMMANDS)])
def test_help_is_plain_text(capsys, argv):
    text = _help(capsys, *argv)
    assert text.startswith(f"usage: {' '.join(('ejkernel', *argv))}"), text[:80]
    assert not RST_MARKUP.search(text), text


def test_help_lists_every_command(capsys):
    top = _help(capsys)
    for command in ("info", "check", "bench", *(f"ejkernel bench {c}" for c in BENCH_COMMANDS)):
        assert command in top, command
    bench = _help(capsys, "bench")
    assert "ejkernel bench {compare,render,sweep,parity,packing,table}" in bench
    for command in BENCH_COMMANDS:
        assert f"ejkernel bench {command} " in bench, command
