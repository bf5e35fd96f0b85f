"""Ring attention: parity on forced host devices (a subprocess), the zigzag layout, the skip schedule and
the work per shard, skipped pairs computing nothing, bad input, and the HLO overlap reader.

The multi-device cases (``tests/ring_cases.py``) run in one subprocess, since the number of host devices
must be set before JAX starts; the rest traces against a ``jax.sharding.AbstractMesh`` (no devices needed).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import ejkernel
from conftest import examples
from ejkernel.ops.attention.masks import allowed
from ejkernel.parallel.hlo_overlap import permute_overlap
from ejkernel.parallel.ring_layout import load_balance_permutation, shard_chunks
from ejkernel.parallel.ring_schedule import PairClass, critical_path, pair_class, step_classes, work_per_shard

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEQ = P(None, "seq", None, None)


def test_ring_matches_single_device_attention_on_forced_host_devices():
    """Forward and every gradient, 2/4/8 shards, balanced and not, every feature class, 2-D meshes; and
    the compiled ring's ppermutes are independent of, and issued before, each step's compute."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "ring_cases.py")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    from ring_cases import CASES

    lines = result.stdout.split("\n")
    assert {line.split()[1] for line in lines if line.startswith("ok ")} == {c[0] for c in CASES} | {"overlap"}


# -- layout ---------------------------------------------------------------------------------------------


def test_the_zigzag_permutation_places_chunks_r_and_2n_minus_1_minus_r_on_shard_r():
    # S = 8 on 2 shards: chunks of 2; shard 0 holds chunks 0 and 3, shard 1 chunks 1 and 2.
    assert load_balance_permutation(8, 2).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert shard_chunks(4, True).tolist() == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert shard_chunks(3, False).tolist() == [[0], [1], [2]]


@settings(max_examples=examples(0.5))
@given(st.integers(1, 8), st.integers(1, 4))
def test_to_and_from_ring_layout_are_inverse(num_shards, chunk):
    x = jnp.arange(2 * num_shards * chunk * 3).reshape(1, -1, 3)
    placed = ejkernel.to_ring_layout(x, num_shards)
    assert sorted(placed[0, :, 0].tolist()) == x[0, :, 0].tolist()
    np.testing.assert_array_equal(ejkernel.from_ring_layout(placed, num_shards), x)
    np.testing.assert_array_equal(ejkernel.to_ring_layout(x, num_shards, axis=1)[0, :, 0] // 3,
                                  load_balance_permutation(x.shape[1], num_shards))


def test_a_length_that_does_not_split_into_2n_chunks_is_refused():
    with pytest.raises(ValueError, match="multiple of 2 \\* num_shards"):
        load_balance_permutation(10, 4)


# -- schedule --------------------------------------------------------------------------------------------

WINDOWS = st.none() | st.tuples(st.integers(0, 40), st.integers(0, 40))


@settings(max_examples=examples(10))  # NumPy only: cheap
@given(st.integers(0, 7), st.integers(0, 7), st.integers(1, 6), st.booleans(), WINDOWS)
def test_pair_class_agrees_with_the_element_rule(q_chunk, k_chunk, chunk, causal, window):
    seq = 8 * chunk
    i = q_chunk * chunk + np.arange(chunk)[:, None]
    j = k_chunk * chunk + np.arange(chunk)[None, :]
    ok = np.broadcast_to(allowed(i, j, seq, seq, causal, window), (chunk, chunk))
    cls = pair_class(q_chunk, k_chunk, chunk, causal, window)
    if not ok.any():
        assert cls == PairClass.SKIP
    elif ok.all():
        assert cls == PairClass.FULL
    else:
        assert cls == (PairClass.DIAGONAL if q_chunk == k_chunk else PairClass.BAND)


