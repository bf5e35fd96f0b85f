"""The Mosaic-GPU kernels lower for CUDA on a CPU, for every head dim and feature class they claim.

``jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))`` runs Pallas' Mosaic-GPU lowering of the real
kernels (wgmma, TMA, register layouts: the code the interpreter does not run) without a GPU; a layout or
API error shows here before the device. Forward and gradients (the native backward at D64/D128, the Triton
one at D256), each in a fresh trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ejkernel.kernels.pallas_mosaic_gpu.interface import flash_attention

FEATURES = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"sliding_window": (64, 32)},
    "soft_cap": {"logits_soft_cap": 20.0, "causal": True},
    "sinks": {"softmax_aux": jax.ShapeDtypeStruct((4, 2), jnp.float32)},
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("feature", list(FEATURES))
def test_forward_and_gradients_lower_for_cuda(feature, head_dim, dtype):
    extra = dict(FEATURES[feature])
    aux = extra.pop("softmax_aux", None)
    q = jax.ShapeDtypeStruct((1, 300, 4, head_dim), jnp.dtype(dtype))
    kv = jax.ShapeDtypeStruct((1, 260, 2, head_dim), jnp.dtype(dtype))

    def loss(q, k, v, aux):
        out = flash_attention(q, k, v, softmax_aux=aux, dtype=dtype, **extra)[0]
        return out.astype(jnp.float32).sum()

    argnums = (0, 1, 2, 3) if aux is not None else (0, 1, 2)
    lowered = jax.jit(jax.grad(loss, argnums=argnums)).trace(q, kv, kv, aux).lower(lowering_platforms=("cuda",))
    calls = lowered.as_text().count("custom_call @mosaic_gpu")
    # The forward, then dK/dV and dQ natively; at D256 the backward is Triton's (another custom call).
    assert calls == (3 if head_dim <= 128 else 1), calls
