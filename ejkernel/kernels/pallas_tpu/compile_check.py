"""Proof of compilation without a TPU: lower (and, with libtpu, compile) every claimed configuration.

``configurations()`` is the matrix the kernel claims (``spec.CAPABILITIES``): every supported dtype and a
spread of head dims (multiples of 128 and not), each alone and with every feature together, and every
feature class (causal, window, soft cap, sinks, each bias and mask layout, GQA/MQA, ``Dv != D``, ragged
and decode lengths) on its own; each is built forward-only and forward+backward.

``lower(config)`` lowers for TPU on any host (``lowering_platforms=("tpu",)``): it rejects block shapes
Mosaic cannot tile and primitives it lacks. ``compile(config, topology)`` additionally runs the Mosaic
compiler for a TPU topology (e.g. ``"v5e:2x2"``), which needs ``pip install "jax[tpu]"`` (libtpu) but no
TPU; it catches layout errors and VMEM overuse. ``python -m ejkernel.kernels.pallas_tpu.compile_check
--topology v5e:2x2 --topology v6e:2x2`` compiles the whole matrix (the ``tpu_compile`` nox session).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from ejkernel.kernels.pallas_tpu.blocks import BlockSizes

__all__ = ["Config", "configurations", "lower", "compile_config", "main"]

HEAD_DIMS = (64, 96, 128, 192, 256)
DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    dtype: str = "bfloat16"
    batch: int = 2
    q_len: int = 1024
    kv_len: int = 1024
    num_q_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 128
    v_head_dim: int | None = None
    causal: bool = False
    sliding_window: Any = None
    logits_soft_cap: float | None = None
    sinks: str | None = None  # "per_head" | "shared"
    bias: str | None = None  # "B,q" | "1,kv" | ...
    mask: str | None = None
    backward: bool = True
    block_sizes: BlockSizes | None = None
    packing: str | None = None  # "segments" | "lengths" | "both": segment ids and/or kv_lengths

    @property
    def label(self) -> str:
        return f"{self.name}/{self.dtype}/D{self.head_dim}/{'fwd+bwd' if self.backward else 'fwd'}"


def _feature_classes() -> list[Config]:
    return [
        Config("plain"),
        Config("causal", causal=True),
        Config("window", sliding_window=(256, 64)),
        Config("causal+window", causal=True, sliding_window=300),
        Config("soft_cap", logits_soft_cap=30.0),
        Config("sinks[Hq,n]", sinks="per_head"),
        Config("sinks[n]", sinks="shared"),
        Config("bias[B,Hq]", bias="B,q"),
        Config("bias[1,Hkv]", bias="1,kv", num_q_heads=8, num_kv_heads=2),
        Config("bias[1,1]", bias="1,1"),
        Config("mask[B,Hq]", mask="B,q"),
        Config("mask[1,1]+bias[B,1]", mask="1,1", bias="B,1"),
        Config("gqa", num_q_heads=8, num_kv_heads=2),
        Config("mqa", num_q_heads=8, num_kv_heads=1),
        Config("dv!=d", v_head_dim=64),
        Config("ragged", q_len=1000, kv_len=777),
        Config("decode", q_len=1, kv_len=2048, causal=True),
        Config("long_causal", q_len=4096, kv_len=4096, causal=True, batch=1),
        Config("segments", packing="segments", causal=True, q_len=1000, kv_len=1000),
        Config("kv_lengths", packing="lengths", q_len=1, kv_len=2048, causal=True, num_q_heads=8, num_kv_heads=2),
        Config("segments+lengths+bias", packing="both", bias="1,kv", num_q_heads=8, num_kv_heads=2),
    ]


def _everything(head_dim: int, dtype: str) -> Config:
    return Config(
        "all_features", dtype=dtype, head_dim=head_dim, q_len=1000, kv_len=1100, num_q_heads=8, num_kv_heads=2,
        causal=True, sliding_window=(400, 0), logits_soft_cap=20.0, sinks="per_head", bias="1,kv", mask="B,1",
    )


def configurations(quick: bool = False) -> list[Config]:
    """The claimed matrix; ``quick`` keeps one dtype per feature class (for the CPU lowering test)."""
    configs = []
    for dtype in DTYPES:
        for d in HEAD_DIMS:
            configs.append(Config("plain", dtype=dtype, head_dim=d))
            configs.append(_everything(d, dtype))
        for c in _feature_classes():
            if quick and dtype != "bfloat16":
                continue
            configs.append(dataclasses.replace(c, dtype=dtype))
        # VMEM: the heuristic's choice at the largest head dim with every tiled operand, and the largest
        # tiles it can ever pick.
        configs.append(Config("heuristic_worst_vmem", dtype=dtype, head_dim=256, q_len=4096, kv_len=4096,
                              batch=1, num_q_heads=2, num_kv_heads=2, bias="B,q", mask="B,q"))
        configs.append(Config("blocks512", dtype=dtype, head_dim=128, q_len=2048, kv_len=2048, batch=1,
                              block_sizes=BlockSizes(512, 512, 512, 512)))
    out = []
    for c in configs:
        out.append(c)
        if not quick:
            out.append(dataclasses.replace(c, backward=False))
    return out


def _operand_shape(spec: str, c: Config) -> tuple[int, ...]:
    b, h = spec.split(",")
    heads = {"q": c.num_q_heads, "kv": c.num_kv_heads, "1": 1}[h]
    return (c.batch if b == "B" else 1, heads, c.q_len, c.kv_len)


def _function_and_args(c: Config, sharding: Any = None) -> tuple[Any, list[jax.ShapeDtypeStruct]]:
    from ejkernel.kernels.pallas_tpu.interface import flash_attention

    dtype = jnp.dtype(c.dtype)

    def struct(shape, dt=dtype):
        return jax.ShapeDtypeStruct(shape, dt, sharding=sharding)

    dv = c.v_head_dim or c.head_dim
    args = {
        "query": struct((c.batch, c.q_len, c.num_q_heads, c.head_dim)),
        "key": struct((c.batch, c.kv_len, c.num_kv_heads, c.head_dim)),
        "value": struct((c.batch, c.kv_len, c.num_kv_heads, dv)),
    }
    if c.bias:
        args["bias"] = struct(_operand_shape(c.bias, c))
    if c.sinks:
        args["softmax_aux"] = struct((c.num_q_heads, 2) if c.sinks == "per_head" else (3,), jnp.float32)
    mask = struct(_operand_shape(c.mask, c), jnp.bool_) if c.mask else None
    packing = {}
    if c.packing in ("segments", "both"):
        packing["q_segment_ids"] = struct((c.batch, c.q_len), jnp.int32)
        packing["kv_segment_ids"] = struct((c.batch, c.kv_len), jnp.int32)
    if c.packing in ("lengths", "both"):
        packing["kv_lengths"] = struct((c.batch,), jnp.int32)
    names = list(args)
    static = dict(causal=c.causal, sliding_window=c.sliding_window, logits_soft_cap=c.logits_soft_cap,
                  dtype=dtype, block_sizes=c.block_sizes)

    def forward(*xs):
        diff, m, ids = xs[: len(names)], xs[len(names)], xs[len(names) + 1:]
        out, _ = flash_attention(**dict(zip(names, diff, strict=True)), attention_mask=m,
                                 **dict(zip(packing, ids, strict=True)), **static)
        return out

    if not c.backward:
        return forward, [*args.values(), mask, *packing.values()]

    def loss(*xs):
        return jnp.sum(forward(*xs).astype(jnp.float32))

    return jax.grad(loss, argnums=tuple(range(len(names)))), [*args.values(), mask, *packing.values()]


def lower(c: Config) -> Any:
    """Lowers ``c`` for TPU on this host (no TPU needed)."""
    fn, args = _function_and_args(c)
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",))


def compile_config(c: Config, topology: str) -> Any:
    """Compiles ``c`` with the Mosaic compiler for ``topology`` (needs libtpu, not a TPU)."""
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(topology, "tpu")
    sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
    fn, args = _function_and_args(c, sharding)
    return jax.jit(fn).trace(*args).lower().compile()


def _vmem_canary_fails(topology: str) -> bool:
    """Whether a deliberately oversized tile (4096 x 4096 float32 at D=256, ~290 MiB of VMEM) is rejected.

    Proves that the compile checks VMEM at all, so that the matrix compiling is evidence of fitting.
    (v5e already rejects 1024 x 1024 tiles, ~20 MiB; v6e compiled 2048 x 2048 and rejected 4096 x 4096
    against its 128 MiB of VMEM.)
    """
    canary = Config("vmem_canary", dtype="float32", head_dim=256, q_len=4096, kv_len=4096, batch=1,
                    num_q_heads=1, num_kv_heads=1, backward=False, block_sizes=BlockSizes(4096, 4096, 4096, 4096))
    try:
        compile_config(canary, topology)
    except Exception as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Vmem" in str(e):
            print(f"{topology}: oversized canary rejected as expected ({type(e).__name__})", flush=True)
            return True
        raise
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", action="append", help="e.g. v5e:2x2 (repeatable); none = lower only")
    parser.add_argument("--quick", action="store_true", help="the reduced matrix of the CPU test")
    ns = parser.parse_args(argv)
    failures = 0
    configs = configurations(ns.quick)
    for target in ns.topology or [None]:
        start = time.perf_counter()
        for c in configs:
            try:
                lower(c) if target is None else compile_config(c, target)
            except Exception as e:  # report every failure, not just the first
                failures += 1
                print(f"FAIL {target or 'lower'} {c.label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        print(f"{target or 'lower'}: {len(configs)} configurations in {time.perf_counter() - start:.1f} s", flush=True)
        if target is not None and not _vmem_canary_fails(target):
            failures += 1
            print(f"FAIL {target}: the oversized canary compiled, so this compile cannot detect VMEM overuse")
    print("failures:", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
