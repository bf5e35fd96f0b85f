"""The registry and dispatch on the CPU (DESIGN §2): resolution, fallback, priorities, explain, interpret.

Fake implementations wrap the XLA reference and log what the registry does with them (``build`` calls
and kernel calls), so each test sees which implementation served a call. They are registered through
the ``register`` fixture, which unregisters them afterwards.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ejkernel
from ejkernel import registry
from ejkernel.errors import DuplicateKernelError, FallbackWarning, KernelNotFoundError, KernelUnavailableError
from ejkernel.kernels._xla.attention import spec as xla_spec
from ejkernel.kernels._xla.attention._interface import attention as reference
from ejkernel.ops.attention.features import AttentionCapabilities

B, SQ, SKV, HQ, HKV, D = 2, 8, 12, 4, 2, 16


def _inputs(seed: int = 0) -> dict[str, jax.Array]:
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    return {
        "query": jnp.asarray(rngs[0].standard_normal((B, SQ, HQ, D), dtype=np.float32)),
        "key": jnp.asarray(rngs[1].standard_normal((B, SKV, HKV, D), dtype=np.float32)),
        "value": jnp.asarray(rngs[2].standard_normal((B, SKV, HKV, D), dtype=np.float32)),
        "softmax_aux": jnp.asarray(rngs[3].standard_normal((HQ, 2), dtype=np.float32)),
    }


def _fake_spec(platform, priority, log, *, devices=("cpu",), uses_pallas=False, **capabilities):
    """A spec serving the reference under another name; ``capabilities`` switch features off."""

    def build(interpret):
        log.append(("build", platform, interpret))

        @functools.wraps(reference)
        def impl(*args, **kwargs):
            log.append(("call", platform))
            return reference(*args, **kwargs)

        return impl

    return registry.KernelSpec(
        name="attention",
        platform=platform,
        priority=priority,
        devices=frozenset(devices),
        build=build,
        capabilities=AttentionCapabilities(**capabilities),
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


@pytest.mark.parametrize("platform, hardware", [("pallas", "tpu"), ("triton", "cuda")])
def test_hardware_fallback_warns_exactly_once_and_says_why(platform, hardware):
    args = _inputs()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out, _ = ejkernel.attention(**args, platform=platform)
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    (message,) = messages
    assert f"asked for {platform!r}, running 'xla' instead" in message
    registered = any(s.platform == platform for s in registry.kernel_specs("attention"))
    why = f"needs a {hardware} device, this is cpu" if registered else f"no attention implementation is registered for platform {platform!r}"
    assert why in message, message
    expected, _ = reference(**args)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("platform", ["pallas", "triton"])
def test_strict_raises_instead_of_falling_back(platform):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(KernelUnavailableError, match=f"asked for {platform!r}"):
            ejkernel.get_kernel("attention", platform, strict=True)
    assert _fallback_warnings(record) == []


def test_unknown_platform_and_algorithm():
    with pytest.raises(ValueError, match="unknown platform 'nonsense'"):
        ejkernel.get_kernel("attention", "nonsense")
    with pytest.raises(KernelNotFoundError, match="no algorithm 'convolution'"):
        ejkernel.get_kernel("convolution")


def test_duplicate_registration_is_rejected(register):
    with pytest.raises(DuplicateKernelError, match=r"\('attention', 'xla', 'default'\)"):
        registry.register_kernel(xla_spec.SPEC)
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
    named = ejkernel.explain(**without_sinks, platform="pallas")
    assert named.chosen.platform == "xla" and named.is_fallback
    assert any(label.startswith("pallas") for label, _ in named.rejected)


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
        if r["platform"] in ("pallas", "triton"):
            assert not r["runnable"] and r["interpretable"] and re.search(r"needs a .* device, this is cpu", r["reason"])


def test_every_attention_implementation_has_the_reference_signature():
    """Iterates the live registry, so every kernel registered later is covered too."""
    expected = inspect.signature(reference)
    specs = registry.kernel_specs("attention")
    assert {s.platform for s in specs} >= {"xla"}
    for spec in specs:
        impl = spec.build(False)
        assert inspect.signature(impl) == expected, f"{spec.key}: {inspect.signature(impl)}"
    assert inspect.signature(ejkernel.get_kernel("attention")) == expected
