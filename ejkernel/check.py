"""``ejkernel check``: every implementation that can run here against an independent oracle.

Each case draws random inputs (a distinct stream for q, k, v), runs the implementation through the registry
(forward and gradients w.r.t. q, k, v, bias and sinks) and compares with the oracle. The oracle of
``ejkernel check`` (``case_reference``) is the XLA reference computed in **float64** where the device has
float64 (CPU, GPU), so that the float32 XLA rows are compared with something other than themselves; on a
TPU it is float32 at highest precision. (``oracle``/``reference_for``, used by the parity tests, keep the
float32 highest-precision reference.) The error is ``max|x - ref| / max(max|ref|, 1e-6)`` per output. The
output cotangent is noise plus the oracle's output, so that gradients summed over rows (sinks) do not
cancel (see ``case_reference``).

A case another platform served (a fallback) is reported as such, never as a pass; it fails the check when
the user named the platform (``ejkernel check --platform``).

``iter_check`` compiles ahead: a pool of threads traces and compiles the next rows (XLA, Triton and
Mosaic compilers release the GIL) while the main thread runs each row in order and yields its result, so a
line still prints as soon as its row is done.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.errors import FallbackWarning
from ejkernel.platform import canonical_platform, current_platform
from ejkernel.registry import get_kernel, kernel_specs, list_kernels

__all__ = [
    "CheckCase", "CheckResult", "CASES", "QUICK_CASES", "Reference", "make_inputs", "oracle", "reference_for",
    "case_reference", "relative_error", "run_case", "run_check", "iter_check", "select_cases", "packed_segment_ids",
    "default_workers",
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
    packed_docs: int = 0  # segment ids: this many documents of random lengths per row, then a padding tail
    kv_lengths: bool = False  # random kv_lengths in [1, kv_len]


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
    CheckCase("packed", packed_docs=5, causal=True, q_len=200, kv_len=200, num_q_heads=4, num_kv_heads=2),
    CheckCase("decode+kv_lengths", q_len=1, kv_len=300, causal=True, num_q_heads=8, num_kv_heads=2, kv_lengths=True),
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
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
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
    if c.packed_docs:
        q_ids = packed_segment_ids(rngs[6], c.batch, c.q_len, c.packed_docs)
        kv_ids = q_ids if c.q_len == c.kv_len else packed_segment_ids(rngs[6], c.batch, c.kv_len, c.packed_docs)
        args["q_segment_ids"], args["kv_segment_ids"] = jnp.asarray(q_ids), jnp.asarray(kv_ids)
    if c.kv_lengths:
        args["kv_lengths"] = jnp.asarray(rngs[7].integers(1, c.kv_len + 1, c.batch), jnp.int32)
    return args


def packed_segment_ids(rng: np.random.Generator, batch: int, length: int, docs: int) -> np.ndarray:
    """``[batch, length]`` int32: ``docs`` documents of random lengths (ids 0..docs-1) per row, then a
    padding tail (``-1``) of up to a tenth of the row."""
    ids = np.full((batch, length), -1, np.int32)
    for b in range(batch):
        used = length - int(rng.integers(0, length // 10 + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), size=min(docs - 1, used - 1), replace=False))
        ids[b, :used] = np.searchsorted(cuts, np.arange(used), side="right")
    return ids


_DIFF_ARGS = ("query", "key", "value", "bias", "softmax_aux")


def _vjp_program(
    fn, args: dict[str, Any], dtype: Any, cotangent: jax.Array, plus_output: bool = False
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A jitted ``(operands) -> (out, grads, cotangent)`` for ``_loss_and_grads`` and its operands.

    One jit per call: arrays are traced arguments, Python values (causal, window, ...) are baked in, so each
    case compiles once; dispatch (and any ``FallbackWarning``) happens while tracing.
    """
    diff = {k: args[k] for k in _DIFF_ARGS if args.get(k) is not None}
    arrays = {k: v for k, v in args.items() if k not in diff and isinstance(v, (jax.Array, np.ndarray))}
    static = {k: v for k, v in args.items() if k not in diff and k not in arrays}

    @jax.jit
    def run(diff, arrays, cotangent):
        def forward(d):
            out, _ = fn(**d, **arrays, **static, dtype=dtype)
            return out

        out, vjp = jax.vjp(forward, diff)
        if plus_output:
            cotangent = cotangent + out.astype(cotangent.dtype)
        (grads,) = vjp(cotangent.astype(out.dtype))
        return out, grads, cotangent

    return run, (diff, arrays, cotangent)


