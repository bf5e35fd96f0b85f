"""The seed's import path, kept importable: ``ejkernel.kernels._xla.attention._interface.attention``."""
