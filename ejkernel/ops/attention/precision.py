"""What the matrix products of a float32 computation mean, on every backend: one rule, written once.

``dtype=float32`` means IEEE float32 products (``lax.Precision.HIGHEST``) on every backend: XLA on a GPU
would otherwise run them as TF32 and a TPU as bfloat16 passes, so the same call would give 1e-3 accuracy on
one backend and 1e-7 on another. A user who wants the faster products says so the JAX way, with
``jax.default_matmul_precision("tensorfloat32")`` (or ``"bfloat16"``, ...) around the call or in the
config: then every backend uses the device's default for that setting instead. Products in bfloat16 or
float16 are unaffected (they always accumulate in float32).

One exception to "products in the inputs' dtype": in float16, the two products of the score gradient dS
(dS·K and dSᵀ·Q) take float32 operands (``score_gradient_dtype``). dS can pass float16's largest value
(65504) where dQ and dK do not; float32 operands at the float16 call's precision (on a GPU, TF32, which
holds every float16 value exactly and has float32's range) keep float16's accuracy without the overflow.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["matmul_precision", "score_gradient_dtype"]


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


def score_gradient_dtype(dtype: Any) -> jnp.dtype:
    """The operand dtype of the score-gradient products (dS·K, dSᵀ·Q) of a computation in ``dtype``.

    float32 for float16 (dS can exceed 65504 where the gradients fit); ``dtype`` itself otherwise
    (bfloat16 has float32's range). Run the products at ``matmul_precision(dtype)`` of the call's dtype.
    """
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype == jnp.float16 else dtype
