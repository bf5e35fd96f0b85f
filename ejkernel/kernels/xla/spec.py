"""Registry records of the XLA implementations: the dense reference and the chunked path.

The dense reference runs everywhere, serves every call, and has the lowest priority: it is what every
call ends up on when nothing better serves it, and the oracle the others are checked against.

The chunked path is chosen over it for large score matrices: the dense reference stays the choice while
its ``[B, Hq, Sq, Skv]`` score matrix is below the device's ``chunk_policy`` limit (2**23 elements on a
CPU, 2**29 on an accelerator), or no larger than K and V themselves (decoding), where it is as fast or
faster and also returns the weights. Above it, the chunked path serves the call in O(Sq + Skv) memory and
returns ``(output, None)``.

Only the dense reference forms the weights, so a call with ``return_weights=True`` goes to it (every other
implementation declines it), unless they cannot fit (``weights_fit``): then no implementation serves the
call, and the error says why.
"""

from __future__ import annotations

import jax
import numpy as np

from ejkernel.kernels.xla.chunk_policy import dense_score_elements, input_elements, policy_for
from ejkernel.ops.attention.features import ALL_LAYOUTS, AttentionCapabilities, AttentionFeatures
from ejkernel.platform import current_platform
from ejkernel.registry import KernelSpec

__all__ = ["REFERENCE", "CHUNKED", "CHUNKED_WITH_LSE", "SPECS", "dense_is_small", "weights_fit", "MAX_WEIGHTS_ELEMENTS",
           "weights_bytes", "device_memory_bytes"]

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
_EVERY_DEVICE = frozenset({"cpu", "cuda", "rocm", "tpu"})


def dense_is_small(f: AttentionFeatures) -> str | None:
    """Refuses calls whose dense score matrix is below the device's limit or below the K/V inputs' size."""
    platform = current_platform()
    limit = policy_for(platform).dense_score_limit
    elements = dense_score_elements(f)
    if elements < limit:
        return f"dense score matrix of {elements} elements is below {limit} on {platform}: the dense reference serves it"
    if elements <= input_elements(f):
        return (
            f"dense score matrix of {elements} elements is no larger than K and V ({input_elements(f)}): "
            "the dense reference serves it"
        )
    return None


#: The largest ``B * Hq * Sq * Skv`` served with ``return_weights=True`` where the device does not report its
#: memory (a CPU): 2**31 elements, 8 GiB per float32 copy.
MAX_WEIGHTS_ELEMENTS = 2**31


def device_memory_bytes() -> int | None:
    """The memory of the device JAX would use, where it reports it (GPUs and TPUs do; a CPU does not)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def weights_bytes(f: AttentionFeatures) -> int:
    """What the dense reference holds to return the weights, estimated: three float32 ``[B, Hq, Sq, Skv]``
    arrays (logits, exponentials, weights) and the weights in the call's dtype."""
    return dense_score_elements(f) * (3 * 4 + np.dtype(f.dtype).itemsize)


def weights_fit(f: AttentionFeatures) -> str | None:
    """Refuses ``return_weights=True`` when the weights cannot fit: past the device's memory where it reports
    it (``memory_stats()["bytes_limit"]``), past ``MAX_WEIGHTS_ELEMENTS`` elsewhere."""
    if not f.return_weights:
        return None
    elements = dense_score_elements(f)
    limit = device_memory_bytes()
    if limit is not None and weights_bytes(f) > limit:
        return (
            f"return_weights=True needs the [B, Hq, Sq, Skv] weights ({elements} elements, about "
            f"{weights_bytes(f) / 2**30:.1f} GiB with the logits), more than this device's {limit / 2**30:.1f} GiB"
        )
    if limit is None and elements > MAX_WEIGHTS_ELEMENTS:
        return (
            f"return_weights=True needs the [B, Hq, Sq, Skv] weights ({elements} elements), more than "
            f"{MAX_WEIGHTS_ELEMENTS} (MAX_WEIGHTS_ELEMENTS)"
        )
    return None


def _every_feature(dtypes: frozenset[str], softmax_dtypes: frozenset[str], **extra) -> AttentionCapabilities:
    return AttentionCapabilities(
        dtypes=dtypes, different_v_head_dim=True, bias_layouts=ALL_LAYOUTS, mask_layouts=ALL_LAYOUTS,
        bias_with_mask=True, causal=True, window=True, logits_soft_cap=True, sinks=True, dropout=True,
        softmax_dtypes=softmax_dtypes, **extra,
    )


def _build_reference(interpret: bool):
    del interpret  # plain XLA has no interpret mode
    from ejkernel.kernels.xla.reference import reference_attention

    return reference_attention


def _build_chunked(interpret: bool):
    del interpret
    from ejkernel.kernels.xla.chunked import chunked_without_lse

    return chunked_without_lse


def _build_chunked_with_lse(interpret: bool):
    del interpret
    from ejkernel.kernels.xla.chunked import chunked_with_row_lse

    return chunked_with_row_lse


REFERENCE = KernelSpec(
    name="attention",
    platform="xla",
    variant="default",
    priority=0,
    devices=_EVERY_DEVICE,
    build=_build_reference,
    capabilities=_every_feature(_FLOATS, _FLOATS, weights=True, extra_check=weights_fit, segment_ids=True,
                                kv_lengths=True),
    description="dense XLA reference; materialises the [B, Hq, Sq, Skv] weights; the parity oracle",
)

CHUNKED = KernelSpec(
    name="attention",
    platform="xla",
    variant="chunked",
    priority=10,
    devices=_EVERY_DEVICE,
    build=_build_chunked,
    capabilities=_every_feature(
        frozenset({"float16", "bfloat16", "float32"}), frozenset({"float32"}), extra_check=dense_is_small,
        segment_ids=True, kv_lengths=True,
    ),
    description="chunked XLA attention (online softmax over kv chunks, O(S) memory); returns no weights",
)

#: ``attention_with_lse`` in XLA: the chunked path at every size (a ring step or a split-key part is a piece of a
#: larger call, so the dense reference's size rule does not apply).
CHUNKED_WITH_LSE = KernelSpec(
    name="attention_with_lse",
    platform="xla",
    variant="chunked",
    priority=10,
    devices=_EVERY_DEVICE,
    build=_build_chunked_with_lse,
    capabilities=_every_feature(frozenset({"float16", "bfloat16", "float32"}), frozenset({"float32"}),
                                segment_ids=True, kv_lengths=True),
    description="chunked XLA attention returning (output, lse [B, Sq, Hq]); differentiable in both",
)

SPECS = (REFERENCE, CHUNKED, CHUNKED_WITH_LSE)
