"""The kernel registry: specs, explicit priorities and fallback (``docs/design.rst``, "Registry and dispatch").

An *algorithm* ("attention") has one reference signature and a ``bind`` function that validates a call
once and returns a call object carrying its static ``features``. An *implementation* (``KernelSpec``) of
it runs on some devices, has an explicit priority and declares capabilities; it is a callable taking that
call object. ``get_kernel`` returns a ``Kernel``: a callable with the algorithm's signature that, for each
call and before tracing, binds it, picks the first capable implementation (highest priority first, the
XLA ones last), says why when it falls back, and hands the bound call to it.

This module is a leaf: it imports only ``errors`` and ``platform``. The built-in algorithms and backends
are modules named in ``BUILTIN_MODULES``, imported on first use (once, under a lock); each may define
``ALGORITHMS`` and ``SPECS``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ejkernel.errors import (
    DuplicateKernelError,
    FallbackWarning,
    KernelNotFoundError,
    KernelUnavailableError,
    caller_stacklevel,
)
from ejkernel.platform import FALLBACK_PLATFORM, KNOWN_PLATFORMS, canonical_platform, current_platform

__all__ = [
    "Algorithm",
    "KernelSpec",
    "Kernel",
    "Decision",
    "register_algorithm",
    "register_kernel",
    "get_kernel",
    "list_kernels",
    "kernel_specs",
    "unregister_kernel",
    "lazy_build",
    "with_lse",
    "current_platform",
    "KNOWN_PLATFORMS",
    "BUILTIN_MODULES",
]

logger = logging.getLogger("ejkernel")

#: Modules holding the built-in algorithms and implementations (``ALGORITHMS`` / ``SPECS``). Importing one
#: must not import Pallas or Triton: a spec's ``build`` imports its kernel on first use.
BUILTIN_MODULES = (
    "ejkernel.ops.attention.algorithm",
    "ejkernel.kernels.xla.spec",
    "ejkernel.kernels.pallas_tpu.spec",
    "ejkernel.kernels.pallas_triton.spec",
    "ejkernel.kernels.pallas_mosaic_gpu.spec",
    "ejkernel.kernels.cudnn.spec",
)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One algorithm: the signature every implementation shares and how a call is bound.

    ``bind(arguments)`` takes the call's arguments by name (defaults applied), validates them, and returns
    a call object with a ``features`` attribute (what capabilities are checked against); implementations
    receive that object.
    """

    name: str
    signature: inspect.Signature
    bind: Callable[[dict[str, Any]], Any]
    #: ``measured_speeds(features)``: ``{platform: TFLOP/s}`` measured on this device for calls like this
    #: one (empty when nothing was measured); ``platform="auto"`` ranks capable implementations by it.
    measured_speeds: Callable[[Any], dict[str, float]] | None = None
    #: ``measured_forward_speeds(features)``: the same for the forward pass alone. With ``split``, a call
    #: that is never differentiated goes to the fastest forward where that is another implementation.
    measured_forward_speeds: Callable[[Any], dict[str, float]] | None = None
    #: ``split(call, forward, training)``: the call served by the implementation ``forward`` when it is not
    #: differentiated and by ``training`` (its forward and backward) when it is.
    split: Callable[[Any, Callable[..., Any], Callable[..., Any]], Any] | None = None


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One implementation of an algorithm.

    ``build(interpret)`` returns the implementation: a callable taking the algorithm's bound call object.
    ``devices`` are the platforms of ``current_platform()`` it runs on natively; ``uses_pallas`` ones also
    run anywhere with ``interpret=True``. ``capabilities.unsupported_reasons(features)`` lists why a call
    cannot be served (empty when it can). ``available()`` may add a hardware reason (e.g. GPU too old).
    ``falls_back_to`` names the platforms a call that names this one tries next, before XLA.
    """

    name: str
    platform: str
    priority: int
    devices: frozenset[str]
    build: Callable[[bool], Callable[..., Any]]
    capabilities: Any
    variant: str = "default"
    uses_pallas: bool = False
    description: str = ""
    available: Callable[[], str | None] | None = None
    #: The platforms a call naming this one goes to, in order, for what it cannot serve (XLA's last of all).
    falls_back_to: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.platform, self.variant

    @property
    def label(self) -> str:
        return self.platform if self.variant == "default" else f"{self.platform}:{self.variant}"

    def hardware_reason(self, platform: str, interpret: bool) -> str | None:
        """Why this implementation cannot run on ``platform`` (``None`` when it can)."""
        if self.uses_pallas and interpret:
            return None
        if platform not in self.devices:
            hint = " (interpret=True runs it anywhere)" if self.uses_pallas else ""
            return f"needs a {'/'.join(sorted(self.devices))} device, this is {platform}{hint}"
        if self.available is not None:
            return self.available()
        return None


def lazy_build(module: str, factory: str) -> Callable[[bool], Callable[..., Any]]:
    """A ``KernelSpec.build`` that imports ``module`` on first use and returns its ``factory(interpret)``, so
    that importing a spec module never imports its kernel (Pallas, Triton)."""

    def build(interpret: bool) -> Callable[..., Any]:
        return getattr(importlib.import_module(module), factory)(interpret)

    build.__qualname__ = build.__name__ = f"lazy_build({module}.{factory})"
    return build


def with_lse(spec: KernelSpec, module: str, factory: str = "registered_attention_with_lse") -> KernelSpec:
    """``spec``'s kernel registered as ``attention_with_lse`` (``(output, lse [B, Sq, Hq])``, differentiable in
    both), built by ``module.factory``; everything else (capabilities, priority, availability) is ``spec``'s."""
    return dataclasses.replace(spec, name="attention_with_lse", build=lazy_build(module, factory))


