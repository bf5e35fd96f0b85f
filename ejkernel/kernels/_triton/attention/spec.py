"""Registry entry of the Pallas-Triton flash attention (platform "triton", NVIDIA GPUs).

Importing this module does not import Pallas: ``build`` loads the kernel on first use. The capabilities
cover the forward and backward pass together; any other call goes to XLA before tracing (DESIGN §2):

- dtypes bfloat16, float16 and float32 (float32 runs true-fp32 dots, smaller tiles; parity ~1e-5);
- head dims up to 256 for both D and Dv (padded to a power of 2 >= 16 inside: 96 -> 128, 192 -> 256),
  ``Dv != D``; larger head dims do not fit shared memory and are declared unsupported;
- causal and sliding window (fully masked blocks skipped), GQA/MQA without K/V repetition, soft cap,
  sinks ``[Hq, n]``/``[n]``, bias and boolean mask of every ``[B|1, Hq|Hkv|1]`` layout (with gradients for
  bias and sinks), any ``Sq``/``Skv`` (padded to block multiples, the padding masked);
- not dropout (no in-kernel RNG whose statistics we could test in interpret mode); softmax in float32 only.
- ``available`` rejects GPUs below compute capability 8.0 (no bf16 tensor cores for Triton there).
"""

from __future__ import annotations

from ejkernel.ops.attention.features import AttentionCapabilities, AttentionFeatures
from ejkernel.registry import KernelSpec

__all__ = ["CAPABILITIES", "SPEC", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256


def _head_dims(f: AttentionFeatures) -> str | None:
    if f.head_dim > MAX_HEAD_DIM or f.v_head_dim > MAX_HEAD_DIM:
        return f"head dims ({f.head_dim}, {f.v_head_dim}) above {MAX_HEAD_DIM} do not fit the Triton kernel's tiles"
    return None


CAPABILITIES = AttentionCapabilities(
    dtypes=frozenset({"bfloat16", "float16", "float32"}),
    head_dims=None,
    different_v_head_dim=True,
    causal=True,
    window=True,
    logits_soft_cap=True,
    sinks=True,
    dropout=False,
    softmax_dtypes=frozenset({"float32"}),
    extra_check=_head_dims,
)


def _available() -> str | None:
    """``None`` on a CUDA GPU of compute capability >= 8.0, else why not."""
    import jax

    try:
        devices = jax.devices("gpu")
    except RuntimeError as e:
        return f"no GPU visible to JAX ({e})"
    capability = str(getattr(devices[0], "compute_capability", "0"))
    try:
        major = int(capability.split(".")[0])
    except ValueError:
        return f"unknown compute capability {capability!r}"
    if major < 8:
        return f"needs compute capability >= 8.0, this GPU has {capability}"
    return None


def _build(interpret: bool):
    from ejkernel.kernels._triton.attention.interface import make_attention

    return make_attention(interpret)


SPEC = KernelSpec(
    name="attention",
    platform="triton",
    variant="default",
    priority=100,
    devices=frozenset({"cuda"}),
    build=_build,
    capabilities=CAPABILITIES,
    uses_pallas=True,
    description="Pallas-Triton flash attention: causal/window block skipping, GQA without K/V repetition, "
    "bias/mask/sinks/soft cap with gradients",
    available=_available,
)
