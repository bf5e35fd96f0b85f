"""Bad input to the XLA reference raises ValueError/TypeError naming the argument (and the shapes), eagerly
and under ``jax.jit``; ``init_bias`` is called only when needed; the jaxtyping annotations describe every
documented shape and no other rank or dtype."""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import jaxtyped

from ejkernel.kernels.xla.reference import attention

B, SQ, SKV, HQ, HKV, D, DV = 2, 5, 7, 4, 2, 8, 6


def _arrays(**shapes_and_dtypes):
    """Valid q/k/v (float32), with some replaced: ``name=(shape, dtype)`` or ``name=array``."""
    arrays = dict(
        query=jnp.zeros((B, SQ, HQ, D), F32), key=jnp.zeros((B, SKV, HKV, D), F32),
        value=jnp.zeros((B, SKV, HKV, DV), F32)
    )
    for name, spec in shapes_and_dtypes.items():
        if isinstance(spec, tuple) and isinstance(spec[0], tuple):
            arrays[name] = jnp.zeros(spec[0], spec[1])
        else:
            arrays[name] = spec
    return arrays


F32, BOOL = jnp.float32, jnp.bool_
# (id, array overrides, static keyword arguments, exception, substrings the message must contain)
BAD = [
    ("query-rank", dict(query=((B, SQ, HQ * D), F32)), {}, ValueError, ["query", str((B, SQ, HQ * D))]),
    ("key-rank", dict(key=((B, SKV, HKV, D, 1), F32)), {}, ValueError, ["key", str((B, SKV, HKV, D, 1))]),
    ("value-rank", dict(value=((SKV, HKV, DV), F32)), {}, ValueError, ["value", str((SKV, HKV, DV))]),
    ("key-batch", dict(key=((3, SKV, HKV, D), F32)), {}, ValueError, ["batch", "key", str((3, SKV, HKV, D))]),
    ("value-batch", dict(value=((1, SKV, HKV, DV), F32)), {}, ValueError, ["batch", "value", str((1, SKV, HKV, DV))]),
    ("value-length", dict(value=((B, SKV + 1, HKV, DV), F32)), {}, ValueError, ["value", str((B, SKV + 1, HKV, DV))]),
    ("value-heads", dict(value=((B, SKV, HKV * 2, DV), F32)), {}, ValueError, ["value", str((B, SKV, HKV * 2, DV))]),
    ("head-dim", dict(key=((B, SKV, HKV, D + 1), F32)), {}, ValueError, ["head_dim", str((B, SKV, HKV, D + 1))]),
    ("heads-not-multiple", dict(key=((B, SKV, 3, D), F32), value=((B, SKV, 3, DV), F32)), {}, ValueError,
     ["num_q_heads", "num_kv_heads", "(4)", "(3)"]),
    ("more-kv-heads", dict(key=((B, SKV, 8, D), F32), value=((B, SKV, 8, DV), F32)), {}, ValueError, ["(4)", "(8)"]),
    ("empty-length", dict(query=((B, 0, HQ, D), F32)), {}, ValueError, ["empty", str((B, 0, HQ, D))]),
    ("bias-rank", dict(bias=((HQ, SQ, SKV), F32)), {}, ValueError, ["bias", str((HQ, SQ, SKV))]),
    ("bias-batch", dict(bias=((3, HQ, SQ, SKV), F32)), {}, ValueError, ["bias", str((3, HQ, SQ, SKV))]),
    ("bias-heads", dict(bias=((B, 3, SQ, SKV), F32)), {}, ValueError, ["bias", str((B, 3, SQ, SKV))]),
    ("bias-lengths", dict(bias=((B, HQ, SKV, SQ), F32)), {}, ValueError, ["bias", str((B, HQ, SKV, SQ))]),
    ("bias-q-len", dict(bias=((1, 1, 1, SKV), F32)), {}, ValueError, ["bias", str((1, 1, 1, SKV))]),
    ("bias-int", dict(bias=((B, HQ, SQ, SKV), jnp.int32)), {}, TypeError, ["bias", "int32"]),
    ("mask-rank", dict(attention_mask=((SQ, SKV), BOOL)), {}, ValueError, ["attention_mask", str((SQ, SKV))]),
    ("mask-batch", dict(attention_mask=((3, 1, SQ, SKV), BOOL)), {}, ValueError, ["attention_mask", str((3, 1, SQ, SKV))]),
    ("mask-heads", dict(attention_mask=((B, 3, SQ, SKV), BOOL)), {}, ValueError, ["attention_mask", str((B, 3, SQ, SKV))]),
    ("mask-kv-len", dict(attention_mask=((B, HQ, SQ, 1), BOOL)), {}, ValueError, ["attention_mask", str((B, HQ, SQ, 1))]),
    ("mask-float", dict(attention_mask=((B, HQ, SQ, SKV), F32)), {}, TypeError, ["attention_mask", "bool", "float32"]),
    ("mask-int", dict(attention_mask=((B, HQ, SQ, SKV), jnp.int8)), {}, TypeError, ["attention_mask", "int8"]),
    ("sinks-heads", dict(softmax_aux=((HKV, 2), F32)), {}, ValueError, ["softmax_aux", str((HKV, 2))]),
    ("sinks-rank", dict(softmax_aux=((HQ, 2, 1), F32)), {}, ValueError, ["softmax_aux", str((HQ, 2, 1))]),
    ("sinks-empty", dict(softmax_aux=((0,), F32)), {}, ValueError, ["softmax_aux", "(0,)"]),
    ("sinks-scalar", dict(softmax_aux=((), F32)), {}, ValueError, ["softmax_aux", "()"]),
    ("sinks-int", dict(softmax_aux=((HQ, 2), jnp.int32)), {}, TypeError, ["softmax_aux", "int32"]),
    ("cap-zero", {}, dict(logits_soft_cap=0.0), ValueError, ["logits_soft_cap", "0.0"]),
    ("cap-negative", {}, dict(logits_soft_cap=-2.0), ValueError, ["logits_soft_cap", "-2.0"]),
    ("cap-nan", {}, dict(logits_soft_cap=float("nan")), ValueError, ["logits_soft_cap", "nan"]),
    ("cap-inf", {}, dict(logits_soft_cap=float("inf")), ValueError, ["logits_soft_cap", "inf"]),
    ("dropout-negative", {}, dict(dropout_prob=-0.1), ValueError, ["dropout_prob", "-0.1"]),
    ("dropout-one", {}, dict(dropout_prob=1.0), ValueError, ["dropout_prob", "1.0"]),
    ("dropout-large", {}, dict(dropout_prob=1.5, deterministic=False), ValueError, ["dropout_prob", "1.5"]),
    ("dropout-nan", {}, dict(dropout_prob=float("nan")), ValueError, ["dropout_prob", "nan"]),
    ("dropout-no-rng", {}, dict(dropout_prob=0.1, deterministic=False), ValueError, ["dropout_rng"]),
    ("window-negative", {}, dict(sliding_window=-1), ValueError, ["sliding_window", "-1"]),
    ("window-left-negative", {}, dict(sliding_window=(-2, 3)), ValueError, ["sliding_window", "(-2, 3)"]),
    ("window-right-negative", {}, dict(sliding_window=(3, -1)), ValueError, ["sliding_window", "(3, -1)"]),
    ("window-three", {}, dict(sliding_window=(1, 2, 3)), TypeError, ["sliding_window", "(1, 2, 3)"]),
    ("window-float", {}, dict(sliding_window=1.5), TypeError, ["sliding_window", "1.5"]),
    ("window-bool", {}, dict(sliding_window=True), TypeError, ["sliding_window", "True"]),
    ("query-int", dict(query=((B, SQ, HQ, D), jnp.int32), key=((B, SKV, HKV, D), jnp.int32),
                       value=((B, SKV, HKV, DV), jnp.int32)), {}, TypeError, ["query", "int32"]),
    ("key-dtype", dict(key=((B, SKV, HKV, D), jnp.bfloat16)), {}, TypeError, ["key", "bfloat16", "float32"]),
    ("value-dtype", dict(value=((B, SKV, HKV, DV), jnp.float16)), {}, TypeError, ["value", "float16", "float32"]),
    ("dtype-int", {}, dict(dtype=jnp.int32), TypeError, ["dtype", "int32"]),
    ("softmax-dtype-int", {}, dict(softmax_dtype=jnp.int8), TypeError, ["softmax_dtype", "int8"]),
    ("scale-nan", {}, dict(softmax_scale=float("nan")), ValueError, ["softmax_scale", "nan"]),
    ("causal-not-bool", {}, dict(causal="yes"), TypeError, ["causal", "str"]),
]


