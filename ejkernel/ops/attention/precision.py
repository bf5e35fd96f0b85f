"""What the matrix products of a float32 computation mean, on every backend: one rule, written once.

``dtype=float32`` means IEEE float32 products (``lax.Precision.HIGHEST``) on every backend: XLA on a GPU
would otherwise run them as TF32 and a TPU as bfloat16 passes, so the same call would give 1e-3 accuracy on
one backend and 1e-7 on another. A user who wants the faster products says so the JAX way, with
``jax.default_matmul_precision("tensorfloat32")`` (or ``"bfloat16"``, ...) around the call or in the
config: then every backend uses the device's default for that setting instead. Products in bfloat16 or
float16 are unaffected (they always accumulate in float32).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["matmul_precision"]


_P = jax.lax.Precision
#: ``jax.default_matmul_precision`` names as the precision a kernel passes to its dots.
_BY_NAME = {
    "highest": _P.HIGHEST, "float32": _P.HIGHEST,
    "high": _P.HIGH, "tensorfloat32": _P.HIGH, "bfloat16_3x": _P.HIGH,
    "default": _P.DEFAULT, "bfloat16": _P.DEFAULT, "fastest": _P.DEFAULT,
}


def matmul_precision(dtype: Any) -> jax.lax.Precision | None:
    """The ``precision`` of the products of a computation in ``dtype`` (read at trace time).

    For float32 and float64: ``HIGHEST``, or what ``jax.default_matmul_precision`` names when it is set
    (kernels cannot read that setting themselves, so it is passed explicitly). ``None`` for narrower dtypes.
    """
    if jnp.dtype(dtype).itemsize < 4:
        return None
    setting = jax.config.jax_default_matmul_precision
    if setting is None:
        return _P.HIGHEST
    return _BY_NAME.get(str(setting).lower())