@settings(max_examples=examples(5))
@given(st.sampled_from([1, 2, 3, 4, 8]), st.booleans(), st.integers(1, 3), st.booleans(), WINDOWS)
def test_the_ring_visits_every_allowed_pair_exactly_once(num_shards, load_balance, chunk, causal, window):
    """Summed over shards and steps, the work is the global allowed set (each key block meets each shard once)."""
    seq = num_shards * chunk * (2 if load_balance else 1)
    work = work_per_shard(num_shards, load_balance, seq, causal, window)
    idx = np.arange(seq)
    every = np.broadcast_to(allowed(idx[:, None], idx[None, :], seq, seq, causal, window), (seq, seq))
    assert work.sum() == np.count_nonzero(every)
    # A step whose pairs are all skipped is work 0 and vice versa.
    classes = step_classes(num_shards, load_balance, seq // (num_shards * (2 if load_balance else 1)), causal, window)
    assert np.array_equal(work > 0, (classes != PairClass.SKIP).any(axis=(2, 3)))


@pytest.mark.parametrize("num_shards", [2, 4, 8])
def test_zigzag_balances_causal_work_across_shards(num_shards):
    seq = 64 * num_shards
    balanced = work_per_shard(num_shards, True, seq, causal=True)
    contiguous = work_per_shard(num_shards, False, seq, causal=True)
    assert len(set(balanced.sum(axis=1).tolist())) == 1  # every shard the same work
    per_shard = contiguous.sum(axis=1)
    assert per_shard[-1] / per_shard[0] > 2 * num_shards - 2  # the last shard does (2n - 1) times the first's
    # Every step waits for its slowest shard. Balanced, no shard ever waits (the critical path is one shard's
    # work); contiguous, the ring takes (2n - 1) / n times as long, chunk diagonals aside.
    assert critical_path(balanced) == balanced.sum(axis=1)[0]
    assert critical_path(balanced) <= 1.01 * num_shards / (2 * num_shards - 1) * critical_path(contiguous)


# -- the traced ring (AbstractMesh: no devices) --------------------------------------------------------


def _jaxpr(fn, shapes, num_shards=4, mesh_axes=("seq",)):
    mesh = AbstractMesh((num_shards,), mesh_axes)
    specs = tuple(SEQ if len(s) == 4 and s[1] != 1 else P() for s in shapes)
    f = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=SEQ)
    return jax.make_jaxpr(f)(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes))


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqns(sub)


def _has_dot(jaxpr) -> bool:
    return any(e.primitive.name == "dot_general" for e in _eqns(jaxpr))


@pytest.mark.parametrize("load_balance", [False, True])
def test_a_skipped_pair_computes_nothing_forward_and_backward(load_balance):
    def ring(q, k, v):
        return ejkernel.ring_attention(q, k, v, causal=True, axis_name="seq", load_balance=load_balance,
                                       dtype=jnp.float32)[0]

    shape = (1, 32, 2, 8)
    def grad(*a):
        return jax.grad(lambda *b: jnp.sum(ring(*b)), (0, 1, 2))(*a)[0]

    jaxprs = [_jaxpr(ring, [shape] * 3), _jaxpr(grad, [shape] * 3)]
    for jaxpr in jaxprs:
        switches = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "cond"]
        assert switches
        for e in switches:  # branch 0 is PairClass.SKIP: no product at all; the others compute
            branches = e.params["branches"]
            assert len(branches) == 3
            assert not _has_dot(branches[0].jaxpr) and all(_has_dot(b.jaxpr) for b in branches[1:])


def test_without_causality_or_window_no_pair_is_skipped_and_nothing_switches():
    def ring(q, k, v):
        return ejkernel.ring_attention(q, k, v, axis_name="seq", dtype=jnp.float32)[0]

    jaxpr = _jaxpr(ring, [(1, 32, 2, 8)] * 3)
    assert not [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "cond"]
    # One ring: K and V sent once per step (one loop body), nothing else.
    assert sum(len(e.invars) for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "ppermute") == 2