@pytest.mark.parametrize("under_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("overrides,static,error,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_naming_argument(overrides, static, error, words, under_jit):
    arrays = _arrays(**overrides)
    call = lambda arrays: attention(**arrays, **static)  # noqa: E731
    if under_jit:
        call = jax.jit(call)
    with pytest.raises(error) as info:
        call(arrays)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


def test_traced_python_scalars_are_rejected():
    arrays = _arrays()
    for name in ("softmax_scale", "logits_soft_cap", "dropout_prob"):
        with pytest.raises(TypeError, match=name):
            jax.jit(lambda a, x: attention(**a, **{name: x}))(arrays, 0.5)


@pytest.mark.parametrize("heads", [1, HKV, HQ])
@pytest.mark.parametrize("batch", [1, B])
def test_every_documented_operand_shape_is_accepted(heads, batch):
    arrays = _arrays(bias=((batch, heads, SQ, SKV), F32), attention_mask=((batch, heads, SQ, SKV), BOOL))
    for aux_shape in ((HQ, 3), (3,), (1,)):
        out, weights = attention(**arrays, softmax_aux=jnp.zeros(aux_shape))
        assert out.shape == (B, SQ, HQ, DV) and weights.shape == (B, HQ, SQ, SKV)


# ---- init_bias ---------------------------------------------------------------------------------------


class RecordingBias:
    """A zero-argument ``init_bias`` that records its calls."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_init_bias_called_only_without_bias_and_mask():
    arrays = _arrays()
    rng = np.random.default_rng(0)
    lazy = jnp.asarray(rng.standard_normal((1, HKV, SQ, SKV)), jnp.float32)
    other_bias = jnp.zeros((B, HQ, SQ, SKV))
    mask = jnp.asarray(rng.random((B, 1, SQ, SKV)) < 0.5)
    for kwargs in (dict(bias=other_bias), dict(attention_mask=mask), dict(bias=other_bias, attention_mask=mask)):
        init = RecordingBias(lazy)
        got = attention(**arrays, **kwargs, init_bias=init, dtype=F32)
        assert init.calls == 0, f"init_bias called although {sorted(kwargs)} given"
        want = attention(**arrays, **kwargs, dtype=F32)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    init = RecordingBias(lazy)
    got = attention(**arrays, init_bias=init, dtype=F32)
    assert init.calls == 1
    want = attention(**arrays, bias=lazy, dtype=F32)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    assert not np.array_equal(np.asarray(got[1]), np.asarray(attention(**arrays, dtype=F32)[1]))
    init = RecordingBias(lazy)  # under jit it runs once, at trace time
    jitted = jax.jit(lambda a: attention(**a, init_bias=init, dtype=F32))
    jitted(arrays)
    jitted(arrays)
    assert init.calls == 1
    bad = RecordingBias(jnp.zeros((B, 3, SQ, SKV)))  # its result is validated like a bias
    with pytest.raises(ValueError, match="bias"):
        attention(**arrays, init_bias=bad)


# ---- jaxtyping annotations ---------------------------------------------------------------------------

HINTS = typing.get_type_hints(attention)


@jaxtyped(typechecker=None)
def _consistent(values: dict, returned: tuple | None = None) -> bool:
    """Every value (and the returned pair) matches its annotation, dimension names bound jointly (one scope)."""
    ok = all(isinstance(x, HINTS[name]) for name, x in values.items())
    if returned is not None:
        ok = ok and all(isinstance(x, t) for x, t in zip(returned, typing.get_args(HINTS["return"]), strict=True))
    return ok


def _annotated_ok(**values) -> bool:
    individually = all(isinstance(x, HINTS[name]) for name, x in values.items())
    return individually and _consistent(values)


@pytest.mark.parametrize("heads", [1, HKV, HQ])
@pytest.mark.parametrize("batch", [1, B])
def test_annotations_accept_documented_shapes(heads, batch):
    base = _arrays()
    operand = (batch, heads, SQ, SKV)
    assert _annotated_ok(**base, bias=jnp.zeros(operand), attention_mask=jnp.zeros(operand, bool))
    assert _annotated_ok(**base, bias=jnp.zeros(operand, jnp.bfloat16), softmax_aux=jnp.zeros((HQ, 2)))
    assert _annotated_ok(**base, softmax_aux=jnp.zeros((3,)), bias=None, attention_mask=None)
    assert _annotated_ok(**base, dropout_rng=jax.random.key(0))
    assert _annotated_ok(**base, dropout_rng=jax.random.PRNGKey(0))
    returned = attention(**base, bias=jnp.zeros(operand), softmax_aux=jnp.zeros((HQ, 2)))
    assert _consistent(dict(**base, bias=jnp.zeros(operand), softmax_aux=jnp.zeros((HQ, 2))), returned)
    assert not _consistent(base, (returned[0][..., :-1], returned[1]))  # Dv must match value's


def test_annotations_reject_wrong_ranks_and_dtypes():
    base = _arrays()
    assert len(typing.get_args(HINTS["softmax_aux"])) == 3  # [Hq, n] | [n] | None
    rejected = [
        dict(query=jnp.zeros((B, SQ, HQ))),  # rank 3
        dict(query=jnp.zeros((B, SQ, HQ, D), jnp.int32)),  # not floating
        dict(key=jnp.zeros((B, SKV, HKV, D, 1))),
        dict(value=jnp.zeros((B, SKV, HKV), jnp.bool_)),
        dict(bias=jnp.zeros((HQ, SQ, SKV))),
        dict(bias=jnp.zeros((B, HQ, SQ, SKV), jnp.int32)),
        dict(attention_mask=jnp.zeros((B, HQ, SQ, SKV))),  # float mask
        dict(attention_mask=jnp.zeros((B, SQ, SKV), bool)),
        dict(softmax_aux=jnp.zeros((HQ, 2, 1))),
        dict(softmax_aux=jnp.zeros((HQ, 2), jnp.int32)),
        dict(dropout_rng=jnp.zeros((3,), jnp.uint32)),
        dict(dropout_rng=jnp.zeros((2,), jnp.int32)),
    ]
    for values in rejected:
        assert not _annotated_ok(**values), f"annotation accepted {[(k, v.shape, v.dtype) for k, v in values.items()]}"
    # Jointly, names tie shapes together: batch, lengths and head counts must agree with the query.
    jointly_rejected = [
        dict(key=jnp.zeros((B + 1, SKV, HKV, D))),
        dict(key=jnp.zeros((B, SKV, HKV, D + 1))),
        dict(value=jnp.zeros((B, SKV + 1, HKV, DV))),
        dict(bias=jnp.zeros((3, HQ, SQ, SKV))),  # batch neither 1 nor B
        dict(bias=jnp.zeros((B, HQ, SKV, SQ))),
        dict(attention_mask=jnp.zeros((B, 1, SQ + 1, SKV), bool)),
        dict(softmax_aux=jnp.zeros((HQ + 1, 2))),
    ]
    for values in jointly_rejected:
        assert not _consistent({**base, **values}), f"jointly accepted {[(k, v.shape) for k, v in values.items()]}"
