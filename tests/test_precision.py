"""One precision meaning: float32 products are IEEE float32 on every backend, unless the user lowers it with
``jax.default_matmul_precision`` (``ejkernel.ops.attention.precision``). Read from each backend's traced
program: every ``dot_general`` (the Pallas kernels' too) carries the precision the rule names."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import ejkernel
from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.ops.attention.precision import matmul_precision

S = jax.ShapeDtypeStruct((1, 64, 2, 32), jnp.float32)


def _dot_precisions(fn, dtype) -> set[str]:
    text = str(jax.make_jaxpr(jax.grad(lambda q, k, v: fn(q, k, v, dtype)[0].astype(jnp.float32).sum(),
                                       argnums=(0, 1, 2)))(S, S, S))
    found = set()
    for start in (m.end() for m in re.finditer(r"dot_general\[", text)):
        params = text[start:start + 400].split("preferred_element_type")[0]
        precision = re.search(r"precision=(\S+?\))", params) or re.search(r"precision=(\S+)", params)
        found.add(precision.group(1) if precision else "None")
    return found


BACKENDS = {
    "xla": lambda q, k, v, dtype: ejkernel.get_kernel("attention", "xla")(q, k, v, dtype=dtype, causal=True),
    "xla:chunked": lambda q, k, v, dtype: chunked_attention(q, k, v, dtype=dtype, causal=True, block_q=16, block_kv=16),
    "pallas_tpu": lambda q, k, v, dtype: ejkernel.get_kernel("attention", "pallas_tpu", interpret=True)(
        q, k, v, dtype=dtype, causal=True),
    "triton": lambda q, k, v, dtype: ejkernel.get_kernel("attention", "triton", interpret=True)(
        q, k, v, dtype=dtype, causal=True),
}


def test_the_rule():
    assert matmul_precision(jnp.float32) == jax.lax.Precision.HIGHEST
    assert matmul_precision(jnp.float64) == jax.lax.Precision.HIGHEST
    assert matmul_precision(jnp.bfloat16) is None and matmul_precision(jnp.float16) is None
    with jax.default_matmul_precision("tensorfloat32"):
        assert matmul_precision(jnp.float32) == jax.lax.Precision.HIGH
    with jax.default_matmul_precision("bfloat16"):
        assert matmul_precision(jnp.float32) == jax.lax.Precision.DEFAULT


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_product_of_a_float32_call_is_ieee_float32(backend):
    precisions = _dot_precisions(BACKENDS[backend], jnp.float32)
    assert precisions and all("HIGHEST" in p for p in precisions), precisions


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_lower_default_precision_is_honoured(backend):
    with jax.default_matmul_precision("tensorfloat32"):
        precisions = _dot_precisions(BACKENDS[backend], jnp.float32)
    assert precisions and not any("HIGHEST" in p for p in precisions), precisions
