"""ejkernel: attention kernels for JAX with one set of semantics on every backend.

Public names: ``attention``, ``get_kernel``, ``list_kernels``, ``register_kernel``, ``explain`` and the
error types. Importing the package changes no global state (no JAX config, no environment, no files).
"""

from ejkernel.errors import (
    DuplicateKernelError,
    EjkernelError,
    FallbackWarning,
    KernelNotFoundError,
    KernelUnavailableError,
)
from ejkernel.ops.attention.api import attention
from ejkernel.ops.attention.api import explain_attention as explain
from ejkernel.registry import KernelSpec, get_kernel, list_kernels, register_kernel

__version__ = "0.1.0"

__all__ = [
    "attention",
    "explain",
    "get_kernel",
    "list_kernels",
    "register_kernel",
    "KernelSpec",
    "EjkernelError",
    "KernelNotFoundError",
    "KernelUnavailableError",
    "DuplicateKernelError",
    "FallbackWarning",
]
