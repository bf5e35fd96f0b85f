"""The ``ejkernel`` command line: ``info`` and ``check`` (quick cases only, to stay inside the CI budget)."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from ejkernel import check, cli, registry
from ejkernel.kernels._xla.attention._interface import attention as reference
from ejkernel.ops.attention.features import AttentionCapabilities

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def wrong_kernel():
    """A CPU implementation whose output is off by 0.1%: far beyond the float32 tolerance."""

    def build(interpret):
        @functools.wraps(reference)
        def impl(*args, **kwargs):
            out, weights = reference(*args, **kwargs)
            return out * jnp.asarray(1.001, out.dtype), weights

        return impl

    spec = registry.KernelSpec(
        name="attention",
        platform="testwrong",
        priority=900,
        devices=frozenset({"cpu"}),
        build=build,
        capabilities=AttentionCapabilities(),
        description="deliberately wrong",
    )
    registry.register_kernel(spec)
    yield spec
    registry.unregister_kernel(spec.key)


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
        if r[1] in ("pallas", "triton"):  # registered Pallas kernels: interpret only on the CPU
            assert " ".join(r[5:7]) == "interpret only", r


def test_check_quick_passes(capsys):
    code = cli.main(["check", "--platform", "xla", "--dtype", "float32", "--quick"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == f"{len(check.QUICK_CASES)}/{len(check.QUICK_CASES)} passed"
    for name in check.QUICK_CASES:
        assert any(line.startswith("PASS  xla") and f" {name} " in line for line in lines), name


def test_check_fails_on_a_wrong_implementation(wrong_kernel, capsys):
    code = cli.main(["check", "--platform", "testwrong", "--dtype", "float32", "--case", "plain"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.splitlines()[0].startswith("FAIL  testwrong plain")
    assert "served by testwrong" in out
    assert out.splitlines()[-1] == "0/1 passed"


def test_check_rejects_an_unknown_case(capsys):
    assert cli.main(["check", "--case", "no-such-case"]) == 2
    assert "unknown check case" in capsys.readouterr().err


def test_select_cases():
    assert [c.name for c in check.select_cases(quick=True)] == list(check.QUICK_CASES)
    assert [c.name for c in check.select_cases(["decode", "plain"])] == ["plain", "decode"]
    assert check.select_cases() == check.CASES
