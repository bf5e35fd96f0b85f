"""Exceptions and warnings raised by ejkernel, and where a warning points (the caller's line)."""

from __future__ import annotations

import inspect

__all__ = [
    "EjkernelError",
    "KernelNotFoundError",
    "KernelUnavailableError",
    "DuplicateKernelError",
    "FallbackWarning",
    "caller_stacklevel",
]

#: Packages whose frames a warning skips to reach the user's line: ejkernel itself, and the libraries
#: that call it on the user's behalf (JAX while tracing or differentiating, flax inside a module).
INTERNAL_PACKAGES = frozenset({"ejkernel", "jax", "jaxlib", "flax"})


class EjkernelError(Exception):
    """Base class of every ejkernel error."""


class KernelNotFoundError(EjkernelError, LookupError):
    """No implementation is registered under the requested name or platform."""


class KernelUnavailableError(EjkernelError, RuntimeError):
    """The requested implementation cannot serve this device or call and ``strict=True`` forbids fallback."""


class DuplicateKernelError(EjkernelError, ValueError):
    """An implementation with the same (name, platform, variant) key is already registered."""


class FallbackWarning(UserWarning):
    """A call asked for one implementation and is served by another; the message says why."""


def _is_internal(frame: object) -> bool:
    module = frame.f_globals.get("__name__") or ""  # type: ignore[attr-defined]
    return module.partition(".")[0] in INTERNAL_PACKAGES


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at the first frame
    outside ejkernel (and outside JAX and flax when they call it): the user's line, however deep the call."""
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None  # the function about to call warnings.warn
    level = 1
    while frame is not None and _is_internal(frame):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1
