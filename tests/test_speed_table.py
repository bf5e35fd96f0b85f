"""Choosing by measured speed (``ejkernel.ops.attention.speed``): shape classes, the committed tables, and
``platform="auto"`` ranking capable implementations by them while priority decides everything else."""

from __future__ import annotations

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel import registry
from ejkernel.errors import FallbackWarning
from ejkernel.kernels.xla import spec as xla_spec
from ejkernel.kernels.xla.reference import reference_attention
from ejkernel.ops.attention import algorithm as algorithm_module
from ejkernel.ops.attention import speed
from ejkernel.ops.attention.split import split
from ejkernel.platform import KNOWN_PLATFORMS

PLAIN = {
    "query": jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 4, 16), dtype=np.float32)),
    "key": jnp.asarray(np.random.default_rng(2).standard_normal((2, 12, 2, 16), dtype=np.float32)),
    "value": jnp.asarray(np.random.default_rng(3).standard_normal((2, 12, 2, 16), dtype=np.float32)),
}


def _fake_spec(platform, priority, log, **capabilities):
    """The XLA reference under another name, logging its calls; ``capabilities`` override the reference's."""

    def build(interpret):
        def impl(call):
            log.append(("call", platform))
            return reference_attention(call)

        return impl

    caps = dataclasses.replace(xla_spec.REFERENCE.capabilities, **capabilities)
    return registry.KernelSpec("attention", platform, priority, frozenset({"cpu"}), build, caps)


@pytest.fixture
def register():
    """Registers specs for one test and removes them afterwards."""
    added = []

    def add(spec):
        added.append(registry.register_kernel(spec).key)

    yield add
    for key in added:
        registry.unregister_kernel(key)


def _features(**kwargs):
    shapes = {"q": (2, 4096, 16, 128), "kv": (2, 4096, 16, 128)}
    q = jax.ShapeDtypeStruct(shapes["q"], jnp.bfloat16)
    kv = jax.ShapeDtypeStruct(shapes["kv"], jnp.bfloat16)
    return ejkernel.get_kernel("attention").bind(q, kv, kv, dtype=jnp.bfloat16, **kwargs).features


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("bfloat16", 128, True, 8192, 8192), "bfloat16/d128/causal/s8192"),
        (("bfloat16", 96, False, 3000, 5000), "bfloat16/d128/full/s8192"),
        (("float16", 64, False, 100, 100), "float16/d64/full/s512"),
        (("bfloat16", 256, True, 16384, 16384), "bfloat16/d256/causal/s16384"),
        (("bfloat16", 128, True, 1, 8192), None),  # a decode step
        (("bfloat16", 512, False, 1024, 1024), None),  # past every head-dim class
    ],
)
def test_shape_class(args, expected):
    assert speed.shape_class(*args) == expected


def test_calls_beyond_plain_attention_have_no_class():
    assert speed.class_of_features(_features(causal=True)) == "bfloat16/d128/causal/s4096"
    extras = [
        {"sliding_window": 64},
        {"logits_soft_cap": 30.0},
        {"softmax_aux": jnp.zeros((16, 2))},
        {"bias": jax.ShapeDtypeStruct((1, 1, 4096, 4096), jnp.bfloat16)},
        {"attention_mask": jax.ShapeDtypeStruct((1, 1, 4096, 4096), jnp.bool_)},
        {"kv_lengths": jax.ShapeDtypeStruct((2,), jnp.int32)},
    ]
    for extra in extras:
        assert speed.class_of_features(_features(**extra)) is None, extra


def _record(impl, mode, tflops, *, status="ok", q_len=4096, head_dim=128, causal=True, dtype="bfloat16"):
    shape = {"batch": 2, "q_len": q_len, "kv_len": q_len, "num_q_heads": 16, "num_kv_heads": 16, "head_dim": head_dim}
    return {
        "impl": impl,
        "mode": mode,
        "tflops": tflops,
        "status": status,
        "shape": shape,
        "causal": causal,
        "dtype": dtype,
    }


def test_build_table_keeps_our_platforms_and_averages_a_class():
    results = [
        _record("ejkernel:triton", "fwd", 400.0),
        _record("ejkernel:triton", "fwd", 420.0, q_len=3000),  # same class, s4096
        _record("ejkernel:triton", "fwd+bwd", 300.0),
        _record("ejkernel:cudnn", "fwd", 500.0),
        _record("ejkernel:cudnn", "fwd+bwd", 450.0),
        _record("ejkernel:auto", "fwd", 500.0),  # served by no named platform: left out
        {**_record("ejkernel:auto", "fwd", 600.0, q_len=2048), "served_by": "mosaic_gpu"},  # counts for mosaic_gpu
        _record("jax.nn:cudnn", "fwd", 510.0),  # a baseline
        _record("ejkernel:xla", "fwd", 0.0, status="n/a"),  # did not run
        _record("ejkernel:triton", "fwd", 50.0, q_len=1),  # a decode step: no class
    ]
    table = speed.build_table([results], "NVIDIA H200", "ejkernel bench --grid fa3")
    assert table["schema"] == speed.SCHEMA and table["device_kind"] == "NVIDIA H200"
    assert table["classes"] == {
        "bfloat16/d128/causal/s4096": {
            "cudnn": {"fwd": 500.0, "fwd+bwd": 450.0},
            "triton": {"fwd": 410.0, "fwd+bwd": 300.0},
        },
        "bfloat16/d128/causal/s2048": {"mosaic_gpu": {"fwd": 600.0}},
    }


