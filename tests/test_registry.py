"""The registry and dispatch on the CPU (docs/design.rst, "Registry and dispatch"): resolution, fallback, priorities, explain, interpret.

Fake implementations wrap the XLA reference and log what the registry does with them (``build`` calls
and kernel calls), so each test sees which implementation served a call. They are registered through
the ``register`` fixture, which unregisters them afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel import registry
from ejkernel.errors import DuplicateKernelError, FallbackWarning, KernelNotFoundError, KernelUnavailableError
from ejkernel.kernels.xla import spec as xla_spec
from ejkernel.kernels.xla.reference import attention as reference
from ejkernel.kernels.xla.reference import reference_attention
from ejkernel.ops.attention import call as call_module
from ejkernel.ops.attention.call import AttentionCall
from ejkernel.ops.attention.features import AttentionCapabilities
from ejkernel.ops.attention.signature import SEED_PARAMETER_COUNT, SIGNATURE

B, SQ, SKV, HQ, HKV, D = 2, 8, 12, 4, 2, 16
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _inputs(seed: int = 0) -> dict[str, jax.Array]:
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    return {
        "query": jnp.asarray(rngs[0].standard_normal((B, SQ, HQ, D), dtype=np.float32)),
        "key": jnp.asarray(rngs[1].standard_normal((B, SKV, HKV, D), dtype=np.float32)),
        "value": jnp.asarray(rngs[2].standard_normal((B, SKV, HKV, D), dtype=np.float32)),
        "softmax_aux": jnp.asarray(rngs[3].standard_normal((HQ, 2), dtype=np.float32)),
    }


def _fake_spec(platform, priority, log, *, devices=("cpu",), uses_pallas=False, **capabilities):
    """A spec serving the reference under another name: the reference's capabilities, ``capabilities``
    overriding some (``sinks=False`` switches sinks off)."""

    def build(interpret):
        log.append(("build", platform, interpret))

        def impl(call):
            assert isinstance(call, AttentionCall)
            log.append(("call", platform))
            return reference_attention(call)

        return impl

    return registry.KernelSpec(
        name="attention",
        platform=platform,
        priority=priority,
        devices=frozenset(devices),
        build=build,
        capabilities=dataclasses.replace(xla_spec.REFERENCE.capabilities, **capabilities),
        uses_pallas=uses_pallas,
        description=f"test fake {platform}",
    )


@pytest.fixture
def register():
    """Registers specs for one test and removes them afterwards."""
    added = []

    def add(spec):
        registry.register_kernel(spec)
        added.append(spec.key)
        return spec

    yield add
    for key in added:
        registry.unregister_kernel(key)


def _fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FallbackWarning)]


# ---------------------------------------------------------------------------------------------------
# Resolution on this CPU


def test_auto_resolves_to_xla_without_warning():
    args = _inputs()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kernel = ejkernel.get_kernel("attention")
        decision = kernel.explain(**args)
        out, weights = kernel(**args)
    assert decision.chosen.platform == "xla"
    assert not decision.is_fallback
    assert _fallback_warnings(record) == []
    expected, _ = reference(**args)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
    assert weights is not None  # the dense reference returns its weights


@pytest.mark.parametrize("platform, hardware", [("pallas_tpu", "tpu"), ("triton", "cuda")])
def test_hardware_fallback_warns_exactly_once_and_says_why(platform, hardware):
    args = _inputs()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, _ = ejkernel.attention(**args, platform=platform)
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    (message,) = messages
    assert f"asked for {platform!r}, which cannot run here: " in message
    assert message.endswith("Calls run on 'xla' instead")
    registered = any(s.platform == platform for s in registry.kernel_specs("attention"))
    why = f"needs a {hardware} device, this is cpu" if registered else f"no attention implementation is registered for platform {platform!r}"
    assert why in message, message
    expected, _ = reference(**args, dtype=None)  # the public call computes in the inputs' dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("platform", ["pallas_tpu", "triton"])
def test_strict_raises_instead_of_falling_back(platform):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(KernelUnavailableError, match=f"asked for {platform!r}") as error:
            ejkernel.get_kernel("attention", platform, strict=True)
    assert _fallback_warnings(record) == []
    message = str(error.value)  # it says what happened: nothing runs, nothing is returned
    assert "strict=True forbids falling back to 'xla', so no kernel was returned" in message
    assert "instead" not in message and "running" not in message


def _line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (in a comment), for checking where a warning points."""
    (line,) = [i for i, text in enumerate(pathlib.Path(__file__).read_text().splitlines(), 1) if text.endswith(marker)]
    return line


