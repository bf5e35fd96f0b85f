"""Kernel parity against the float32 XLA oracle, shared by the Pallas-TPU and Pallas-Triton tests.

``assert_matches_oracle`` runs a kernel forward and backward on a ``CheckCase`` and compares output and
gradients with the oracle. Its error measures, for gradients that are sums of cancelling terms:

A bias broadcast over batch or heads (``[1, ...]``, ``[B, Hkv, ...]``, ``[B, 1, ...]``) gets the *sum* of the
per-(batch, query head) score gradients ``dS``; a sink gets the sum over rows of ``-p_sink (g . o)``. Those
terms have random signs and can cancel by 10x or more (e.g. 4 heads' ``dS`` of size 2.4 summing to 0.28).
A low-precision result accurate term by term then misses the small sum by more than its dtype's relative
tolerance. The usual bound for a computed sum is relative to the sum of the terms' magnitudes, so that is
the scale used here: ``max|x - ref| / max(sum of |terms|)``. Unreduced gradients keep ``relative_error``,
except exactly-zero ones (``gradient_errors``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.check import CheckCase, make_inputs, oracle, relative_error
from ejkernel.kernels.xla.reference import attention as xla_attention

__all__ = ["assert_matches_oracle", "forward_and_grads", "gradient_errors", "reference_errors", "REFERENCE_MARGIN"]

DIFF_ARGS = ("query", "key", "value", "bias", "softmax_aux")

# A low-precision kernel may be this many times as far from the float32 oracle as the XLA reference run in
# the same dtype (different rounding order, same information lost to the inputs' rounding).
REFERENCE_MARGIN = 1.5


def _full_bias_term_scale(args, cot) -> np.ndarray:
    """``sum |dS|`` over the axes the bias is broadcast along, in the bias's shape."""
    bias = args["bias"]
    b, _, hq, _ = args["query"].shape
    sq, skv = bias.shape[-2:]
    full = jnp.broadcast_to(bias.astype(jnp.float32), (bias.shape[0], bias.shape[1], sq, skv))
    if bias.shape[1] not in (1, hq):  # per kv head: query head h reads bias head h // group
        full = jnp.repeat(full, hq // bias.shape[1], axis=1)
    full = jnp.broadcast_to(full, (b, hq, sq, skv))
    rest = {k: v for k, v in args.items() if k != "bias"}

    def loss(full_bias):
        out = xla_attention(**rest, bias=full_bias, dtype=jnp.float32)[0]
        return jnp.sum(out * cot.astype(jnp.float32))

    with jax.default_matmul_precision("highest"):
        terms = np.abs(np.asarray(jax.grad(loss)(full), np.float64))
    if bias.shape[0] == 1:
        terms = terms.sum(0, keepdims=True)
    if bias.shape[1] == 1:
        terms = terms.sum(1, keepdims=True)
    elif bias.shape[1] != hq:
        terms = terms.reshape(b if bias.shape[0] != 1 else 1, bias.shape[1], -1, sq, skv).sum(2)
    return terms


def _sink_term_scale(args, cot) -> float:
    """The largest sum of |terms| of a sink's gradient ``-sum_rows p_sink * (dO . O)``."""
    with jax.default_matmul_precision("highest"):
        out, weights = xla_attention(**args, dtype=jnp.float32)
    g_dot_o = np.einsum("bqhd,bqhd->bhq", np.asarray(cot, np.float64), np.asarray(out, np.float64))
    sink_mass = 1.0 - np.asarray(weights, np.float64).sum(-1)  # [B, Hq, Sq]
    aux = np.asarray(args["softmax_aux"], np.float64)
    aux = np.broadcast_to(aux, (out.shape[2], aux.shape[-1]))
    share = np.exp(aux - aux.max(-1, keepdims=True))
    share /= share.sum(-1, keepdims=True)
    terms = np.abs(np.einsum("bhq,hn->bhqn", sink_mass * g_dot_o, share))
    per_sink = terms.sum((0, 2)) if np.ndim(args["softmax_aux"]) == 2 else terms.sum((0, 1, 2))
    return float(per_sink.max())


def _absolute_error(x, ref) -> float:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.max(np.abs(x - np.asarray(ref, np.float64))))


