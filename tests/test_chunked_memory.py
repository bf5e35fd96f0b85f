"""Compiled peak memory: linear in the sequence length on the chunked path, quadratic on the dense one.

Read from XLA's own buffer assignment (``compile().memory_analysis()``), so nothing large is run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ejkernel.kernels.xla.chunked import chunked_attention
from ejkernel.kernels.xla.reference import attention as reference

LENGTHS = (128, 256, 512)


def _temp_bytes(fn, seq: int, backward: bool) -> int:
    sds = jax.ShapeDtypeStruct((1, seq, 4, 16), jnp.float32)

    def forward(q, k, v):
        return fn(q, k, v)[0]

    def loss(q, k, v):
        return jnp.sum(forward(q, k, v))

    f = jax.grad(loss, argnums=(0, 1, 2)) if backward else forward
    analysis = jax.jit(f).lower(sds, sds, sds).compile().memory_analysis()
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def _growth(fn, backward: bool) -> tuple[float, float]:
    """(t[2S] / t[S], (t[4S] - t[2S]) / (t[2S] - t[S])): ~2 and 2 when linear, ~4 and 4 when quadratic."""
    a, b, c = (_temp_bytes(fn, s, backward) for s in LENGTHS)
    return b / a, (c - b) / (b - a)


def _kw(causal: bool) -> dict:
    return dict(dtype=jnp.float32, causal=causal, sliding_window=None)


@pytest.mark.parametrize("backward,causal", [(False, True), (True, False), (True, True)])
def test_chunked_memory_is_linear_and_dense_quadratic(backward, causal):
    chunked_ratio, chunked_step = _growth(
        lambda q, k, v: chunked_attention(q, k, v, **_kw(causal), block_q=32, block_kv=64), backward)
    dense_ratio, dense_step = _growth(lambda q, k, v: reference(q, k, v, **_kw(causal)), backward)
    assert chunked_ratio < 2.1 and 1.5 < chunked_step < 2.5, (chunked_ratio, chunked_step)
    assert dense_ratio > 3.5 and dense_step > 3.5, (dense_ratio, dense_step)
