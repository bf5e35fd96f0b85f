"""What differs between jax versions, and between the Hopper device and Mosaic-GPU's CPU interpreter.

The kernel is one body; the few operations that must be spelled differently go through here:

- jax 0.11 spells a transposed ref ``ref.transpose((1, 0))`` and deprecates ``plgpu.transpose_ref``,
  which jax 0.10 needs;
- the jax 0.10 interpreter has no CPU rule for ``plgpu.layout_cast`` or a laid-out ``broadcasted_iota``,
  cannot take a transposed ref or a register operand in ``wgmma``, and has no ``pl.run_state``: so
  interpreted matmuls read their tiles out of shared memory and use ``lax.dot_general`` (the same
  float32-accumulated product), while on the device both are ``wgmma`` (S = Q·Kᵀ from shared memory,
  O += P·V with P in registers, accumulated in place). The backward's products take the same two forms
  (``scores``: A·Bᵀ of two shared tiles; ``accumulate_pv``: acc + A·B, A in registers);
- a 1-D shared-memory vector (the backward's lse and delta) is read in a wgmma row or column layout on the
  device (``plgpu.load``, whose index argument jax 0.11 deprecates) and as a plain array in the interpreter.

Everything else (warp specialisation, the TMA ring and its barriers, the block ranges, the masks and the
online softmax) is the same code on both paths.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

__all__ = [
    "interpret_params",
    "named",
    "transposed",
    "with_layout",
    "iota",
    "load_vector",
    "scores",
    "accumulate_pv",
]


def interpret_params(interpret: bool) -> Any:
    """The ``interpret`` argument of ``plgpu.kernel``: GPU interpret mode's parameters, or ``None``."""
    if not interpret:
        return None
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


def named(body: Any, name: str) -> Any:
    """``body`` (a ``functools.partial``) named ``name``: ``plgpu.kernel`` names the kernel after its body's
    ``__name__`` (a partial has none: every kernel was "anonymous" in a profile). An attribute, not
    ``plgpu.kernel``'s ``kernel_name``, which not every jax version takes."""
    body.__name__ = name
    return body


def transposed(ref: Any) -> Any:
    """``ref`` viewed transposed (a 2-D shared-memory tile), in this jax version's spelling."""
    if "transpose_ref" in vars(plgpu):  # jax 0.10: a plain attribute; 0.11 only a deprecated alias
        return plgpu.transpose_ref(ref, (1, 0))
    return ref.transpose((1, 0))


def with_layout(x: Any, layout: Any, interpret: bool) -> Any:
    """``x`` in register layout ``layout`` (a loop carry must enter in the layout its body returns)."""
    return x if interpret else plgpu.layout_cast(x, layout)


def iota(shape: tuple[int, int], dimension: int, interpret: bool) -> Any:
    """int32 indices along ``dimension`` of a ``[rows, cols]`` tile, in the wgmma accumulator layout."""
    if interpret:
        return lax.broadcasted_iota(jnp.int32, shape, dimension)
    return plgpu.broadcasted_iota(jnp.int32, shape, dimension, layout=plgpu.Layout.WGMMA)


def _load_takes_index() -> bool:
    """Whether ``plgpu.load`` needs its index argument (jax 0.10; jax 0.11 deprecates it)."""
    index = inspect.signature(plgpu.load).parameters.get("idx")
    return index is not None and index.default is inspect.Parameter.empty


def load_vector(ref: Any, reduced_axis: int, interpret: bool) -> Any:
    """A 1-D shared-memory vector in registers: one value per row of a wgmma accumulator tile
    (``reduced_axis=1``) or per column (``reduced_axis=0``), ready for ``tiles.rows`` / ``tiles.columns``."""
    if interpret:
        return ref[...]
    layout = plgpu.Layout.WGMMA.reduce(reduced_axis)
    if _load_takes_index():
        return plgpu.load(ref, (), layout=layout)
    return plgpu.load(ref, layout=layout)


def _dot(a: Any, b: Any, contract_b: int) -> Any:
    return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def scores(q_smem: Any, k_smem: Any, interpret: bool, after_issue=None) -> Any:
    """``Q·Kᵀ`` float32 ``[block_q, block_k]`` of two shared-memory tiles (any ``A·Bᵀ``: the backward's
    ``K·Qᵀ``, ``V·dOᵀ``, ``dO·Vᵀ``); ``after_issue()`` runs once the product is issued (the warpgroups' schedule barrier), before its result is read."""
    if interpret:
        s = _dot(q_smem[...], k_smem[...], 1)
        if after_issue is not None:
            after_issue()
        return s

    def issue(acc_ref):
        plgpu.wgmma(acc_ref, q_smem, transposed(k_smem))
        if after_issue is not None:
            after_issue()
        return acc_ref[...]

    block_q, block_k = q_smem.shape[0], k_smem.shape[0]
    return pl.run_scoped(issue, plgpu.ACC((block_q, block_k), jnp.float32))


def accumulate_pv(acc: Any, p: Any, v_smem: Any, interpret: bool) -> Any:
    """``acc + P·V``: ``p`` the probabilities in registers (the operands' dtype), ``v_smem`` a shared tile
    (any ``acc + A·B``: the backward's ``Pᵀ·dO``, ``dSᵀ·Q``, ``dS·K``)."""
    if interpret:
        return acc + _dot(p, v_smem[...], 0)

    def issue(acc_ref):
        plgpu.wgmma(acc_ref, p, v_smem)

    return pl.run_state(issue)(plgpu.ACC.init(acc))