def test_build_table_a_later_run_replaces_what_it_measured_again():
    older = [_record("ejkernel:mosaic_gpu", "fwd", 500.0), _record("ejkernel:mosaic_gpu", "fwd+bwd", 400.0),
             _record("ejkernel:cudnn", "fwd", 550.0)]
    newer = [_record("ejkernel:mosaic_gpu", "fwd", 600.0), _record("ejkernel:mosaic_gpu", "fwd", 620.0)]
    classes = speed.build_table([older, newer], "NVIDIA H200", "two runs")["classes"]
    assert classes == {
        "bfloat16/d128/causal/s4096": {"cudnn": {"fwd": 550.0}, "mosaic_gpu": {"fwd": 610.0, "fwd+bwd": 400.0}}
    }


def test_measured_speeds_prefers_the_forward_backward_rate(monkeypatch):
    classes = {
        "bfloat16/d128/causal/s4096": {
            "cudnn": {"fwd": 500.0, "fwd+bwd": 450.0},
            "triton": {"fwd": 410.0, "fwd+bwd": 300.0},
        },
        "bfloat16/d128/full/s4096": {"cudnn": {"fwd": 500.0}, "triton": {"fwd": 410.0, "fwd+bwd": 300.0}},
    }
    monkeypatch.setattr(speed, "load_table", lambda kind: classes if kind == "NVIDIA H200" else {})
    assert speed.measured_speeds(_features(causal=True), "NVIDIA H200") == {"cudnn": 450.0, "triton": 300.0}
    assert speed.measured_speeds(_features(), "NVIDIA H200") == {"cudnn": 500.0, "triton": 410.0}  # fwd only
    assert speed.measured_speeds(_features(causal=True), "cpu") == {}
    assert speed.measured_speeds(_features(), "NVIDIA H200", "fwd+bwd") == {"triton": 300.0}  # one pass, who has it
    assert speed.measured_speeds(_features(causal=True), "NVIDIA H200", "fwd") == {"cudnn": 500.0, "triton": 410.0}
    with pytest.raises(ValueError, match="mode"):
        speed.measured_speeds(_features(), "NVIDIA H200", "bwd")


def test_committed_tables_are_well_formed():
    folder = speed.resources.files("ejkernel.ops.attention").joinpath("speed_tables")
    tables = [p for p in folder.iterdir() if p.name.endswith(".json")]
    for path in tables:
        doc = json.loads(path.read_text())
        assert doc["schema"] == speed.SCHEMA
        assert path.name == speed.table_file_name(doc["device_kind"])
        assert doc["classes"] and doc["source"].startswith("ejkernel bench")
        for name, entry in doc["classes"].items():
            assert name.count("/") == 3, name
            for platform, rates in entry.items():
                assert platform in KNOWN_PLATFORMS, platform
                assert set(rates) <= set(speed.MODES) and all(r > 0 for r in rates.values()), (name, platform)
    assert speed.load_table("a device nobody measured") == {}


def test_auto_picks_the_fastest_measured_capable_implementation(register, monkeypatch):
    log = []
    register(_fake_spec("testfirst", 1000, log, causal=False))
    register(_fake_spec("testsecond", 900, log))
    rates = {"testsecond": 500.0, "testfirst": 300.0}
    monkeypatch.setattr(algorithm_module, "measured_speeds", lambda features, kind, mode=None: dict(rates))
    plain = PLAIN

    decision = ejkernel.explain(**plain)
    assert decision.chosen.platform == "testsecond"
    assert decision.speeds == (("testsecond", 500.0), ("testfirst", 300.0))
    assert decision.rejected == ()  # speed, not a capability, ranked testfirst second
    assert "chosen by measured speed" in str(decision) and "testsecond 500, testfirst 300" in str(decision)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ejkernel.attention(**plain)
    assert not [w for w in record if issubclass(w.category, FallbackWarning)] and log[-1] == ("call", "testsecond")

    # Capabilities still come first: testfirst cannot serve causal, testsecond can.
    rates.update(testsecond=100.0, testfirst=900.0)
    decision = ejkernel.explain(**plain, causal=True)
    assert decision.chosen.platform == "testsecond"
    assert [label for label, _ in decision.rejected] == ["testfirst"]

    # A capable platform the table does not know keeps its place in the priority order.
    register(_fake_spec("testunmeasured", 950, log))
    rates.update(testsecond=500.0, testfirst=300.0)
    assert ejkernel.explain(**plain).chosen.platform == "testsecond"  # testfirst's place, measured slower
    assert ejkernel.explain(**plain, causal=True).chosen.platform == "testunmeasured"  # now the first place

    # A named platform is what the user asked for: the table does not override it.
    rates.update(testsecond=500.0, testfirst=300.0)
    assert ejkernel.get_kernel("attention", "testfirst").explain(**plain).chosen.platform == "testfirst"
    assert ejkernel.get_kernel("attention", "testfirst").explain(**plain).speeds == ()