def test_fallback_warning_points_at_the_callers_line(register):
    """Each path that warns (hardware fallback in ``attention`` and ``get_kernel``, feature fallback at a
    call, the same under ``jax.jit``) points at this file's calling line, not into ejkernel or JAX."""
    register(_fake_spec("testnosinks", 1000, [], sinks=False))
    args = _inputs()
    kernel = ejkernel.get_kernel("attention")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ejkernel.attention(**args, platform="triton")  # warns: attention
        ejkernel.get_kernel("attention", "pallas_tpu")  # warns: get_kernel
        kernel(**args)  # warns: kernel call
        jax.jit(lambda q, k, v, s: kernel(q, k, v, softmax_aux=s)[0])(*args.values())  # warns: jitted
    got = [(pathlib.Path(w.filename).name, w.lineno) for w in record if issubclass(w.category, FallbackWarning)]
    markers = ("# warns: attention", "# warns: get_kernel", "# warns: kernel call", "# warns: jitted")
    assert got == [(pathlib.Path(__file__).name, _line_of(m)) for m in markers]


def test_strict_feature_fallback_says_nothing_ran(register):
    register(_fake_spec("testnosinks", 1000, [], sinks=False))
    kernel = ejkernel.get_kernel("attention", "testnosinks", strict=True)
    with pytest.raises(KernelUnavailableError) as error:
        kernel(**_inputs())
    message = str(error.value)
    assert message.startswith("attention: testnosinks cannot (softmax_aux (sinks) unsupported)")
    assert message.endswith("strict=True forbids handing the call to xla, so nothing ran")
    assert "serves this call" not in message


def test_unknown_platform_and_algorithm():
    with pytest.raises(ValueError, match="unknown platform 'nonsense'"):
        ejkernel.get_kernel("attention", "nonsense")
    with pytest.raises(KernelNotFoundError, match="no algorithm 'convolution'"):
        ejkernel.get_kernel("convolution")


def test_duplicate_registration_is_rejected(register):
    with pytest.raises(DuplicateKernelError, match=r"\('attention', 'xla', 'default'\)"):
        registry.register_kernel(xla_spec.REFERENCE)
    register(_fake_spec("testdup", 5, []))
    with pytest.raises(DuplicateKernelError):
        registry.register_kernel(_fake_spec("testdup", 7, []))


# ---------------------------------------------------------------------------------------------------
# Priorities


@pytest.mark.parametrize("order", ["low_first", "high_first"])
def test_priority_not_registration_order_decides(register, order):
    log = []
    low, high = _fake_spec("testlow", 500, log), _fake_spec("testhigh", 600, log)
    for spec in (low, high) if order == "low_first" else (high, low):
        register(spec)
    platforms = [r["platform"] for r in ejkernel.list_kernels("attention")]
    assert platforms.index("testhigh") < platforms.index("testlow") < platforms.index("xla")
    priorities = [r["priority"] for r in ejkernel.list_kernels("attention")]
    assert priorities == sorted(priorities, reverse=True)
    ejkernel.get_kernel("attention")(**_inputs())
    assert log == [("build", "testhigh", False), ("call", "testhigh")]


# ---------------------------------------------------------------------------------------------------
# Feature fallback, decided before tracing, for the forward and backward pass together


def test_feature_fallback_per_call(register):
    log = []
    register(_fake_spec("testnosinks", 1000, log, sinks=False))
    args = _inputs()
    kernel = ejkernel.get_kernel("attention")

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plain = {k: v for k, v in args.items() if k != "softmax_aux"}
        out, _ = kernel(**plain)
    assert _fallback_warnings(record) == []
    assert log == [("build", "testnosinks", False), ("call", "testnosinks")]
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(reference(**plain)[0], np.float32))

    log.clear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, _ = kernel(**args)
    (message,) = _fallback_warnings(record)
    assert "xla serves this call" in message and "testnosinks cannot (softmax_aux (sinks) unsupported)" in message
    assert log == []  # the fake never saw the call
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(reference(**args)[0], np.float32))


