"""Shared pieces for the reference tests: shape buckets, feature cases, input builders, comparisons.

A *case* is a static description (shape, dtype, features) plus a seed; ``make_inputs`` turns it into
arrays with a distinct random stream for every operand, ``run_xla``/``run_numpy`` call the implementation
under test and the float64 oracle on exactly the same (already rounded) values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from ejkernel.kernels.xla.reference import attention
from numpy_reference import attention_reference

# (batch, q_len, kv_len, num_q_heads, num_kv_heads, head_dim, v_head_dim): Sq != Skv both ways, GQA
# ratios 1/2/4 and MQA, D != Dv, lengths 1..300. Few enough that compiles stay bounded.
SHAPES = (
    (1, 1, 1, 1, 1, 8, 8),
    (2, 1, 37, 4, 1, 16, 16),  # decode step, MQA
    (2, 9, 6, 4, 2, 8, 12),  # Sq > Skv (causal leaves early rows empty), GQA 2, D != Dv
    (1, 16, 16, 2, 2, 32, 32),  # MHA, square
    (2, 33, 65, 8, 2, 16, 8),  # GQA 4, ragged lengths
    (1, 128, 96, 4, 4, 8, 8),
    (1, 300, 300, 2, 1, 8, 4),  # long, MQA
    (1, 257, 19, 3, 1, 8, 8),  # odd head count, Sq >> Skv
)

LAYOUTS = tuple((b, h) for b in ("B", "1") for h in ("q", "kv", "1"))

STATIC_ARGS = (
    "deterministic", "softmax_scale", "logits_soft_cap", "dtype", "softmax_dtype", "dropout_prob", "causal",
    "sliding_window",
)
# Called eagerly, as users call it: op-by-op executables are shared across feature combinations of one
# shape, which compiles several times less than one jit per combination. ``jit_attention`` is the jitted form.
xla_attention = attention
jit_attention = jax.jit(attention, static_argnames=STATIC_ARGS)


@dataclasses.dataclass(frozen=True)
class Features:
    """Which optional features a case uses; layouts are ("B"|"1", "q"|"kv"|"1")."""

    mask: tuple[str, str] | None = None
    bias: tuple[str, str] | None = None
    causal: bool = False
    window: int | tuple[int, int] | None = None
    soft_cap: float | None = None
    sinks: tuple[str, int] | None = None  # ("per_head" | "shared", num_sinks)
    scale: float | None = None

    def static_kwargs(self) -> dict[str, Any]:
        return dict(
            causal=self.causal, sliding_window=self.window, logits_soft_cap=self.soft_cap, softmax_scale=self.scale
        )


def operand_shape(layout: tuple[str, str], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    b, sq, skv, hq, hkv, _, _ = shape
    heads = {"q": hq, "kv": hkv, "1": 1}[layout[1]]
    return (b if layout[0] == "B" else 1, heads, sq, skv)


def make_inputs(shape: tuple[int, ...], features: Features, dtype: Any, seed: int) -> dict[str, Any]:
    """Arrays for a case; q, k, v, bias, sinks in ``dtype`` (numpy, so both sides see identical values).

    A mask keeps ~70% of keys and always blanks one whole query row, so empty rows are always exercised.
    """
    b, sq, skv, hq, hkv, d, dv = shape
    rngs = [np.random.default_rng([seed, i]) for i in range(6)]  # one stream per operand
    cast = lambda x: np.asarray(jnp.asarray(x, dtype))  # noqa: E731  (round to dtype once, here)
    inputs: dict[str, Any] = dict(
        query=cast(rngs[0].standard_normal((b, sq, hq, d))),
        key=cast(rngs[1].standard_normal((b, skv, hkv, d))),
        value=cast(rngs[2].standard_normal((b, skv, hkv, dv))),
    )
    if features.mask is not None:
        mshape = operand_shape(features.mask, shape)
        mask = rngs[3].random(mshape) < 0.7
        mask[:, :, rngs[3].integers(sq)] = False
        inputs["attention_mask"] = mask
    if features.bias is not None:
        inputs["bias"] = cast(rngs[4].standard_normal(operand_shape(features.bias, shape)))
    if features.sinks is not None:
        kind, n = features.sinks
        inputs["softmax_aux"] = cast(rngs[5].standard_normal((hq, n) if kind == "per_head" else (n,)))
    return inputs


def run_xla(inputs: dict[str, Any], features: Features, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    with jax.default_matmul_precision("highest"):
        out, weights = xla_attention(**{k: jnp.asarray(x) for k, x in inputs.items()}, dtype=dtype,
                                     **features.static_kwargs())
    return np.asarray(out.astype(jnp.float32)), np.asarray(weights.astype(jnp.float32))


def run_numpy(inputs: dict[str, Any], features: Features) -> tuple[np.ndarray, np.ndarray]:
    return attention_reference(**inputs, **features.static_kwargs())


# Relative tolerance (to the largest expected magnitude, at least 1) for each compute dtype.
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}


def assert_close(actual: Any, expected: np.ndarray, rtol: float, what: str) -> None:
    """``|actual - expected| <= rtol * (|expected| + max(1, max|expected|))`` elementwise."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = np.abs(actual - expected)
    bound = rtol * (np.abs(expected) + scale)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: max error {err.max():.3g} (scale {scale:.3g}, rtol {rtol}); worst at {worst}: "
        f"{actual[worst]!r} vs {expected[worst]!r}"
    )