_ALGORITHMS: dict[str, Algorithm] = {}
_KERNELS: dict[tuple[str, str, str], KernelSpec] = {}


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Adds an algorithm (its reference signature and ``analyze``); a second one of the same name is rejected."""
    if algorithm.name in _ALGORITHMS:
        raise DuplicateKernelError(f"algorithm {algorithm.name!r} is already registered")
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def register_kernel(spec: KernelSpec) -> KernelSpec:
    """Adds ``spec``; a second spec with the same (name, platform, variant) is rejected."""
    _ensure_builtin_kernels()
    if spec.name not in _ALGORITHMS:
        raise KernelNotFoundError(f"no algorithm {spec.name!r}; known: {sorted(_ALGORITHMS)}")
    if spec.key in _KERNELS:
        raise DuplicateKernelError(f"kernel {spec.key} is already registered")
    _KERNELS[spec.key] = spec
    return spec


def unregister_kernel(key: tuple[str, str, str]) -> None:
    """Removes a spec (for tests and plugins that replace one)."""
    del _KERNELS[key]


def _specs(name: str) -> list[KernelSpec]:
    if name not in _ALGORITHMS:
        raise KernelNotFoundError(f"no algorithm {name!r}; known: {sorted(_ALGORITHMS)}")
    return sorted((s for s in _KERNELS.values() if s.name == name), key=lambda s: (-s.priority, s.platform, s.variant))


def kernel_specs(name: str) -> list[KernelSpec]:
    """The registered implementations of ``name``, highest priority first (built-ins included)."""
    _ensure_builtin_kernels()
    return _specs(name)


def list_kernels(name: str | None = None) -> list[dict[str, Any]]:
    """One record per registered implementation, with whether it can run here and, if not, why."""
    _ensure_builtin_kernels()
    platform = current_platform()
    names = [name] if name is not None else sorted(_ALGORITHMS)
    records = []
    for n in names:
        for spec in _specs(n):
            reason = spec.hardware_reason(platform, interpret=False)
            records.append(
                {
                    "name": spec.name,
                    "platform": spec.platform,
                    "variant": spec.variant,
                    "devices": tuple(sorted(spec.devices)),
                    "priority": spec.priority,
                    "interpretable": spec.uses_pallas,
                    "runnable": reason is None,
                    "reason": reason,
                    "description": spec.description,
                }
            )
    return records


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which implementation serves a call, and why each better-ranked one did not."""

    requested: str
    chosen: KernelSpec
    features: Any
    rejected: tuple[tuple[str, str], ...]  # (implementation label, reason)
    interpret: bool
    #: ``(platform, TFLOP/s)`` of the capable implementations measured for this call's class, fastest
    #: first, when the measured table chose (``platform="auto"`` only); empty when priority decided.
    speeds: tuple[tuple[str, float], ...] = ()
    #: The implementation that serves the call when it is not differentiated, where the table measured
    #: another one faster at the forward pass alone (``None``: ``chosen`` serves both).
    forward: KernelSpec | None = None
    #: ``(platform, TFLOP/s)`` of the forward pass alone, fastest first, when ``forward`` is set.
    forward_speeds: tuple[tuple[str, float], ...] = ()

    @property
    def platform(self) -> str:
        return self.chosen.platform

    @property
    def is_fallback(self) -> bool:
        """True when an explicitly requested platform could not serve the call."""
        return self.requested != "auto" and self.chosen.platform != self.requested

    def __str__(self) -> str:
        lines = [
            f"{self.chosen.name}: {self.chosen.label}"
            + (" (interpret)" if self.interpret and self.chosen.uses_pallas else "")
        ]
        lines.append(f"  call: {self.features.describe() if hasattr(self.features, 'describe') else self.features}")
        lines.extend(f"  skipped {label}: {reason}" for label, reason in self.rejected)
        if self.speeds:
            rates = ", ".join(f"{platform} {rate:.0f}" for platform, rate in self.speeds)
            lines.append(f"  chosen by measured speed (TFLOP/s on this device for calls like this): {rates}")
        if self.forward is not None:
            rates = ", ".join(f"{platform} {rate:.0f}" for platform, rate in self.forward_speeds)
            lines.append(f"  not differentiated, the call runs on {self.forward.label} (forward alone: {rates})")
        return "\n".join(lines)


