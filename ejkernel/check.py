"""``ejkernel check``: every implementation that can run here against the XLA oracle.

Each case draws random inputs (distinct keys for q, k, v), runs the implementation through the registry
(forward and gradients w.r.t. q, k, v, bias and sinks) and compares with the oracle: the XLA reference
in float32 at highest matmul precision. The error is ``max|x - ref| / max(max|ref|, 1e-6)`` per output.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.errors import FallbackWarning
from ejkernel.registry import get_kernel, list_kernels

__all__ = ["CheckCase", "CheckResult", "CASES", "run_case", "run_check", "oracle", "relative_error"]

# Relative tolerance of the compute dtype against the float32 oracle.
TOLERANCE = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}


@dataclasses.dataclass(frozen=True)
class CheckCase:
    name: str
    batch: int = 2
    q_len: int = 128
    kv_len: int = 128
    num_q_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 64
    v_head_dim: int | None = None
    causal: bool = False
    sliding_window: Any = None
    bias_shape: str | None = None  # e.g. "B,q" "1,kv" "1,1"
    mask_shape: str | None = None
    logits_soft_cap: float | None = None
    sinks: str | None = None  # "per_head" or "shared"
    softmax_scale: float | None = None


CASES = (
    CheckCase("plain"),
    CheckCase("causal", causal=True, q_len=96, kv_len=160),
    CheckCase("window", sliding_window=(32, 8), q_len=160, kv_len=96),
    CheckCase("causal+window", causal=True, sliding_window=24),
    CheckCase("gqa+bias", num_q_heads=8, num_kv_heads=2, bias_shape="B,kv"),
    CheckCase("mqa+mask+bias", num_q_heads=4, num_kv_heads=1, bias_shape="1,q", mask_shape="B,1"),
    CheckCase("soft_cap", logits_soft_cap=5.0, softmax_scale=0.5),
    CheckCase("sinks", sinks="per_head", causal=True, q_len=64, kv_len=200),
    CheckCase("shared_sinks+gqa", sinks="shared", num_q_heads=6, num_kv_heads=3),
    CheckCase("ragged+dv", q_len=77, kv_len=131, head_dim=64, v_head_dim=32),
    CheckCase("decode", q_len=1, kv_len=300, causal=True, num_q_heads=8, num_kv_heads=2),
)


def _operand_shape(spec: str, c: CheckCase) -> tuple[int, ...]:
    b, h = spec.split(",")
    heads = {"q": c.num_q_heads, "kv": c.num_kv_heads, "1": 1}[h]
    return (c.batch if b == "B" else 1, heads, c.q_len, c.kv_len)


def make_inputs(case: CheckCase, seed: int = 0) -> dict[str, Any]:
    """Random float32 inputs for ``case``, each from its own key."""
    keys = jax.random.split(jax.random.key(seed), 6)
    c = case
    dv = c.v_head_dim or c.head_dim
    args: dict[str, Any] = {
        "query": jax.random.normal(keys[0], (c.batch, c.q_len, c.num_q_heads, c.head_dim), jnp.float32),
        "key": jax.random.normal(keys[1], (c.batch, c.kv_len, c.num_kv_heads, c.head_dim), jnp.float32),
        "value": jax.random.normal(keys[2], (c.batch, c.kv_len, c.num_kv_heads, dv), jnp.float32),
        "causal": c.causal,
        "sliding_window": c.sliding_window,
        "logits_soft_cap": c.logits_soft_cap,
        "softmax_scale": c.softmax_scale,
    }
    if c.bias_shape:
        args["bias"] = jax.random.normal(keys[3], _operand_shape(c.bias_shape, c), jnp.float32)
    if c.mask_shape:
        args["attention_mask"] = jax.random.bernoulli(keys[4], 0.8, _operand_shape(c.mask_shape, c))
    if c.sinks:
        shape = (c.num_q_heads, 2) if c.sinks == "per_head" else (3,)
        args["softmax_aux"] = jax.random.normal(keys[5], shape, jnp.float32)
    return args


_DIFF_ARGS = ("query", "key", "value", "bias", "softmax_aux")


def _loss_and_grads(fn, args: dict[str, Any], dtype: Any, cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    diff = {k: args[k] for k in _DIFF_ARGS if args.get(k) is not None}
    rest = {k: v for k, v in args.items() if k not in diff}

    def forward(d):
        out, _ = fn(**d, **rest, dtype=dtype)
        return out

    out, vjp = jax.vjp(forward, diff)
    (grads,) = vjp(cotangent.astype(out.dtype))
    return out, grads


def oracle(args: dict[str, Any], cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The XLA reference at float32, highest precision: forward output and gradients."""
    from ejkernel.kernels._xla.attention._interface import attention as reference

    with jax.default_matmul_precision("highest"):
        return _loss_and_grads(reference, args, jnp.float32, cotangent)


def relative_error(x: Any, ref: Any) -> float:
    x = np.asarray(jnp.asarray(x, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-6))


@dataclasses.dataclass
class CheckResult:
    implementation: str
    case: str
    dtype: str
    served_by: str
    errors: dict[str, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())


def run_case(platform: str, case: CheckCase, dtype: str, interpret: bool = False, seed: int = 0) -> CheckResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        kernel = get_kernel("attention", platform, interpret=interpret)
    args = make_inputs(case, seed)
    decision = kernel.explain(**args, dtype=dtype)
    cot_shape = (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim)
    cotangent = jax.random.normal(jax.random.key(seed + 1), cot_shape, jnp.float32)
    ref_out, ref_grads = oracle(args, cotangent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out, grads = _loss_and_grads(kernel, args, dtype, cotangent)
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{k}": relative_error(grads[k], ref_grads[k]) for k in ref_grads})
    label = decision.chosen.label + (" (interpret)" if interpret and decision.chosen.uses_pallas else "")
    return CheckResult(platform, case.name, dtype, label, errors, TOLERANCE[dtype])


def run_check(interpret: bool = False, platforms: Iterable[str] | None = None, cases: Iterable[CheckCase] = CASES, dtype: str | None = None) -> list[CheckResult]:
    """Runs every case on every implementation that can run here (Pallas ones too with ``interpret``)."""
    records = list_kernels("attention")
    if platforms is None:
        platforms = sorted({r["platform"] for r in records if r["runnable"] or (interpret and r["interpretable"])})
    results = []
    for platform in platforms:
        caps = [r for r in records if r["platform"] == platform]
        for case in cases:
            for d in ([dtype] if dtype else _dtypes_for(platform, caps)):
                results.append(run_case(platform, case, d, interpret=interpret))
    return results


def _dtypes_for(platform: str, records: list[dict[str, Any]]) -> list[str]:
    """float32 where XLA runs on CPU; the half types a GPU/TPU kernel is built for."""
    if platform == "xla":
        return ["float32", "bfloat16"]
    return ["bfloat16", "float32"]