def check_case(shape: tuple[int, ...], features: Features, dtype: Any, seed: int) -> None:
    """The XLA reference matches the float64 oracle on output and weights; empty rows are exactly zero."""
    inputs = make_inputs(shape, features, dtype, seed)
    out, weights = run_xla(inputs, features, dtype)
    ref_out, ref_weights = run_numpy(inputs, features)
    rtol = TOLERANCE[jnp.dtype(dtype).name]
    assert_close(out, ref_out, rtol, f"output {shape} {features} {jnp.dtype(dtype).name}")
    assert_close(weights, ref_weights, rtol, f"weights {shape} {features} {jnp.dtype(dtype).name}")
    empty = ref_weights.sum(-1) == 0  # [B, Hq, Sq]: rows with no allowed key
    assert np.all(weights[empty] == 0), "weights of rows with no allowed key must be exactly zero"
    assert np.all(out.transpose(0, 2, 1, 3)[empty] == 0), "output of rows with no allowed key must be exactly zero"


# ---- hypothesis strategies -------------------------------------------------------------------------

layouts = st.sampled_from(LAYOUTS)
windows = st.one_of(st.integers(0, 40), st.tuples(st.integers(0, 40), st.integers(0, 40)))
sinks = st.tuples(st.sampled_from(("per_head", "shared")), st.integers(1, 3))


@st.composite
def features(draw: Any) -> Features:
    """Any subset of the optional features, each with any of its variants."""
    return Features(
        mask=draw(st.none() | layouts),
        bias=draw(st.none() | layouts),
        causal=draw(st.booleans()),
        window=draw(st.none() | windows),
        soft_cap=draw(st.none() | st.sampled_from((0.5, 2.0, 30.0))),
        sinks=draw(st.none() | sinks),
        scale=draw(st.none() | st.sampled_from((0.05, 0.3, 1.0))),
    )


seeds = st.integers(0, 2**31 - 1)


@functools.cache
def tril_mask(q_len: int, kv_len: int) -> np.ndarray:
    """Explicit bottom-right lower triangle: query ``i`` sees key ``j`` iff ``j <= i + kv_len - q_len``."""
    return np.tril(np.ones((q_len, kv_len), dtype=bool), k=kv_len - q_len)


# ---- packed sequences: segment ids and key lengths ----------------------------------------------------


@st.composite
def segment_row(draw: Any, length: int, num_ids: int = 4) -> np.ndarray:
    """One row of segment ids: contiguous runs of random ids in ``[-1, num_ids)`` (-1 is padding), so a row
    has several segments, segments that cross any block boundary, empty segments (runs of length 0, and ids
    the other side lacks) and padding runs; now and then a row of padding only."""
    if draw(st.integers(0, 7)) == 0:
        return np.full(length, -1, np.int32)
    cuts = sorted(draw(st.lists(st.integers(0, length), min_size=1, max_size=6)))
    ids = draw(st.lists(st.integers(-1, num_ids - 1), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return np.repeat(np.asarray(ids, np.int32), np.diff([0, *cuts, length]))


@st.composite
def packing(draw: Any, batch: int, q_len: int, kv_len: int) -> dict[str, np.ndarray]:
    """``q_segment_ids``/``kv_segment_ids`` (self-attention rows share their ids when ``q_len == kv_len``)
    and/or ``kv_lengths`` (0 to ``kv_len``), at least one of the two."""
    use = draw(st.sampled_from(("segments", "lengths", "both")))
    out: dict[str, np.ndarray] = {}
    if use != "lengths":
        kv_ids = np.stack([draw(segment_row(kv_len)) for _ in range(batch)])
        if q_len == kv_len and draw(st.booleans()):
            q_ids = kv_ids.copy()
        else:
            q_ids = np.stack([draw(segment_row(q_len)) for _ in range(batch)])
        out.update(q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    if use != "segments":
        out["kv_lengths"] = np.asarray(draw(st.lists(st.integers(0, kv_len), min_size=batch, max_size=batch)), np.int32)
    return out


def packing_mask(q_len: int, kv_len: int, q_segment_ids: Any = None, kv_segment_ids: Any = None,
                 kv_lengths: Any = None) -> np.ndarray:
    """The dense boolean ``[B, 1, Sq, Skv]`` mask equivalent to segment ids and key lengths, written plainly."""
    batch = (q_segment_ids if q_segment_ids is not None else kv_lengths).shape[0]
    mask = np.ones((batch, q_len, kv_len), bool)
    if q_segment_ids is not None:
        q, kv = np.asarray(q_segment_ids)[:, :, None], np.asarray(kv_segment_ids)[:, None, :]
        mask &= (q == kv) & (kv >= 0)
    if kv_lengths is not None:
        mask &= np.arange(kv_len)[None, None, :] < np.asarray(kv_lengths)[:, None, None]
    return mask[:, None]


def invisible_keys(q_len: int, kv_len: int, q_segment_ids: Any = None, kv_segment_ids: Any = None,
                   kv_lengths: Any = None) -> np.ndarray:
    """``[B, Skv]``: keys that no query of their row may see by the ids and lengths."""
    return ~packing_mask(q_len, kv_len, q_segment_ids, kv_segment_ids, kv_lengths)[:, 0].any(axis=1)