class Kernel:
    """A callable with the algorithm's signature that dispatches each call to a capable implementation."""

    def __init__(
        self,
        algorithm: Algorithm,
        requested: str,
        candidates: list[KernelSpec],
        rejected: list[tuple[str, str]],
        *,
        strict: bool,
        interpret: bool,
    ):
        self.algorithm = algorithm
        self.requested = requested
        self.candidates = tuple(candidates)
        self._hardware_rejected = tuple(rejected)
        self.strict = strict
        self.interpret = interpret
        self.__signature__ = algorithm.signature
        self.__name__ = algorithm.name
        self.__doc__ = f"{algorithm.name} dispatched over {[s.label for s in candidates]} (requested {requested!r})."

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """The validated call object of these arguments (the algorithm's ``bind``)."""
        try:
            bound = self.algorithm.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.algorithm.name}(): {e}") from None
        bound.apply_defaults()
        return self.algorithm.bind(bound.arguments)

    def _decide(self, features: Any) -> Decision:
        """The first capable candidate by priority. Under ``"auto"``, where the algorithm has measured speeds
        for the call, the measured capable candidates are reordered fastest first among the places they hold
        in the priority order; a capable candidate with no measurement keeps its place."""
        rejected = list(self._hardware_rejected)
        speeds = {}
        if self.requested == "auto" and self.algorithm.measured_speeds is not None:
            speeds = self.algorithm.measured_speeds(features)
        capable = []
        for spec in self.candidates:
            reasons = spec.capabilities.unsupported_reasons(features)
            if reasons:
                rejected.append((spec.label, "; ".join(reasons)))
                continue
            capable.append(spec)
            if not speeds:
                break
        if not capable:
            described = features.describe() if hasattr(features, "describe") else features
            raise KernelUnavailableError(
                f"no implementation of {self.algorithm.name} serves {described}: "
                + "; ".join(f"{label}: {reason}" for label, reason in rejected)
            )
        measured = sorted((s for s in capable if s.label in speeds), key=lambda s: -speeds[s.label])
        chosen, ranked = capable[0], ()
        if len(measured) > 1 and capable[0] in measured:  # the first place is the table's to fill
            chosen, ranked = measured[0], tuple((s.label, speeds[s.label]) for s in measured)
        forward, forward_ranked = self._forward_choice(features, chosen, measured) if ranked else (None, ())
        # The reasons: candidates above the choice in priority order (those below were only checked for speed).
        above = {s.label for s in self.candidates[: self.candidates.index(chosen)]}
        rejected = [r for r in rejected if r[0] in above or r in self._hardware_rejected]
        return Decision(self.requested, chosen, features, tuple(rejected), self.interpret, ranked, forward, forward_ranked)

    def _forward_choice(
        self, features: Any, chosen: KernelSpec, measured: list[KernelSpec]
    ) -> tuple[KernelSpec | None, tuple[tuple[str, float], ...]]:
        """The fastest forward among the measured capable candidates, when it is not ``chosen`` and the
        algorithm can split a call between two implementations (``Algorithm.split``)."""
        if self.algorithm.split is None or self.algorithm.measured_forward_speeds is None:
            return None, ()
        rates = self.algorithm.measured_forward_speeds(features)
        timed = sorted((s for s in measured if s.label in rates), key=lambda s: -rates[s.label])
        if chosen not in timed or timed[0] is chosen:
            return None, ()
        return timed[0], tuple((s.label, rates[s.label]) for s in timed)

    def explain(self, *args: Any, **kwargs: Any) -> Decision:
        """The decision a call with these arguments would get (arrays or ``jax.ShapeDtypeStruct``)."""
        return self._decide(self.bind(*args, **kwargs).features)

    def decide(self, call: Any) -> Decision:
        """The decision an already bound call (``bind``) gets."""
        return self._decide(call.features)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(self.bind(*args, **kwargs))

    def run(self, call: Any) -> Any:
        """Serves an already bound call (``bind``): chooses, warns on fallback, runs the implementation.

        A ``FallbackWarning`` points at the first frame outside ejkernel (``errors.caller_stacklevel``).
        """
        decision = self._decide(call.features)
        feature_rejected = decision.rejected[len(self._hardware_rejected) :]
        top = self.candidates[0] if self.candidates else None
        if (
            top is not None
            and decision.chosen.platform != top.platform
            and any(r[0] == top.label for r in feature_rejected)
        ):
            why = "; ".join(f"{label} cannot ({reason})" for label, reason in feature_rejected)
            if self.strict and decision.is_fallback:
                raise KernelUnavailableError(
                    f"{self.algorithm.name}: {why}; strict=True forbids handing the call to "
                    f"{decision.chosen.label}, so nothing ran"
                )
            message = f"{self.algorithm.name}: {decision.chosen.label} serves this call; {why}"
            logger.info(message)
            warnings.warn(message, FallbackWarning, stacklevel=caller_stacklevel())
        impl = _built(decision.chosen, self.interpret and decision.chosen.uses_pallas)
        if decision.forward is not None:
            forward = _built(decision.forward, self.interpret and decision.forward.uses_pallas)
            return self.algorithm.split(call, forward, impl)
        return impl(call)