def test_a_named_platform_falls_back_along_its_declared_chain(register):
    log = []
    first = dataclasses.replace(_fake_spec("testfirst", 5, log, sinks=False), falls_back_to=("testnext",))
    register(first)
    register(_fake_spec("testnext", 1, log))  # ranked below XLA's chunked path: only the chain puts it next
    register(_fake_spec("testother", 7, log))  # not in the chain: never considered for "testfirst"
    args = _inputs()
    kernel = ejkernel.get_kernel("attention", "testfirst")
    assert [s.platform for s in kernel.candidates][:2] == ["testfirst", "testnext"]
    assert "testother" not in {s.platform for s in kernel.candidates}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, _ = kernel(**args)
    (message,) = _fallback_warnings(record)
    assert "testnext serves this call" in message and "testfirst cannot (softmax_aux (sinks) unsupported)" in message
    assert log == [("build", "testnext", False), ("call", "testnext")]
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(reference(**args)[0], np.float32))


def test_the_mosaic_gpu_kernel_falls_back_to_triton_then_xla():
    mosaic = ejkernel.get_kernel("attention", "mosaic_gpu", interpret=True)
    assert [s.platform for s in mosaic.candidates][:2] == ["mosaic_gpu", "triton"]
    q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
    kv, v_wide = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16), jax.ShapeDtypeStruct((1, 128, 2, 128), jnp.bfloat16)
    assert mosaic.explain(q, kv, kv).platform == "mosaic_gpu"
    assert mosaic.explain(q, kv, v_wide).platform == "triton"  # Dv != D: Triton serves it, not XLA
    # Without a GPU (and no interpreter) neither runs: the warning names where calls go instead.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kernel = ejkernel.get_kernel("attention", "mosaic_gpu")
    (message,) = _fallback_warnings(record)
    assert message.startswith("attention: asked for 'mosaic_gpu', which cannot run here: mosaic_gpu needs a cuda")
    assert message.endswith("Calls run on 'xla' instead") and "triton" not in message
    assert {s.platform for s in kernel.candidates} == {"xla"}


def test_feature_fallback_covers_the_backward_pass(register):
    """jax.grad through a call the preferred kernel cannot serve: XLA runs forward and backward."""
    log = []
    register(_fake_spec("testnosinks", 1000, log, sinks=False))
    args = _inputs()
    kernel = ejkernel.get_kernel("attention")
    cotangent = jnp.asarray(np.random.default_rng(7).standard_normal((B, SQ, HQ, D), dtype=np.float32))

    def loss(fn, q, k, v, aux):
        out, _ = fn(q, k, v, softmax_aux=aux, dtype=jnp.float32)
        return jnp.sum(out * cotangent)

    names = ("query", "key", "value", "softmax_aux")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        grads = jax.jit(jax.grad(functools.partial(loss, kernel), argnums=(0, 1, 2, 3)))(*(args[n] for n in names))
    assert len(_fallback_warnings(record)) == 1  # one trace, one decision
    assert log == []
    expected = jax.grad(functools.partial(loss, reference), argnums=(0, 1, 2, 3))(*(args[n] for n in names))
    for name, g, e in zip(names, grads, expected, strict=True):
        assert np.all(np.isfinite(np.asarray(g))), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(jnp.max(jnp.abs(grads[3]))) > 0  # the sinks really get a gradient


def test_strict_also_forbids_feature_fallback_of_a_named_platform(register):
    log = []
    register(_fake_spec("testnosinks", 1000, log, sinks=False))
    args = _inputs()
    kernel = ejkernel.get_kernel("attention", "testnosinks", strict=True)
    kernel(**{k: v for k, v in args.items() if k != "softmax_aux"})
    assert log[-1] == ("call", "testnosinks")
    with pytest.raises(KernelUnavailableError, match="sinks"):
        kernel(**args)


def test_explain_says_which_implementation_and_why(register):
    register(_fake_spec("testnosinks", 1000, [], sinks=False))
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _inputs().items()}  # no arrays needed
    decision = ejkernel.explain(**shapes, causal=True)
    assert decision.chosen.platform == "xla"
    text = str(decision)
    assert text.startswith("attention: xla")
    assert "skipped testnosinks: softmax_aux (sinks) unsupported" in text
    assert "causal" in text and f"Sq{SQ} Skv{SKV}" in text

    without_sinks = {k: v for k, v in shapes.items() if k != "softmax_aux"}
    assert ejkernel.explain(**without_sinks).chosen.platform == "testnosinks"
    named = ejkernel.explain(**without_sinks, platform="pallas")  # the old spelling of "pallas_tpu"
    assert named.chosen.platform == "xla" and named.is_fallback
    assert any(label.startswith("pallas_tpu") for label, _ in named.rejected)


