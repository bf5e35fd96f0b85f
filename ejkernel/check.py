"""``ejkernel check``: every implementation that can run here against the XLA oracle.

Each case draws random inputs (a distinct stream for q, k, v), runs the implementation through the registry
(forward and gradients w.r.t. q, k, v, bias and sinks) and compares with the oracle: the XLA reference
in float32 at highest matmul precision. The error is ``max|x - ref| / max(max|ref|, 1e-6)`` per output,
except for the sinks' gradient, a sum over rows measured against the sum of its terms' magnitudes.
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

__all__ = [
    "CheckCase", "CheckResult", "CASES", "QUICK_CASES", "Reference", "make_inputs", "oracle", "reference_for",
    "relative_error", "run_case", "run_check", "select_cases",
]

#: Relative tolerance of the compute dtype against the float32 oracle.
TOLERANCE = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One configuration: shapes and features. ``bias_shape``/``mask_shape`` are "B|1,q|kv|1"."""

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


#: The cases ``ejkernel check`` runs (each feature, GQA/MQA, Sq != Skv both ways, ragged lengths, decode).
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

#: A few cases that together touch GQA, causal alignment with Sq != Skv, bias, mask and sinks (``--quick``).
QUICK_CASES = ("causal", "mqa+mask+bias", "sinks")


def _operand_shape(spec: str, c: CheckCase) -> tuple[int, ...]:
    b, h = spec.split(",")
    heads = {"q": c.num_q_heads, "kv": c.num_kv_heads, "1": 1}[h]
    return (c.batch if b == "B" else 1, heads, c.q_len, c.kv_len)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def make_inputs(case: CheckCase, seed: int = 0) -> dict[str, Any]:
    """Random float32 inputs for ``case``, each operand from its own stream of ``seed``.

    Drawn with NumPy: eager ``jax.random`` compiles anew for every shape, which dominated ``check``'s time.
    """
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    c = case
    dv = c.v_head_dim or c.head_dim
    args: dict[str, Any] = {
        "query": _normal(rngs[0], (c.batch, c.q_len, c.num_q_heads, c.head_dim)),
        "key": _normal(rngs[1], (c.batch, c.kv_len, c.num_kv_heads, c.head_dim)),
        "value": _normal(rngs[2], (c.batch, c.kv_len, c.num_kv_heads, dv)),
        "causal": c.causal,
        "sliding_window": c.sliding_window,
        "logits_soft_cap": c.logits_soft_cap,
        "softmax_scale": c.softmax_scale,
    }
    if c.bias_shape:
        args["bias"] = _normal(rngs[3], _operand_shape(c.bias_shape, c))
    if c.mask_shape:
        args["attention_mask"] = jnp.asarray(rngs[4].random(_operand_shape(c.mask_shape, c)) < 0.8)
    if c.sinks:
        shape = (c.num_q_heads, 2) if c.sinks == "per_head" else (3,)
        args["softmax_aux"] = _normal(rngs[5], shape)
    return args


_DIFF_ARGS = ("query", "key", "value", "bias", "softmax_aux")


def _forward_and_vjp(
    fn, args: dict[str, Any], dtype: Any, cotangent: jax.Array, with_weights: bool = False
) -> tuple[Any, dict[str, Any], Any]:
    """``fn``'s output, its VJP with ``cotangent`` w.r.t. every differentiable argument, and (if asked) its weights.

    One jit per call: arrays are traced arguments, Python values (causal, window, ...) are baked in, so
    each case compiles once; dispatch (and any ``FallbackWarning``) happens while tracing.
    """
    diff = {k: args[k] for k in _DIFF_ARGS if args.get(k) is not None}
    arrays = {k: v for k, v in args.items() if k not in diff and isinstance(v, (jax.Array, np.ndarray))}
    static = {k: v for k, v in args.items() if k not in diff and k not in arrays}

    @jax.jit
    def run(diff, arrays, cotangent):
        def forward(d):
            return fn(**d, **arrays, **static, dtype=dtype)

        out, vjp, weights = jax.vjp(forward, diff, has_aux=True)
        (grads,) = vjp(cotangent.astype(out.dtype))
        return out, grads, weights if with_weights else None

    return run(diff, arrays, cotangent)


