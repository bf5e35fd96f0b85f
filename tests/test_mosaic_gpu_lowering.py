"""The Mosaic-GPU kernels lower for CUDA on a CPU, for every head dim and feature class they claim.

``jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))`` runs Pallas' Mosaic-GPU lowering of the real
kernels (wgmma, TMA, register layouts: the code the interpreter does not run) without a GPU; a layout or
API error shows here before the device. Forward and gradients (the native backward at D64/D128, the Triton
one at D256), each in a fresh trace.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import pytest

from ejkernel.kernels.pallas_mosaic_gpu.blocks import BackwardBlocks, ForwardBlocks
from ejkernel.kernels.pallas_mosaic_gpu.interface import flash_attention

FEATURES = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"sliding_window": (64, 32)},
    "soft_cap": {"logits_soft_cap": 20.0, "causal": True},
    "sinks": {"softmax_aux": jax.ShapeDtypeStruct((4, 2), jnp.float32)},
    "kv_lengths": {"causal": True, "kv_lengths": jax.ShapeDtypeStruct((1,), jnp.int32)},
    "segment_ids": {"q_segment_ids": jax.ShapeDtypeStruct((1, 300), jnp.int32),
                    "kv_segment_ids": jax.ShapeDtypeStruct((1, 260), jnp.int32),
                    "kv_lengths": jax.ShapeDtypeStruct((1,), jnp.int32), "sliding_window": (128, 0)},
}
ARRAYS = ("softmax_aux", "kv_lengths", "q_segment_ids", "kv_segment_ids")


# bfloat16 at every head dim; float16 at D64 and D128 (every head dim under the thorough profile).
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "thorough"
CELLS = [(d, t) for d in (64, 96, 128, 256) for t in ("bfloat16", "float16")
         if t == "bfloat16" or THOROUGH or d in (64, 128)]


@pytest.mark.parametrize("head_dim, dtype", CELLS)
@pytest.mark.parametrize("feature", list(FEATURES))
def test_forward_and_gradients_lower_for_cuda(feature, head_dim, dtype):
    extra = dict(FEATURES[feature])
    arrays = {name: extra.pop(name) for name in ARRAYS if name in extra}
    q = jax.ShapeDtypeStruct((1, 300, 4, head_dim), jnp.dtype(dtype))
    kv = jax.ShapeDtypeStruct((1, 260, 2, head_dim), jnp.dtype(dtype))

    def loss(q, k, v, arrays):
        out = flash_attention(q, k, v, dtype=dtype, **arrays, **extra)[0]
        return out.astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, arrays).lower(lowering_platforms=("cuda",))
    calls = lowered.as_text().count("custom_call @mosaic_gpu")
    # The forward, then dK/dV and dQ natively; at D256 the backward is Triton's (another custom call).
    assert calls == (3 if head_dim <= 128 else 1), calls


def test_causal_query_blocks_in_launch_order_lower_for_cuda():
    """``heavy_first`` off (the forward's and the dQ kernel's query blocks in grid order) lowers too."""
    q = jax.ShapeDtypeStruct((1, 300, 4, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 260, 2, 128), jnp.bfloat16)
    blocks = {"forward_blocks": ForwardBlocks(heavy_first=False), "backward_blocks": BackwardBlocks(dq_heavy_first=False)}

    def loss(q, k, v):
        return flash_attention(q, k, v, causal=True, dtype="bfloat16", **blocks)[0].astype(jnp.float32).sum()

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("custom_call @mosaic_gpu") == 3


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_persistent_forward_lowers_for_cuda(head_dim):
    """``ForwardBlocks.persistent_ctas``: the H200's 132 CTAs looping over the query blocks, causal."""
    from ejkernel.kernels.pallas_mosaic_gpu.blocks import choose_forward_blocks

    q = jax.ShapeDtypeStruct((2, 1024, 4, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 1024, 2, head_dim), jnp.bfloat16)
    blocks = dataclasses.replace(choose_forward_blocks(head_dim, 1024), persistent_ctas=132)
    fn = lambda q, k, v: flash_attention(q, k, v, causal=True, dtype="bfloat16", forward_blocks=blocks)[0]  # noqa: E731
    lowered = jax.jit(fn).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("custom_call @mosaic_gpu") == 1