def test_explain_validates_like_a_call():
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _inputs().items()}
    shapes["key"] = jax.ShapeDtypeStruct((B, SKV, 3, D), jnp.float32)
    with pytest.raises(ValueError, match="3"):
        ejkernel.explain(**shapes)


# ---------------------------------------------------------------------------------------------------
# Interpret mode


def test_interpret_makes_a_pallas_spec_eligible_on_cpu(register):
    log = []
    register(_fake_spec("testpallas", 1000, log, devices=("tpu",), uses_pallas=True, sinks=False))
    args = _inputs()
    plain = {k: v for k, v in args.items() if k != "softmax_aux"}

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ejkernel.get_kernel("attention", "testpallas")(**plain)
    (message,) = _fallback_warnings(record)
    assert "needs a tpu device, this is cpu (interpret=True runs it anywhere)" in message
    assert log == []

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kernel = ejkernel.get_kernel("attention", "testpallas", interpret=True)
        assert str(kernel.explain(**plain)).startswith("attention: testpallas (interpret)")
        kernel(**plain)
        assert log == [("build", "testpallas", True), ("call", "testpallas")]
        kernel(**args)  # feature checks still apply in interpret mode
    assert log[-1] == ("call", "testpallas")  # unchanged: sinks went to XLA
    (message,) = _fallback_warnings(record)
    assert "testpallas cannot (softmax_aux (sinks) unsupported)" in message

    # "auto" with interpret=True considers it too; without, it is not runnable here.
    assert ejkernel.explain(**plain, interpret=True).chosen.platform == "testpallas"
    assert ejkernel.explain(**plain).chosen.platform == "xla"
    (record,) = [r for r in ejkernel.list_kernels("attention") if r["platform"] == "testpallas"]
    assert record["interpretable"] and not record["runnable"] and "tpu" in record["reason"]


# ---------------------------------------------------------------------------------------------------
# Records and signatures


def test_list_kernels_records():
    records = ejkernel.list_kernels()
    assert [r for r in records if r["name"] == "attention"] == ejkernel.list_kernels("attention")
    keys = {"name", "platform", "variant", "devices", "priority", "interpretable", "runnable", "reason", "description"}
    for r in records:
        assert set(r) == keys
        assert r["runnable"] == (r["reason"] is None)
        assert isinstance(r["priority"], int)
    (xla,) = [r for r in records if (r["platform"], r["variant"]) == ("xla", "default")]
    assert xla["runnable"] and "cpu" in xla["devices"] and xla["priority"] == 0 and not xla["interpretable"]
    for r in records:
        if r["platform"] in ("pallas_tpu", "triton"):
            assert not r["runnable"] and r["interpretable"] and re.search(r"needs a .* device, this is cpu", r["reason"])


def test_every_entry_point_has_the_reference_signature():
    """One signature, defined in the semantics layer: the public call, the seed's path, the dispatcher and
    every backend's own entry points (whose keyword-only extras follow the signature's keyword-only ones)."""
    from ejkernel.kernels._xla.attention._interface import attention as seed_path
    from ejkernel.kernels.pallas_tpu import interface as tpu
    from ejkernel.kernels.pallas_triton import interface as triton
    from ejkernel.kernels.xla import chunked

    expected = list(SIGNATURE.parameters.values())
    assert inspect.signature(seed_path) == inspect.signature(reference) == SIGNATURE
    assert inspect.signature(ejkernel.get_kernel("attention")) == SIGNATURE
    for fn in (ejkernel.attention, chunked.attention, chunked.chunked_attention, tpu.flash_attention,
               tpu.flash_attention_with_lse, triton.flash_attention, triton.flash_attention_with_lse):
        params = list(inspect.signature(fn).parameters.values())
        if fn is ejkernel.attention:  # the public call: the inputs' dtype, NumPy-broadcast bias and mask
            params[:16] = [expected[i] if p.name in ("dtype", "attention_mask", "bias") else p for i, p in enumerate(params[:16])]
        assert params[: len(expected)] == expected, fn
        assert all(p.kind is p.KEYWORD_ONLY for p in params[SEED_PARAMETER_COUNT:]), fn


