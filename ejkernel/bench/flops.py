"""FLOP counts of attention and the peak rates they are compared against.

Convention (FlashAttention papers, anchors.md): a forward pass does ``4 * B * Hq * Sq * Skv * D`` FLOPs
(two matmuls of ``2 * Sq * Skv * D`` each per head); causal counts half of that when ``Sq == Skv``;
forward+backward counts 3.5 times the forward (the backward is 2.5 forwards: five matmuls to the forward's
two). When ``Sq != Skv`` a causal call counts the exact fraction of (query, key) pairs it allows
(bottom-right alignment, ``docs/semantics.rst``): for a decode step (``Sq = 1``) that is every key, not half.

One pass of the Triton kernels alone (``ejkernel bench sweep``) counts its matmuls in forwards
(``PASS_FORWARDS``): the forward does two, dK/dV four (it recomputes ``S`` and ``dP``, then forms ``dV`` and
``dK``), dQ three (``S``, ``dP``, then ``dQ``). Their sum (4.5) exceeds the 3.5 above, which leaves the
recomputation out.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "MODES",
    "BACKWARD_FACTOR",
    "PASS_FORWARDS",
    "pass_flops",
    "causal_fraction",
    "attention_flops",
    "tflops_per_s",
    "DevicePeak",
    "DEVICE_PEAKS",
    "device_peak",
]

MODES = ("fwd", "fwd+bwd")
BACKWARD_FACTOR = 3.5  # forward + backward, in forwards
PASS_FORWARDS = {"forward": 1.0, "dkv": 2.0, "dq": 1.5}  # one Triton pass's matmuls, in forwards


def causal_fraction(q_len: int, kv_len: int) -> float:
    """Fraction of (query, key) pairs a causal call attends: 0.5 by convention when ``Sq == Skv``.

    Otherwise the exact count under bottom-right alignment: query ``i`` sees keys ``0 .. i + Skv - Sq``.
    """
    if q_len == kv_len:
        return 0.5
    offset = kv_len - q_len
    allowed = sum(min(kv_len, max(0, i + offset + 1)) for i in range(q_len))
    return allowed / (q_len * kv_len)


def attention_flops(
    batch: int, num_q_heads: int, q_len: int, kv_len: int, head_dim: int, *, causal: bool, mode: str
) -> float:
    """FLOPs of one attention call under the convention in the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    flops = 4.0 * batch * num_q_heads * q_len * kv_len * head_dim
    if causal:
        flops *= causal_fraction(q_len, kv_len)
    if mode == "fwd+bwd":
        flops *= BACKWARD_FACTOR
    return flops


def pass_flops(
    batch: int, num_q_heads: int, q_len: int, kv_len: int, head_dim: int, *, causal: bool, pass_name: str
) -> float:
    """Matmul FLOPs of one Triton pass (``PASS_FORWARDS``) under the forward's convention."""
    if pass_name not in PASS_FORWARDS:
        raise ValueError(f"pass must be one of {sorted(PASS_FORWARDS)}, got {pass_name!r}")
    forward = attention_flops(batch, num_q_heads, q_len, kv_len, head_dim, causal=causal, mode="fwd")
    return forward * PASS_FORWARDS[pass_name]


def tflops_per_s(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


@dataclasses.dataclass(frozen=True)
class DevicePeak:
    """Nominal dense tensor-core peaks (TFLOP/s) by dtype and, where measured, the practical ceiling."""

    name: str
    match: tuple[str, ...]  # lower-case substrings of ``device.device_kind``
    nominal: dict[str, float]
    measured_matmul_bf16: float | None = None
    note: str = ""


# Datasheet dense (no sparsity) rates. float32 on these GPUs runs as TF32 under JAX's default precision.
DEVICE_PEAKS = (
    DevicePeak(
        "H100 SXM",
        ("h100 80gb hbm3", "h100 sxm"),
        {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7},
        measured_matmul_bf16=790.0,
        note="nominal 989 dense bf16; ~790 measured for a large bf16 matmul (anchors.md)",
    ),
    DevicePeak("H100 PCIe", ("h100 pcie",), {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    DevicePeak("H200", ("h200",), {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    DevicePeak("A100", ("a100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
)


def device_peak(device_kind: str) -> DevicePeak | None:
    """The peak entry for a ``device_kind`` string; ``None`` when unknown (e.g. every CPU)."""
    kind = device_kind.lower()
    for peak in DEVICE_PEAKS:
        if any(m in kind for m in peak.match):
            return peak
    return None