def _ring_error(**kwargs):
    shapes = kwargs.pop("shapes", [(1, 32, 2, 8)] * 3)

    def ring(q, k, v, *extra):
        named = dict(zip(kwargs.pop("extra_names", ()), extra, strict=True))
        return ejkernel.ring_attention(q, k, v, **named, **kwargs, dtype=jnp.float32)[0]

    return _jaxpr(ring, shapes)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"axis_name": "heads"}, ValueError, "axis_name 'heads' is not a mesh axis"),
        ({"axis_name": "seq", "load_balance": 1}, TypeError, "load_balance must be a bool"),
        ({"axis_name": "seq", "shapes": [(1, 32, 2, 8), (1, 16, 2, 8), (1, 16, 2, 8)]}, ValueError, "same local length"),
        ({"axis_name": "seq", "load_balance": True, "shapes": [(1, 7, 2, 8)] * 3}, ValueError, "must be even"),
        ({"axis_name": "seq", "deterministic": False, "dropout_prob": 0.1, "dropout_rng": jax.random.key(0)},
         NotImplementedError, "dropout"),
        ({"axis_name": "seq", "shapes": [(1, 32, 2, 8)] * 3 + [(1, 1, 8, 8)], "extra_names": ("bias",)},
         ValueError, "bias must be \\[B\\|1, Hq\\|Hkv\\|1, S_local, S_local \\* num_shards\\]"),
        ({"axis_name": "seq", "shapes": [(1, 32, 3, 8), (1, 32, 2, 8), (1, 32, 2, 8)]}, ValueError, "multiple"),
        ({"axis_name": "seq", "sliding_window": -1}, ValueError, "sliding_window"),
        ({"axis_name": "seq", "kv_lengths": jnp.array([4.0])}, TypeError, "kv_lengths must be an integer"),
        ({"axis_name": "seq", "q_segment_ids": jnp.zeros((1, 32), jnp.int32)}, ValueError, "kv_segment_ids"),
        # Local ids (the closure is inside the 4-shard shard_map: S_local = 8).
        ({"axis_name": "seq", "q_segment_ids": jnp.zeros((1, 8), jnp.int32),
          "kv_segment_ids": jnp.zeros((1, 4), jnp.int32)}, ValueError, "kv_segment_ids must have shape"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        _ring_error(**kwargs)


def test_ring_attention_takes_the_attention_signature_plus_keyword_only_extras():
    import inspect

    params = list(inspect.signature(ejkernel.ring_attention).parameters.values())
    assert [p.name for p in params[:16]] == list(inspect.signature(ejkernel.attention).parameters)[:16]
    assert all(p.kind is p.KEYWORD_ONLY for p in params[16:])
    axis_name = next(p for p in params if p.name == "axis_name")
    assert axis_name.default is inspect.Parameter.empty


# -- the HLO overlap reader -------------------------------------------------------------------------------

_ASYNC_BODY = """HloModule m, is_scheduled=true

%branch (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %d = f32[4]{0} dot(%p, %p), lhs_contracting_dims={}, rhs_contracting_dims={}
}

%body (param: (s32[], f32[4], f32[4])) -> (s32[], f32[4], f32[4]) {
  %param = (s32[], f32[4]{0}, f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%param), index=0
  %kv = f32[4]{0} get-tuple-element(%param), index=1
  %acc = f32[4]{0} get-tuple-element(%param), index=2
  %start = (f32[4]{0}, f32[4]{0}) collective-permute-start(%kv), source_target_pairs={{0,1},{1,0}}
  %c = f32[4]{0} conditional(%i, %kv), branch_computations={%branch}
  %late = (f32[4]{0}, f32[4]{0}) collective-permute-start(%c), source_target_pairs={{0,1},{1,0}}
  %done = f32[4]{0} collective-permute-done(%start)
  %late_done = f32[4]{0} collective-permute-done(%late)
  %sum = f32[4]{0} add(%acc, %late_done)
  ROOT %t = (s32[], f32[4]{0}, f32[4]{0}) tuple(%i, %done, %sum)
}

%cond (param.1: (s32[], f32[4], f32[4])) -> pred[] {
  %param.1 = (s32[], f32[4]{0}, f32[4]{0}) parameter(0)
  ROOT %x = pred[] constant(true)
}

ENTRY %main (a: (s32[], f32[4], f32[4])) -> (s32[], f32[4], f32[4]) {
  %a = (s32[], f32[4]{0}, f32[4]{0}) parameter(0)
  ROOT %w = (s32[], f32[4]{0}, f32[4]{0}) while(%a), condition=%cond, body=%body
}
"""


def test_the_overlap_reader_finds_async_permutes_across_compute_and_dependent_ones():
    reports = {r.name: r for r in permute_overlap(_ASYNC_BODY)}
    assert set(reports) == {"start", "late"}
    start, late = reports["start"], reports["late"]
    assert start.asynchronous and start.independent_of_compute and start.issued_before_compute
    assert start.compute_overlapped == 1
    assert late.asynchronous and not late.independent_of_compute and not late.issued_before_compute
    assert late.compute_overlapped == 0


# The shape of a ring step as libtpu's compiler schedules it (trimmed from a v5e backward ring): tiled layouts,
# a collective-permute-start whose result tuple carries u32[] sync flags, ".sunk" clones, copy-start/done
# pairs, and the step's compute as an inner while over its chunk pairs (a Mosaic custom-call inside). "kv" is
# sent before the pair loop and received after it; "acc" is received before it (the loop adds into it).
_TPU_BODY = """HloModule jit_ring, is_scheduled=true, entry_computation_layout={(bf16[1,2048,8,128]{3,1,2,0})->bf16[1,2048,8,128]{3,1,2,0}}

%pairs.body.sunk (p.2: (s32[], bf16[1,2048,8,128], f32[1,2048,8,128])) -> (s32[], bf16[1,2048,8,128], f32[1,2048,8,128]) {
  %p.2 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) parameter(0)
  %i.2 = s32[]{:T(128)} get-tuple-element(%p.2), index=0
  %k.2 = bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)} get-tuple-element(%p.2), index=1
  %a.2 = f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)} get-tuple-element(%p.2), index=2
  %ejkernel_flash_backward.1 = (f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) custom-call(%k.2, %a.2), custom_call_target="tpu_custom_call", metadata={op_name="jit(<lambda>)/shard_map/while/body/pallas_call" stack_frame_id=7}, backend_config={"flag_configs":[],"custom_call_config":{"body":"TUxJUgA="}}
  %dk.2 = f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)} get-tuple-element(%ejkernel_flash_backward.1), index=0
  ROOT %tuple.2 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, /*index=2*/f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) tuple(%i.2, %k.2, %dk.2)
}

%pairs.cond (p.3: (s32[], bf16[1,2048,8,128], f32[1,2048,8,128])) -> pred[] {
  %p.3 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) parameter(0)
  ROOT %constant.3 = pred[]{:T(512)} constant(true)
}

%wide.region_10.23_spmd.sunk.clone.sunk (wide.param.1: (s32[], bf16[1,2048,8,128], /*index=2*/f32[1,2048,8,128])) -> (s32[], bf16[1,2048,8,128], f32[1,2048,8,128]) {
  %wide.param.1 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, /*index=2*/f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) parameter(0)
  %get-tuple-element.1 = bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)} get-tuple-element(%wide.param.1), index=1
  %get-tuple-element.2 = f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)} get-tuple-element(%wide.param.1), index=2
  %copy.1 = bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)} copy(%get-tuple-element.1), backend_config={"flag_configs":[],"window_config":{"output_window_bounds":["1","4","256","1"]}}
  %kv = (bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%copy.1), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}, metadata={op_name="jit(<lambda>)/transpose(jvp())/shard_map/while/body/closed_call/ppermute" stack_frame_id=183}, backend_config={"flag_configs":[],"barrier_config":{"barrier_type":"CUSTOM"}}
  %acc = (f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%get-tuple-element.2), channel_id=2, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  %get-tuple-element.0 = s32[]{:T(128)} get-tuple-element(%wide.param.1), index=0
  %acc.done = f32[1,2048,8,128]{3,1,2,0:T(8,128)} collective-permute-done(%acc), metadata={op_name="jit(<lambda>)/transpose(jvp())/shard_map/while/body/closed_call/ppermute" stack_frame_id=183}
  %copy-start.1 = (f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)}, u32[]{:S(2)}) copy-start(%acc.done)
  %copy-done.1 = f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)} copy-done(%copy-start.1)
  %tuple.1 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) tuple(%get-tuple-element.0, %get-tuple-element.1, %copy-done.1)
  %while.124 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) while(%tuple.1), condition=%pairs.cond, body=%pairs.body.sunk, backend_config={"known_trip_count":{"n":"4"}}
  %dk = f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)} get-tuple-element(%while.124), index=2
  %kv.done = bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)} collective-permute-done(%kv)
  ROOT %tuple.375 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, /*index=2*/f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) tuple(%get-tuple-element.0, %kv.done, %dk)
}

%wide.cond (p.4: (s32[], bf16[1,2048,8,128], f32[1,2048,8,128])) -> pred[] {
  %p.4 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) parameter(0)
  ROOT %constant.4 = pred[]{:T(512)} constant(true)
}

ENTRY %main.5 (a.5: (s32[], bf16[1,2048,8,128], f32[1,2048,8,128])) -> (s32[], bf16[1,2048,8,128], f32[1,2048,8,128]) {
  %a.5 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) parameter(0)
  ROOT %while.280 = (s32[]{:T(128)}, bf16[1,2048,8,128]{3,1,2,0:T(8,128)(2,1)}, f32[1,2048,8,128]{3,1,2,0:T(8,128)S(1)}) while(%a.5), condition=%wide.cond, body=%wide.region_10.23_spmd.sunk.clone.sunk
}
"""


def test_the_overlap_reader_reads_the_tpu_compilers_schedule():
    reports = {r.name: r for r in permute_overlap(_TPU_BODY)}
    assert set(reports) == {"kv", "acc"}
    kv, acc = reports["kv"], reports["acc"]
    assert {kv.computation, acc.computation} == {"wide.region_10.23_spmd.sunk.clone.sunk"}
    assert kv.asynchronous and kv.independent_of_compute and kv.issued_before_compute
    assert kv.compute_overlapped == 1  # the pair loop
    assert acc.asynchronous and acc.independent_of_compute and acc.issued_before_compute
    assert acc.compute_overlapped == 0  # received before the loop that adds into it




def test_the_work_table_of_the_ring_page_is_what_the_schedule_counts():
    text = (ROOT / "docs" / "ring.rst").read_text()
    for placement, balanced in (("contiguous", False), ("zigzag", True)):
        row = next(line for line in text.splitlines() if line.startswith(placement + "  "))
        per_shard, slowest, total = (cell.strip() for cell in row[len(placement):].strip().split("  ") if cell.strip())
        work = work_per_shard(4, balanced, 32, causal=True)
        assert per_shard == ", ".join(map(str, work.sum(axis=1)))
        assert slowest == ", ".join(map(str, work.max(axis=0)))
        assert int(total) == critical_path(work)


def test_the_sharded_helper_refuses_an_unknown_axis_and_dropout():
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]), ("seq",))
    q = jnp.zeros((1, 8, 2, 8))
    with pytest.raises(ValueError, match="axis_name 'ctx' is not an axis of the mesh"):
        ejkernel.sharded_ring_attention(q, q, q, mesh=mesh, axis_name="ctx")
    with pytest.raises(NotImplementedError, match="dropout"):
        ejkernel.sharded_ring_attention(q, q, q, mesh=mesh, axis_name="seq", deterministic=False, dropout_prob=0.5,
                                        dropout_rng=jax.random.key(0))
    with pytest.raises(ValueError, match="must be 4-dimensional|rank 4"):
        ejkernel.sharded_ring_attention(q[0], q, q, mesh=mesh, axis_name="seq")