def _loss_and_grads(fn, args: dict[str, Any], dtype: Any, cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    out, grads, _ = _forward_and_vjp(fn, args, dtype, cotangent)
    return out, grads


def _oracle(args: dict[str, Any], cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    from ejkernel.kernels._xla.attention._interface import attention as reference

    with jax.default_matmul_precision("highest"):
        return _forward_and_vjp(reference, args, jnp.float32, cotangent, with_weights=True)


def oracle(args: dict[str, Any], cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The XLA reference at float32, highest precision: forward output and gradients."""
    out, grads, _ = _oracle(args, cotangent)
    return out, grads


@dataclasses.dataclass(frozen=True)
class Reference:
    """The oracle's output and gradients for one case, and the scale each error is measured against."""

    out: jax.Array
    grads: dict[str, jax.Array]
    scales: dict[str, float]


def reference_for(args: dict[str, Any], cotangent: jax.Array) -> Reference:
    """Runs the oracle once; errors are relative to ``max|ref|`` except where ``scales`` says otherwise."""
    out, grads, weights = _oracle(args, cotangent)
    scales = {}
    if "softmax_aux" in grads:
        scales["softmax_aux"] = _sink_gradient_scale(args["softmax_aux"], out, weights, cotangent)
    return Reference(out, grads, scales)


def _sink_gradient_scale(softmax_aux: Any, out: Any, weights: Any, cotangent: Any) -> float:
    """The largest ``sum_rows |row term|`` of the sinks' gradient.

    Sink ``j`` of a row with output ``o``, cotangent ``g`` and sink probability ``p_j`` gets ``-p_j (g . o)``,
    summed over every row that sink serves. With a random cotangent those terms cancel (by a factor of 20
    to 400 here), and a bf16 result that is accurate term by term has a large error relative to the sum.
    Measuring it against the sum of the terms' magnitudes is the usual bound for a computed sum.
    """
    out = np.asarray(out, np.float64)  # [B, Sq, Hq, Dv]
    g_dot_o = np.einsum("bqhd,bqhd->bhq", np.asarray(cotangent, np.float64), out)
    sink_mass = 1.0 - np.asarray(weights, np.float64).sum(-1)  # [B, Hq, Sq]: what the sinks took from each row
    aux = np.asarray(softmax_aux, np.float64)
    aux = np.broadcast_to(aux, (out.shape[2], aux.shape[-1]))  # [Hq, n]
    share = np.exp(aux - aux.max(-1, keepdims=True))
    share /= share.sum(-1, keepdims=True)
    terms = np.abs(np.einsum("bhq,hn->bhqn", sink_mass * g_dot_o, share))
    per_sink = terms.sum((0, 2)) if np.ndim(softmax_aux) == 2 else terms.sum((0, 1, 2))
    return float(per_sink.max())


def relative_error(x: Any, ref: Any, scale: float | None = None) -> float:
    """``max|x - ref| / max(scale, 1e-6)`` in NumPy, ``scale`` defaulting to ``max|ref|``; ``inf`` if not finite."""
    x = np.asarray(x).astype(np.float32)
    ref = np.asarray(ref).astype(np.float32)
    if not np.all(np.isfinite(x)):
        return float("inf")
    if scale is None:
        scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(x - ref)) / max(scale, 1e-6))


@dataclasses.dataclass
class CheckResult:
    """The errors of one implementation on one case and compute dtype, against the oracle."""

    implementation: str
    case: str
    dtype: str
    served_by: str
    errors: dict[str, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())


def _cotangent(case: CheckCase, seed: int) -> jax.Array:
    shape = (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim)
    return _normal(np.random.default_rng(np.random.SeedSequence([seed, 1])), shape)


def run_case(
    platform: str,
    case: CheckCase,
    dtype: str,
    interpret: bool = False,
    seed: int = 0,
    reference: Reference | None = None,
) -> CheckResult:
    """Checks ``platform`` on one case and compute dtype; ``reference`` reuses a ``reference_for`` result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        kernel = get_kernel("attention", platform, interpret=interpret)
    args = make_inputs(case, seed)
    decision = kernel.explain(**args, dtype=dtype)
    cotangent = _cotangent(case, seed)
    ref = reference if reference is not None else reference_for(args, cotangent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        out, grads = _loss_and_grads(kernel, args, dtype, cotangent)
    errors = {"out": relative_error(out, ref.out)}
    errors.update({f"d{k}": relative_error(grads[k], g, ref.scales.get(k)) for k, g in ref.grads.items()})
    label = decision.chosen.label + (" (interpret)" if interpret and decision.chosen.uses_pallas else "")
    return CheckResult(platform, case.name, dtype, label, errors, TOLERANCE[dtype])


def select_cases(names: Iterable[str] | None = None, quick: bool = False) -> tuple[CheckCase, ...]:
    """``CASES`` restricted to ``names`` (exact case names) and/or to ``QUICK_CASES``."""
    cases = tuple(c for c in CASES if c.name in QUICK_CASES) if quick else CASES
    if names:
        names = list(names)
        unknown = sorted(set(names) - {c.name for c in CASES})
        if unknown:
            raise ValueError(f"unknown check case(s) {unknown}; known: {[c.name for c in CASES]}")
        cases = tuple(c for c in cases if c.name in names)
    return cases


def run_check(
    interpret: bool = False,
    platforms: Iterable[str] | None = None,
    cases: Iterable[CheckCase] = CASES,
    dtype: str | None = None,
) -> list[CheckResult]:
    """Runs every case on every implementation that can run here (Pallas ones too with ``interpret``).

    The oracle runs once per case and is shared by every platform and dtype.
    """
    records = list_kernels("attention")
    if platforms is None:
        platforms = sorted({r["platform"] for r in records if r["runnable"] or (interpret and r["interpretable"])})
    platforms = list(platforms)
    results = []
    for case in cases:
        args = make_inputs(case)
        reference = reference_for(args, _cotangent(case, 0))
        for platform in platforms:
            caps = [r for r in records if r["platform"] == platform]
            for d in [dtype] if dtype else _dtypes_for(platform, caps):
                results.append(run_case(platform, case, d, interpret=interpret, reference=reference))
    return results


def _dtypes_for(platform: str, records: list[dict[str, Any]]) -> list[str]:
    """float32 where XLA runs on CPU; the half types a GPU/TPU kernel is built for."""
    if platform == "xla":
        return ["float32", "bfloat16"]
    return ["bfloat16", "float32"]
