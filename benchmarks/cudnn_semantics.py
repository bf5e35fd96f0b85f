"""Where cuDNN's fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``) equals our
semantics: each case runs through jax.nn's cuDNN path with the arguments translated one-to-one and is
compared with the float32 oracle, forward and gradients (q, k, v and bias). What passes here is what
``ejkernel/kernels/cudnn/capabilities.py`` may claim; what fails is why the rest falls back.

    python benchmarks/cudnn_semantics.py [CASE ...]   # on an NVIDIA GPU; one line per case and dtype
"""

from __future__ import annotations

import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from ejkernel.check import TOLERANCE, CheckCase, make_inputs, oracle, relative_error

CASES = (
    CheckCase("plain-d128", 2, 1024, 1024, 8, 8, 128),
    CheckCase("ragged-777", 2, 777, 777, 4, 4, 128),
    CheckCase("sq!=skv", 2, 512, 1024, 4, 4, 128),
    CheckCase("sq!=skv-ragged", 1, 300, 701, 4, 4, 64),
    CheckCase("causal", 2, 1024, 1024, 4, 4, 128, causal=True),
    CheckCase("causal-ragged", 1, 999, 999, 4, 4, 64, causal=True),
    CheckCase("causal-sq<skv", 1, 512, 1024, 4, 4, 128, causal=True),
    CheckCase("causal-sq>skv", 1, 1024, 512, 4, 4, 128, causal=True),
    CheckCase("causal+window128", 1, 1024, 1024, 4, 4, 128, causal=True, sliding_window=(128, 0)),
    CheckCase("causal+window(100,7)", 1, 1000, 1000, 4, 4, 64, causal=True, sliding_window=(100, 7)),
    CheckCase("window(64,0)-noncausal", 1, 1024, 1024, 4, 4, 64, sliding_window=(64, 0)),
    CheckCase("gqa8/2", 2, 1024, 1024, 8, 2, 128),
    CheckCase("mqa-causal", 1, 1024, 1024, 8, 1, 128, causal=True),
    CheckCase("d64", 2, 1024, 1024, 4, 4, 64),
    CheckCase("d96", 1, 640, 640, 4, 4, 96),
    CheckCase("d256", 1, 1024, 1024, 4, 4, 256),
    CheckCase("d256-causal", 1, 1024, 1024, 4, 4, 256, causal=True),
    CheckCase("d72", 1, 512, 512, 4, 4, 72),
    CheckCase("dv!=d", 1, 512, 512, 4, 4, 128, v_head_dim=64),
    CheckCase("decode", 4, 1, 1000, 8, 2, 128),
    CheckCase("bias-B,q", 2, 512, 512, 4, 4, 64, bias_shape="B,q"),
    CheckCase("bias-1,q", 2, 512, 512, 4, 4, 64, bias_shape="1,q"),
    CheckCase("bias-1,1", 2, 512, 512, 4, 4, 64, bias_shape="1,1"),
    CheckCase("bias-B,1", 2, 512, 512, 4, 4, 64, bias_shape="B,1"),
    CheckCase("bias-ragged", 1, 511, 511, 4, 4, 64, bias_shape="1,q"),
    CheckCase("mask-B,1", 2, 512, 512, 4, 4, 64, mask_shape="B,1"),
    CheckCase("scale0.3", 2, 512, 512, 4, 4, 64, softmax_scale=0.3),
)

_LAYOUT_OF = {"q": lambda c: c.num_q_heads, "kv": lambda c: c.num_kv_heads, "1": lambda c: 1}


def cudnn_fn(case: CheckCase):
    """Our arguments, translated to jax.nn's, through its cuDNN path (no translation of semantics)."""

    def fn(query, key, value, bias=None, attention_mask=None, dtype=jnp.bfloat16, **_):
        cast = lambda x: None if x is None else x.astype(dtype)  # noqa: E731
        window = case.sliding_window
        if isinstance(window, int):
            window = (window, window)
        return jax.nn.dot_product_attention(
            cast(query), cast(key), cast(value), bias=cast(bias), mask=attention_mask,
            scale=case.softmax_scale, is_causal=case.causal, local_window_size=window, implementation="cudnn",
        )

    return fn


def run(case: CheckCase, dtype: str) -> str:
    args = make_inputs(case, seed=1)
    dv = case.v_head_dim or case.head_dim
    cot = jax.random.normal(jax.random.key(9), (case.batch, case.q_len, case.num_q_heads, dv))
    ref_out, ref_grads = oracle(args, cot)
    diff = {k: args[k] for k in ("query", "key", "value", "bias") if args.get(k) is not None}
    rest = {k: args[k] for k in ("attention_mask",) if args.get(k) is not None}
    fn = cudnn_fn(case)

    @jax.jit
    def fwd_bwd(d, rest):
        out, vjp = jax.vjp(lambda d: fn(**d, **rest, dtype=jnp.dtype(dtype)), d)
        return out, vjp(cot.astype(out.dtype))[0]

    out, grads = fwd_bwd(diff, rest)
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{k}": relative_error(grads[k], ref_grads[k]) for k in diff})
    worst = max(errors.values())
    verdict = "PASS" if worst <= TOLERANCE[dtype] else "FAIL"
    return f"{verdict} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items())


def main() -> int:
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}", flush=True)
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    for case in (c for c in CASES if not names or c.name in names):
        for dtype in ("bfloat16", "float16"):
            try:
                line = run(case, dtype)
            except Exception as e:  # a case cuDNN rejects is a result, not a crash of the probe
                line = f"REJECTED {type(e).__name__}: {str(e).splitlines()[0][:150]}"
                if "--trace" in sys.argv:
                    traceback.print_exc()
            print(f"{case.name:26s} {dtype:9s} {line}", flush=True)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
