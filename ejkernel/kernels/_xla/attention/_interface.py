"""The seed's path of the XLA reference attention (``ejkernel.kernels.xla.reference``), same signature and defaults."""

from ejkernel.kernels.xla.reference import attention

__all__ = ["attention"]
