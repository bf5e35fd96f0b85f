"""``ejkernel.attention`` composes with ``shard_map`` over batch and heads (docs/design.rst, "Kernels").

The XLA paths run under the default ``check_vma=True``; the Pallas kernels (TPU and Triton, here in
interpret mode) need ``check_vma=False`` for now, as their ``out_shape`` carries no varying-axes type.

Runs in a subprocess because the number of host devices must be set before JAX starts.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import ejkernel
    from ejkernel.errors import FallbackWarning

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("batch", "heads"))
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (4, 40, 8, 16))
    k = jax.random.normal(ks[1], (4, 56, 4, 16))
    v = jax.random.normal(ks[2], (4, 56, 4, 16))
    sinks = jax.random.normal(ks[3], (8, 2))
    spec = P("batch", None, "heads", None)

    def run(platform, interpret=False):
        def local(q, k, v, sinks):
            kernel = ejkernel.get_kernel("attention", platform, interpret=interpret)
            out, _ = kernel(q, k, v, softmax_aux=sinks, causal=True, dtype=jnp.float32)
            return out
        def loss(q, k, v, sinks):
            # Pallas calls don't yet declare how their outputs vary across manual axes (check_vma).
            f = shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P("heads", None)), out_specs=spec,
                          check_vma=not interpret)
            return jnp.sum(f(q, k, v, sinks) ** 2)
        with jax.default_matmul_precision("highest"):
            return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, sinks)

    def plain(q, k, v, sinks):
        out, _ = ejkernel.attention(q, k, v, softmax_aux=sinks, causal=True, dtype=jnp.float32, platform="xla")
        return jnp.sum(out ** 2)
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(jax.value_and_grad(plain, argnums=(0, 1, 2, 3)))(q, k, v, sinks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        for platform, interpret in (("xla", False), ("pallas_tpu", True), ("triton", True)):
            got = run(platform, interpret)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
                err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                assert err < 1e-5, (platform, err)
            print("ok", platform)
    """
)


def test_attention_composes_with_shard_map_over_batch_and_heads():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "xla", "ok", "pallas_tpu", "ok", "triton"]