def test_a_call_that_is_not_differentiated_runs_on_the_fastest_forward(register, monkeypatch):
    """testsecond is measured faster forward+backward, testfirst faster at the forward alone: an undifferentiated
    call runs testfirst, a differentiated one testsecond (forward and backward), with the same results."""
    log = []
    register(_fake_spec("testfirst", 1000, log))
    register(_fake_spec("testsecond", 900, log))
    rates = {None: {"testsecond": 500.0, "testfirst": 300.0}, "fwd": {"testfirst": 700.0, "testsecond": 600.0}}
    monkeypatch.setattr(algorithm_module, "measured_speeds", lambda features, kind, mode=None: dict(rates[mode]))

    decision = ejkernel.explain(**PLAIN)
    assert decision.chosen.platform == "testsecond" and decision.forward.platform == "testfirst"
    assert decision.forward_speeds == (("testfirst", 700.0), ("testsecond", 600.0))
    assert "not differentiated, the call runs on testfirst (forward alone: testfirst 700, testsecond 600)" in str(decision)

    expected, _ = ejkernel.attention(**PLAIN, platform="xla")
    log.clear()
    out, weights = ejkernel.attention(**PLAIN)
    assert log == [("call", "testfirst")] and weights is None
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)

    def loss(platform, q, k, v):
        return jnp.sum(jnp.sin(ejkernel.attention(q, k, v, platform=platform)[0]))

    args = (PLAIN["query"], PLAIN["key"], PLAIN["value"])
    expected_grads = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(*args)
    log.clear()
    grads = jax.jit(jax.grad(lambda *a: loss("auto", *a), argnums=(0, 1, 2)))(*args)
    assert log == [("call", "testsecond")]
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # Where the training choice is also the fastest forward, nothing is split.
    rates["fwd"] = {"testfirst": 500.0, "testsecond": 600.0}
    assert ejkernel.explain(**PLAIN).forward is None
    # A forward rate for the training choice is needed to prefer another forward over it.
    rates["fwd"] = {"testfirst": 700.0}
    assert ejkernel.explain(**PLAIN).forward is None
    # A call with other arrays is never split (it has no class; split itself refuses one).
    mask = jnp.ones((2, 1, 8, 12), bool)
    call = registry.get_kernel("attention", "xla").bind(**PLAIN, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask"):
        split(call, reference_attention, reference_attention)


def test_no_table_keeps_the_priority_order(register, monkeypatch):
    log = []
    register(_fake_spec("testfirst", 1000, log))
    register(_fake_spec("testsecond", 900, log))
    monkeypatch.setattr(algorithm_module, "measured_speeds", lambda features, kind, mode=None: {})
    plain = PLAIN
    decision = ejkernel.explain(**plain)
    assert decision.chosen.platform == "testfirst" and decision.speeds == ()


def test_bench_table_writes_the_table_of_one_device_kind(tmp_path, capsys):
    from ejkernel.bench.speed_table import run_table

    def result(name, kind, records):
        path = tmp_path / name
        env = {"device_kind": kind, "command": "ejkernel bench --grid fa3"}
        path.write_text(json.dumps({"schema": "ejkernel-bench/1", "environment": env, "results": records}))
        return str(path)

    a = result(
        "a.json", "NVIDIA H200", [_record("ejkernel:triton", "fwd", 400.0), _record("ejkernel:cudnn", "fwd", 500.0)]
    )
    b = result("b.json", "NVIDIA H200", [_record("ejkernel:triton", "fwd", 420.0)])
    out = tmp_path / "table.json"
    assert run_table([a, b, "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert (
        table["device_kind"] == "NVIDIA H200"
        and table["source"] == "ejkernel bench --grid fa3 | ejkernel bench --grid fa3"
    )
    # b.json, the later run, measured triton again: its 420 replaces a.json's 400; cuDNN keeps a.json's.
    assert table["classes"]["bfloat16/d128/causal/s4096"] == {"cudnn": {"fwd": 500.0}, "triton": {"fwd": 420.0}}

    other = result("c.json", "NVIDIA H100", [_record("ejkernel:triton", "fwd", 300.0)])
    assert run_table([a, other, "--out", str(out)]) == 2
    assert "several device kinds" in capsys.readouterr().err
    empty = result("d.json", "NVIDIA H200", [_record("jax.nn:cudnn", "fwd", 500.0)])
    assert run_table([empty, "--out", str(out)]) == 2
    (tmp_path / "e.json").write_text("not json")
    assert run_table([str(tmp_path / "e.json")]) == 2