def _loss_and_grads(
    fn, args: dict[str, Any], dtype: Any, cotangent: jax.Array, plus_output: bool = False
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """``fn``'s output, its VJP w.r.t. every differentiable argument, and the cotangent used.

    The cotangent is ``cotangent``, plus ``fn``'s own output when ``plus_output``.
    """
    run, operands = _vjp_program(fn, args, dtype, cotangent, plus_output)
    return run(*operands)


def _oracle(args: dict[str, Any], cotangent: jax.Array, plus_output: bool = False, float64: bool = False):
    from ejkernel.kernels.xla.reference import attention as reference

    if not float64:
        with jax.default_matmul_precision("highest"):
            return _loss_and_grads(reference, args, jnp.float32, cotangent, plus_output)
    with _x64():
        wide = {k: jnp.asarray(v, jnp.float64) if _is_float_array(v) else v for k, v in args.items()}
        out, grads, cot = _loss_and_grads(reference, wide, jnp.float64, jnp.asarray(cotangent, jnp.float64), plus_output)
        # Kept in float64: results are compared in NumPy, and a float32 rounding would be the oracle's own error.
        return np.asarray(out), {k: np.asarray(g) for k, g in grads.items()}, jnp.asarray(cot, jnp.float32)


def _is_float_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating)


def _x64():
    """64-bit types enabled for a block (``jax.enable_x64`` in newer jax, ``jax.experimental`` before)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # pragma: no cover - older jax
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _has_float64() -> bool:
    return current_platform() in ("cpu", "cuda", "rocm")


def oracle(args: dict[str, Any], cotangent: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The XLA reference at float32, highest precision: forward output and gradients."""
    out, grads, _ = _oracle(args, cotangent)
    return out, grads


@dataclasses.dataclass(frozen=True)
class Reference:
    """One case's inputs, output cotangent, and the oracle's output and gradients."""

    args: dict[str, Any]
    cotangent: jax.Array
    out: jax.Array
    grads: dict[str, jax.Array]


def reference_for(args: dict[str, Any], cotangent: jax.Array) -> Reference:
    """Runs the oracle once on these inputs and cotangent, for ``run_case`` to reuse."""
    out, grads = oracle(args, cotangent)
    return Reference(args, cotangent, out, grads)


def case_reference(case: CheckCase, seed: int = 0) -> Reference:
    """The oracle on the case's inputs (``make_inputs``), with standard normal noise plus its own output
    as the output cotangent.

    With noise alone, ``g . o`` has a random sign in every row, and gradients that sum over rows (the
    sinks', by ``-p_sink (g . o)`` per row) cancel by factors of 20 to 400: a bf16 result accurate term by
    term then misses the small sum by several percent. Adding ``o`` makes ``g . o`` mostly positive, so
    those sums keep their size (the terms' magnitudes add up to about 1.2 times the sum); q, k and v still
    get the noise.
    """
    args = make_inputs(case, seed)
    shape = (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim)
    noise = _normal(np.random.default_rng(np.random.SeedSequence([seed, 1])), shape)
    out, grads, cotangent = _oracle(args, noise, plus_output=True, float64=_has_float64())
    return Reference(args, cotangent, out, grads)


def relative_error(x: Any, ref: Any) -> float:
    """``max|x - ref| / max(max|ref|, 1e-6)``, computed in NumPy; ``inf`` when ``x`` is not finite."""
    x = np.asarray(x).astype(np.float64)
    ref = np.asarray(ref).astype(np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-6))