def _at_most_one_key_per_row(args) -> bool:
    """Every row attends to at most one key with weight 1 (no sinks): the exact dS, so dQ, dK and the bias
    gradient, are then 0."""
    if args.get("softmax_aux") is not None:
        return False
    with jax.default_matmul_precision("highest"):
        weights = np.asarray(xla_attention(**args, dtype=jnp.float32)[1])
    return bool(np.all((weights > 0).sum(-1) <= 1))


def gradient_errors(grads: dict, ref_grads: dict, args: dict, cot) -> dict[str, float]:
    """``{"d<name>": error}`` for every gradient, each measured as the module docstring says.

    Where every row sees at most one key, dQ, dK and dBias are exactly 0 and the oracle's are rounding
    noise, which no relative error can compare; their size is measured against the value gradient's instead.
    """
    errors = {}
    b, _, hq, _ = args["query"].shape
    zero_qk = _at_most_one_key_per_row(args)
    for name, ref in ref_grads.items():
        if zero_qk and name in ("query", "key", "bias"):
            dv_scale = float(np.max(np.abs(np.asarray(ref_grads["value"], np.float64))))
            errors[f"d{name}"] = _absolute_error(grads[name], 0.0) / max(dv_scale, 1e-6)
        elif name == "softmax_aux":
            errors["dsoftmax_aux"] = _absolute_error(grads[name], ref) / max(_sink_term_scale(args, cot), 1e-6)
        elif name == "bias" and tuple(args["bias"].shape[:2]) != (b, hq):
            scale = float(_full_bias_term_scale(args, cot).max())
            errors["dbias"] = _absolute_error(grads[name], ref) / max(scale, 1e-6)
        else:
            errors[f"d{name}"] = relative_error(grads[name], ref)
    return errors


def forward_and_grads(fn, args, dtype, cotangent, jit: bool = False):
    """``fn``'s output and its gradients w.r.t. the differentiable arguments present in ``args``.

    With ``jit`` the forward and backward compile as one program (on a GPU, eager VJPs compile every glue
    operation on its own, which dominates a test's time).
    """
    diff = {k: args[k] for k in DIFF_ARGS if args.get(k) is not None}
    rest = {k: v for k, v in args.items() if k not in diff}
    arrays = {k: v for k, v in rest.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in rest.items() if k not in arrays}

    def run(diff, arrays, cotangent):
        def forward(d):
            return fn(**d, **arrays, **static, dtype=dtype)[0]

        out, vjp = jax.vjp(forward, diff)
        (grads,) = vjp(cotangent.astype(out.dtype))
        return out, grads

    return (jax.jit(run) if jit else run)(diff, arrays, cotangent)


def reference_errors(args, dtype, cot, ref_out, ref_grads) -> dict[str, float]:
    """The XLA reference's own errors in ``dtype`` against the float32 oracle, measured the same way."""
    out, grads = forward_and_grads(xla_attention, args, dtype, cot)
    errors = {"out": relative_error(out, ref_out)}
    errors.update(gradient_errors(grads, ref_grads, args, cot))
    return errors


def assert_matches_oracle(fn, case: CheckCase, dtype: str, tolerance: float, seed: int = 0, extra=None,
                          jit: bool = False):
    """Asserts ``fn`` matches the oracle within ``tolerance`` (output and every gradient); returns the errors.

    In a low-precision dtype an error is also accepted up to ``REFERENCE_MARGIN`` times the XLA reference's
    own error in that dtype (degenerate cases, e.g. a lone key beside sinks, where the reference itself is
    3e-2 off). ``jit`` compiles ``fn``'s forward and backward as one program.
    """
    args = make_inputs(case, seed)
    args.update(extra or {})
    cot = jax.random.normal(jax.random.key(seed + 7), (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim))
    ref_out, ref_grads = oracle(args, cot)
    out, grads = forward_and_grads(fn, args, dtype, cot, jit=jit)
    assert out.dtype == jnp.dtype(dtype) and out.shape == ref_out.shape
    assert set(grads) == set(ref_grads)
    errors = {"out": relative_error(out, ref_out)}
    errors.update(gradient_errors(grads, ref_grads, args, cot))
    bad = {k: e for k, e in errors.items() if not e <= tolerance}
    if bad and dtype != "float32":
        ref_in_dtype = reference_errors(args, dtype, cot, ref_out, ref_grads)
        bad = {k: e for k, e in bad.items() if not e <= REFERENCE_MARGIN * ref_in_dtype[k]}
    assert not bad, f"{case} {dtype}: {errors}"
    return errors