def _named_candidates(specs: list[KernelSpec], platform: str) -> list[KernelSpec]:
    """The specs a call naming ``platform`` considers, in order: its own, those of the platforms they fall
    back to (each platform's specs by priority), then XLA's."""
    own = [s for s in specs if s.platform == platform]
    chain = [p for p in dict.fromkeys(q for s in own for q in s.falls_back_to) if p not in (platform, FALLBACK_PLATFORM)]
    wanted = own + [s for p in chain for s in specs if s.platform == p]
    return wanted + [s for s in specs if s.platform == FALLBACK_PLATFORM and s.platform != platform]


@functools.cache
def _built(spec: KernelSpec, interpret: bool) -> Callable[..., Any]:
    return spec.build(interpret)


def get_kernel(name: str, platform: str = "auto", *, strict: bool = False, interpret: bool = False) -> Kernel:
    """The implementation of ``name`` for ``platform`` ("auto", "xla", "pallas_tpu", "triton", "mosaic_gpu",
    "cudnn"; "pallas" is an alias of "pallas_tpu").

    "auto" considers every implementation that runs on the current device (with ``interpret=True``,
    every Pallas one too), highest priority first. A named platform considers its own implementations,
    then those of the platforms they fall back to (``KernelSpec.falls_back_to``: the Mosaic-GPU kernel's
    is Triton), then XLA's. If the named platform cannot run here, one ``FallbackWarning`` says so
    (``strict=True`` raises ``KernelUnavailableError`` instead); per-call feature fallback is decided at
    each call.
    """
    _ensure_builtin_kernels()
    platform = canonical_platform(platform)
    algorithm = _ALGORITHMS.get(name)
    if algorithm is None:
        raise KernelNotFoundError(f"no algorithm {name!r}; known: {sorted(_ALGORITHMS)}")
    if platform != "auto" and platform not in KNOWN_PLATFORMS and not any(s.platform == platform for s in _specs(name)):
        raise ValueError(f"unknown platform {platform!r}; expected 'auto' or one of {KNOWN_PLATFORMS}")
    device_platform = current_platform()
    specs = _specs(name)
    rejected: list[tuple[str, str]] = []
    if platform == "auto":
        wanted = specs
    else:
        wanted = _named_candidates(specs, platform)
    candidates = []
    for spec in wanted:
        reason = spec.hardware_reason(device_platform, interpret)
        if reason is None:
            candidates.append(spec)
        elif platform != "auto":
            rejected.append((spec.label, reason))
    if platform not in ("auto", FALLBACK_PLATFORM):
        if not any(s.platform == platform for s in specs):
            rejected.append((platform, f"no {name} implementation is registered for platform {platform!r}"))
        if not any(s.platform == platform for s in candidates):
            why = "; ".join(f"{label} {reason}" for label, reason in rejected if label.split(":")[0] == platform)
            instead = ", then ".join(repr(p) for p in dict.fromkeys(s.platform for s in candidates))
            if strict:
                raise KernelUnavailableError(
                    f"{name}: asked for {platform!r}, which cannot run here: {why}. strict=True forbids "
                    f"falling back to {instead}, so no kernel was returned"
                )
            message = f"{name}: asked for {platform!r}, which cannot run here: {why}. Calls run on {instead} instead"
            warnings.warn(message, FallbackWarning, stacklevel=caller_stacklevel())
            logger.info(message)
    return Kernel(algorithm, platform, candidates, rejected, strict=strict, interpret=interpret)


_BUILTINS_LOCK = threading.RLock()
_builtins_state = "absent"  # -> "loading" (by the thread holding the lock) -> "loaded"


def _ensure_builtin_kernels() -> None:
    """Registers the built-in algorithms and implementations on first use, once, thread-safely.

    Other threads wait on the lock until every built-in is registered; the loading thread itself
    re-enters (its spec modules call ``register_kernel``) and returns at once. A failed import leaves
    nothing half-registered, so the next call tries again.
    """
    global _builtins_state
    if _builtins_state == "loaded":
        return
    with _BUILTINS_LOCK:
        if _builtins_state != "absent":
            return
        _builtins_state = "loading"
        registered: list[tuple[str, str, str]] = []
        try:
            modules = [importlib.import_module(name) for name in BUILTIN_MODULES]
            for algorithm in (a for m in modules for a in getattr(m, "ALGORITHMS", ())):
                if algorithm.name not in _ALGORITHMS:
                    register_algorithm(algorithm)
            for spec in (s for m in modules for s in getattr(m, "SPECS", ())):
                register_kernel(spec)
                registered.append(spec.key)
        except BaseException:
            for key in registered:
                _KERNELS.pop(key, None)
            _builtins_state = "absent"
            raise
        _builtins_state = "loaded"