@dataclasses.dataclass
class CheckResult:
    """The errors of one implementation on one case and compute dtype, against the oracle."""

    implementation: str
    case: str
    dtype: str
    served_by: str
    errors: dict[str, float]
    tolerance: float
    fallback: bool = False  # another platform served the call
    not_served: str | None = None  # why the platform does not serve the case (then nothing was run)

    @property
    def accurate(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    @property
    def passed(self) -> bool:
        """Accurate, and served by the platform that was checked."""
        return self.accurate and not self.fallback

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` (too far from the oracle), ``FALLBACK`` (accurate, but served elsewhere) or
        ``N/A`` (not served by the platform, so not run: its fallback's own rows check it)."""
        if self.not_served is not None:
            return "N/A"
        if not self.accurate:
            return "FAIL"
        return "FALLBACK" if self.fallback else "PASS"


def run_case(
    platform: str,
    case: CheckCase,
    dtype: str,
    interpret: bool = False,
    seed: int = 0,
    reference: Reference | None = None,
    run_unserved: bool = True,
) -> CheckResult:
    """Checks ``platform`` on one case and compute dtype against ``reference`` (default ``case_reference``).

    A case the platform does not serve runs on its fallback (``FALLBACK``), or, with ``run_unserved=False``,
    is not run at all (``N/A``, with the reason).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        ref = reference if reference is not None else case_reference(case, seed)
        return _prepare_case(platform, case, dtype, interpret, ref, run_unserved)()


def _prepare_case(
    platform: str, case: CheckCase, dtype: str, interpret: bool, ref: Reference, run_unserved: bool
) -> Callable[[], CheckResult]:
    """``run_case`` in two steps: dispatch and compile now; run and compare when the result is called.

    The caller silences ``FallbackWarning`` (``warnings`` filters are process-wide, not per thread).
    """
    kernel = get_kernel("attention", platform, interpret=interpret)
    decision = kernel.explain(**ref.args, dtype=dtype)
    fallback = decision.chosen.platform != canonical_platform(platform)
    if fallback and not run_unserved:
        reason = "; ".join(r for label, r in decision.rejected if label.split(":")[0] == canonical_platform(platform))
        result = CheckResult(platform, case.name, dtype, decision.chosen.label, {}, TOLERANCE[dtype], True, reason)
        return lambda: result
    run, operands = _vjp_program(kernel, ref.args, dtype, ref.cotangent)
    compiled = run.lower(*operands).compile()
    label = decision.chosen.label + (" (interpret)" if interpret and decision.chosen.uses_pallas else "")

    def finish() -> CheckResult:
        out, grads, _ = compiled(*operands)
        errors = {"out": relative_error(out, ref.out)}
        errors.update({f"d{k}": relative_error(grads[k], g) for k, g in ref.grads.items()})
        return CheckResult(platform, case.name, dtype, label, errors, TOLERANCE[dtype], fallback)

    return finish


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


def default_workers() -> int:
    """Threads that compile ``iter_check``'s rows ahead: one per CPU, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def iter_check(
    interpret: bool = False,
    platforms: Iterable[str] | None = None,
    cases: Iterable[CheckCase] = CASES,
    dtype: str | None = None,
    workers: int | None = None,
) -> Iterator[CheckResult]:
    """Yields each result in order as it is computed: every case on every implementation that can run here
    (Pallas ones too with ``interpret``), or on ``platforms``. The oracle runs once per case, shared by every
    platform and dtype. Named ``platforms`` run every case, unserved ones on their fallback (``FALLBACK``);
    otherwise a case a platform does not serve is reported ``N/A`` and not run (the fallback's own rows
    check it).

    ``workers`` threads (default ``default_workers()``) compute the oracles and compile the rows ahead;
    each row runs on this thread, in order. ``FallbackWarning`` is ignored while the iteration runs (each
    result says who served it).

    Raises:
      ValueError: a platform that is neither known nor registered, or ``workers < 1``.
    """
    records = list_kernels("attention")
    registered = {r["platform"] for r in records}
    run_unserved = platforms is not None
    if platforms is None:
        platforms = sorted({r["platform"] for r in records if r["runnable"] or (interpret and r["interpretable"])})
    platforms = [canonical_platform(p) for p in platforms]
    unknown = [p for p in platforms if p not in registered]
    if unknown:
        raise ValueError(f"unknown platform(s) {unknown}; registered: {sorted(registered)}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cases = list(cases)
    rows = [(case, platform, d) for case in cases for platform in platforms
            for d in ([dtype] if dtype else _dtypes_for(platform))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ejkernel-check")
        try:
            # Every oracle is queued before any row, so a row waiting for its oracle never holds up one.
            references = {case.name: pool.submit(case_reference, case) for case in cases}

            def prepare(case: CheckCase, platform: str, d: str) -> Callable[[], CheckResult]:
                return _prepare_case(platform, case, d, interpret, references[case.name].result(), run_unserved)

            pending = [pool.submit(prepare, *row) for row in rows]
            for job in pending:
                yield job.result()()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def run_check(
    interpret: bool = False,
    platforms: Iterable[str] | None = None,
    cases: Iterable[CheckCase] = CASES,
    dtype: str | None = None,
    workers: int | None = None,
) -> list[CheckResult]:
    """``iter_check``'s results as a list."""
    return list(iter_check(interpret, platforms, cases, dtype, workers))


def _dtypes_for(platform: str) -> list[str]:
    """The first two of bfloat16, float32, float16 that the platform's implementations serve."""
    served = set().union(*(s.capabilities.dtypes for s in kernel_specs("attention") if s.platform == platform))
    return [d for d in ("bfloat16", "float32", "float16") if d in served][:2]
