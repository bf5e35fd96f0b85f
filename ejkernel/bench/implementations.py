"""What ``ejkernel bench`` times: ejkernel's registered implementations and the baselines.

A ``Candidate`` turns ``(shape, causal, dtype)`` into a forward function ``(q, k, v) -> out`` or raises
``Unsupported`` with the reason it cannot serve that call. Candidates that cannot run on this device at
all carry ``unavailable`` instead; both are reported as n/a, never as a crash.

Baselines: ``jax.nn.dot_product_attention`` with ``implementation="xla"`` and ``"cudnn"``, and tokamax's
``dot_product_attention`` when tokamax is installed. Those align a causal mask top-left, ejkernel
bottom-right (``docs/semantics.rst``): the two agree when ``Sq == Skv`` and, for a decode step (``Sq = 1``), a causal
ejkernel call equals a non-causal baseline call; other ``Sq != Skv`` causal calls are n/a for baselines.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.bench.grids import BenchShape
from ejkernel.errors import FallbackWarning
from ejkernel.platform import current_platform
from ejkernel.registry import get_kernel, kernel_specs, list_kernels

__all__ = [
    "Unsupported",
    "TimedElsewhere",
    "Candidate",
    "ejkernel_candidates",
    "baseline_candidates",
    "all_candidates",
    "shape_structs",
]

Forward = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Unsupported(Exception):
    """A candidate cannot serve this configuration; the message says why."""


class TimedElsewhere(Unsupported):
    """Another candidate already times exactly this call (a platform's dispatcher picks this variant)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # "ejkernel" or "baseline"
    make: Callable[[BenchShape, bool, str], Forward]
    unavailable: str | None = None
    describe_choice: Callable[[BenchShape, bool, str, str], str] | None = None  # which implementation serves (shape, causal, dtype, mode)


def shape_structs(shape: BenchShape, dtype: str) -> tuple[jax.ShapeDtypeStruct, ...]:
    """``ShapeDtypeStruct``s of q, k and v for ``shape``."""
    dt = jnp.dtype(dtype)
    q = jax.ShapeDtypeStruct((shape.batch, shape.q_len, shape.num_q_heads, shape.head_dim), dt)
    kv = jax.ShapeDtypeStruct((shape.batch, shape.kv_len, shape.num_kv_heads, shape.head_dim), dt)
    return q, kv, kv


def _platform_decision(kernel: Any, shape: BenchShape, causal: bool, dtype: str) -> Any:
    return kernel.explain(*shape_structs(shape, dtype), causal=causal, dtype=dtype)


def _ejkernel_platform(platform: str, kernel: Any) -> Candidate:
    """The public path: ``get_kernel("attention", platform, strict=True)``; a feature fallback is n/a."""

    def decision(shape: BenchShape, causal: bool, dtype: str) -> Any:
        d = _platform_decision(kernel, shape, causal, dtype)
        if d.chosen.platform != platform:
            raise Unsupported("; ".join(f"{label}: {reason}" for label, reason in d.rejected) or "not served")
        return d

    def make(shape: BenchShape, causal: bool, dtype: str) -> Forward:
        decision(shape, causal, dtype)
        return lambda q, k, v: kernel(q, k, v, causal=causal, dtype=dtype)[0]

    def describe(shape: BenchShape, causal: bool, dtype: str, mode: str) -> str:
        return decision(shape, causal, dtype).chosen.label

    return Candidate(f"ejkernel:{platform}", "ejkernel", make, describe_choice=describe)


def _ejkernel_variant(spec: Any, kernel: Any) -> Candidate:
    """One variant of a platform that has several, built directly after its own capability check.

    The call its platform's dispatcher would give this variant anyway is timed once, under the
    platform's name, and is n/a here.
    """
    name = f"ejkernel:{spec.platform}:{spec.variant}"

    def make(shape: BenchShape, causal: bool, dtype: str) -> Forward:
        if _platform_decision(kernel, shape, causal, dtype).chosen.key == spec.key:
            raise TimedElsewhere(f"timed as ejkernel:{spec.platform}, whose dispatcher picks this variant here")
        features = kernel.bind(*shape_structs(shape, dtype), dtype=dtype, causal=causal).features
        reasons = spec.capabilities.unsupported_reasons(features)
        if reasons:
            raise Unsupported("; ".join(reasons))
        impl = spec.build(False)
        return lambda q, k, v: impl(kernel.bind(q, k, v, causal=causal, dtype=dtype))[0]

    return Candidate(name, "ejkernel", make)


def _ejkernel_auto() -> Candidate:
    """``ejkernel.attention`` as users call it (``platform="auto"``); ``served_by`` names the choice."""
    kernel = get_kernel("attention")

    def make(shape: BenchShape, causal: bool, dtype: str) -> Forward:
        return lambda q, k, v: kernel(q, k, v, causal=causal, dtype=dtype)[0]

    def describe(shape: BenchShape, causal: bool, dtype: str, mode: str) -> str:
        d = _platform_decision(kernel, shape, causal, dtype)
        return (d.forward or d.chosen).label if mode == "fwd" else d.chosen.label

    return Candidate("ejkernel:auto", "ejkernel", make, describe_choice=describe)


def ejkernel_candidates() -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Candidates for every implementation that runs here, and ``(label, reason)`` for those that do not.

    First ``ejkernel:auto`` (the default dispatch), then one candidate per platform (its dispatcher, as
    users call it); where a platform has several variants, one more per variant for the calls the
    dispatcher gives to another.
    """
    records = list_kernels("attention")
    skipped = [(f"ejkernel:{r['platform']}:{r['variant']}", r["reason"] or "") for r in records if not r["runnable"]]
    here = current_platform()
    candidates = [_ejkernel_auto()]
    for platform in dict.fromkeys(r["platform"] for r in records if r["runnable"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            kernel = get_kernel("attention", platform, strict=True)
        candidates.append(_ejkernel_platform(platform, kernel))
        variants = [s for s in kernel_specs("attention") if s.platform == platform and s.hardware_reason(here, False) is None]
        if len(variants) > 1:
            candidates.extend(_ejkernel_variant(s, kernel) for s in variants)
    return candidates, skipped


def _baseline_causal(shape: BenchShape, causal: bool) -> bool:
    """The ``is_causal`` that matches ejkernel's bottom-right causal mask, or ``Unsupported``."""
    if not causal or shape.q_len == shape.kv_len:
        return causal
    if shape.q_len == 1:
        return False  # a decode step sees the whole cache
    raise Unsupported("causal masks align top-left in this API, ejkernel's bottom-right; they differ when Sq != Skv")


def _jax_nn(implementation: str) -> Candidate:
    def make(shape: BenchShape, causal: bool, dtype: str) -> Forward:
        is_causal = _baseline_causal(shape, causal)
        if implementation == "cudnn":
            if dtype not in ("bfloat16", "float16"):
                raise Unsupported(f"cuDNN attention takes bfloat16/float16, not {dtype}")
            if shape.head_dim > 256 or shape.head_dim % 8:
                raise Unsupported(f"cuDNN attention needs head_dim <= 256 and a multiple of 8, got {shape.head_dim}")
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation=implementation)

    unavailable = None
    if implementation == "cudnn" and current_platform() != "cuda":
        unavailable = f"cuDNN needs an NVIDIA GPU; this is {current_platform()}"
    return Candidate(f"jax.nn:{implementation}", "baseline", make, unavailable)


