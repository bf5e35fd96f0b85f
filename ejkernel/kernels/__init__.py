"""Implementations, one folder per backend. ``_register_builtins`` adds them to the registry."""

from __future__ import annotations

import importlib

# Modules that define a registry ``SPEC`` (or ``SPECS``). Importing one must not import Pallas/Triton:
# the kernel itself is imported by the spec's ``build`` on first use.
_BUILTIN_SPEC_MODULES = (
    "ejkernel.kernels._xla.attention.spec",
    "ejkernel.kernels._pallas.tpu.attention.spec",
    "ejkernel.kernels._xla.attention.chunked_spec",
    "ejkernel.kernels._triton.attention.spec",
)


def _register_builtins() -> None:
    from ejkernel.ops.attention.api import ATTENTION
    from ejkernel.registry import _ALGORITHMS, register_algorithm, register_kernel

    if ATTENTION.name not in _ALGORITHMS:
        register_algorithm(ATTENTION)
    for module_name in _BUILTIN_SPEC_MODULES:
        module = importlib.import_module(module_name)
        for spec in getattr(module, "SPECS", None) or (module.SPEC,):
            register_kernel(spec)