@pytest.mark.pallas_interpret
def test_every_registered_implementation_takes_a_bound_call():
    """Iterates the live registry, so every kernel registered later is covered too: each one that runs on
    this device (Pallas ones interpreted) and serves the call."""
    kernel = ejkernel.get_kernel("attention", "xla")
    call = kernel.bind(**_inputs(), dtype=jnp.float32)
    want = reference(**_inputs(), dtype=jnp.float32)[0]
    ran = []
    for spec in registry.kernel_specs("attention"):
        if spec.hardware_reason(registry.current_platform(), interpret=True) or spec.capabilities.unsupported_reasons(call.features):
            continue
        ran.append(spec.platform)
        impl = spec.build(spec.uses_pallas)
        out, _ = impl(call)
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-5, err_msg=str(spec.key))
    assert {"xla", "pallas_tpu", "triton"} <= set(ran)


@pytest.mark.pallas_interpret
def test_one_call_is_validated_once_and_checked_once_per_candidate(monkeypatch):
    validations, checks = [], []
    validate = call_module.validate_attention
    unsupported = AttentionCapabilities.unsupported_reasons

    def counting_validate(*args, **kwargs):
        validations.append(1)
        return validate(*args, **kwargs)

    def counting_check(self, features):
        checks.append(self)
        return unsupported(self, features)

    monkeypatch.setattr(call_module, "validate_attention", counting_validate)
    monkeypatch.setattr(AttentionCapabilities, "unsupported_reasons", counting_check)
    args = _inputs()
    ejkernel.attention(**args)  # auto on a CPU: chunked XLA (refuses a small call), then the dense reference
    assert len(validations) == 1
    assert checks == [xla_spec.CHUNKED.capabilities, xla_spec.REFERENCE.capabilities]

    validations.clear(), checks.clear()
    ejkernel.get_kernel("attention", "triton", interpret=True)(**args)  # the Triton kernel serves it
    assert len(validations) == 1 and len(checks) == 1


def test_capabilities_are_opt_in(register):
    """A backend that declares nothing serves only a plain call; every feature falls back to XLA."""
    log = []
    register(registry.KernelSpec(
        name="attention", platform="testbare", priority=1000, devices=frozenset({"cpu"}),
        build=lambda interpret: lambda call: (log.append("call"), reference_attention(call))[1],
        capabilities=AttentionCapabilities(),
    ))
    defaults = AttentionCapabilities()
    for field in dataclasses.fields(AttentionCapabilities):
        if field.name not in ("dtypes", "head_dims", "softmax_dtypes", "extra_check"):
            assert not getattr(defaults, field.name), f"{field.name} is claimed by default"
    args = {k: v for k, v in _inputs().items() if k != "softmax_aux"}
    assert ejkernel.explain(**args).chosen.platform == "testbare"
    b, sq, skv = B, SQ, SKV
    features = {
        "causal": {"causal": True},
        "sliding_window": {"sliding_window": 3},
        "logits_soft_cap": {"logits_soft_cap": 5.0},
        "softmax_aux": {"softmax_aux": _inputs()["softmax_aux"]},
        "bias layout": {"bias": jnp.zeros((b, HQ, sq, skv), jnp.float32)},
        "attention_mask layout": {"attention_mask": jnp.ones((1, 1, sq, skv), bool)},
        "dropout": {"dropout_prob": 0.5, "deterministic": False, "dropout_rng": jax.random.key(0)},
        "value head_dim": {"value": jnp.zeros((b, skv, HKV, D // 2), jnp.float32)},
        "softmax_dtype": {"softmax_dtype": jnp.float16},
    }
    for reason, extra in features.items():
        decision = ejkernel.explain(**{**args, **extra})
        assert decision.chosen.platform == "xla", reason
        (why,) = [why for label, why in decision.rejected if label == "testbare"]
        assert reason in why, (reason, why)
    assert log == []


_THREADED_FIRST_USE = textwrap.dedent(
    """
    import importlib, threading, time
    from ejkernel import registry

    real_import = importlib.import_module

    def slow_import(name):  # a spec module that takes a while to import
        time.sleep(0.05)
        return real_import(name)

    registry.importlib = type("slow", (), {"import_module": staticmethod(slow_import)})
    errors, barrier = [], threading.Barrier(8)

    def first_use():
        barrier.wait()
        try:
            registry.get_kernel("attention")
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(len(registry.kernel_specs("attention")), len(errors), *errors[:1])
    """
)


def test_first_use_of_the_registry_is_thread_safe():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _THREADED_FIRST_USE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    count, errors, *first_error = result.stdout.split(maxsplit=2)
    assert errors == "0", first_error
    assert int(count) == len(registry.kernel_specs("attention"))