def tokamax_unavailable(error: BaseException) -> str:
    """Why tokamax cannot run: not installed, or installed but one of its own imports failed (named)."""
    if isinstance(error, ModuleNotFoundError) and error.name not in (None, "tokamax"):
        return f"tokamax does not import: it needs the module {error.name!r}, which is not installed"
    if isinstance(error, ModuleNotFoundError):
        return "tokamax is not installed (pip install tokamax)"
    return f"tokamax does not import ({type(error).__name__}: {error})"[:200]


def _tokamax() -> Candidate:
    try:
        tokamax = importlib.import_module("tokamax")
        unavailable = None if hasattr(tokamax, "dot_product_attention") else "tokamax has no dot_product_attention"
    except Exception as e:  # ImportError, or a broken install: either way a baseline we cannot run
        tokamax, unavailable = None, tokamax_unavailable(e)

    def make(shape: BenchShape, causal: bool, dtype: str) -> Forward:
        is_causal = _baseline_causal(shape, causal)
        return lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=is_causal)

    return Candidate("tokamax", "baseline", make, unavailable)


def baseline_candidates() -> list[Candidate]:
    return [_jax_nn("xla"), _jax_nn("cudnn"), _tokamax()]


def all_candidates(
    include: list[str] | None = None, exclude: list[str] | None = None
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every candidate (ejkernel first): those whose name contains one of ``include`` (all when empty)
    and none of ``exclude``; plus ``(label, reason)`` for registered implementations that cannot run here."""
    ours, skipped = ejkernel_candidates()
    candidates = ours + baseline_candidates()
    if include:
        candidates = [c for c in candidates if any(f in c.name for f in include)]
    if exclude:
        candidates = [c for c in candidates if not any(f in c.name for f in exclude)]
    return candidates, skipped
