"""Exceptions and warnings raised by ejkernel."""

from __future__ import annotations

__all__ = [
    "EjkernelError",
    "KernelNotFoundError",
    "KernelUnavailableError",
    "DuplicateKernelError",
    "FallbackWarning",
]


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
