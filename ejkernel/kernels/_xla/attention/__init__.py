"""XLA implementations of attention: the dense reference (and oracle)."""

from ejkernel.kernels._xla.attention._interface import attention

__all__ = ["attention"]
