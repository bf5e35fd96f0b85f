"""``ejkernel bench parity``: every capability class at GPU sizes, through the registry, against the oracle.

Each case of ``PARITY_CASES`` runs forward and gradients (q, k, v, bias, sinks) through
``ejkernel.check.run_case`` (the registry's kernel for the platform) against the XLA oracle in float32 at
highest precision (``ejkernel.check.reference_for``, computed once per case and shared by its dtypes),
with a standard normal output cotangent. A case passes when every error is within
``ejkernel.check.TOLERANCE`` of its dtype **and** the named platform served the call: a fallback to
another platform is a failure here, not a pass.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ejkernel.check import TOLERANCE, CheckCase, make_inputs, reference_for, run_case

__all__ = ["PARITY_CASES", "FLOAT16_CASES", "DTYPES", "select_parity_cases", "dtypes_for", "served_platform",
           "run_parity", "format_row"]

PARITY_CASES = (
    CheckCase("plain-d128", batch=2, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128),
    CheckCase("causal-ragged", batch=2, q_len=700, kv_len=1100, num_q_heads=4, num_kv_heads=4, head_dim=64, causal=True),
    CheckCase("causal-sq>skv", batch=1, q_len=900, kv_len=300, num_q_heads=4, num_kv_heads=2, head_dim=64, causal=True),
    CheckCase("window", batch=2, q_len=1000, kv_len=800, num_q_heads=4, num_kv_heads=4, head_dim=64, sliding_window=(200, 50)),
    CheckCase("causal+window", batch=2, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128, causal=True, sliding_window=300),
    CheckCase("gqa4+bias-B,kv", batch=2, q_len=512, kv_len=640, num_q_heads=8, num_kv_heads=2, head_dim=128, bias_shape="B,kv"),
    CheckCase("mqa+mask-B,1+bias-1,q", batch=2, q_len=384, kv_len=500, num_q_heads=4, num_kv_heads=1, head_dim=64, bias_shape="1,q", mask_shape="B,1"),
    CheckCase("bias-1,1+mask-1,kv+causal", batch=2, q_len=300, kv_len=300, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="1,1", mask_shape="1,kv", causal=True),
    CheckCase("bias-B,q+mask-B,q", batch=2, q_len=256, kv_len=256, num_q_heads=2, num_kv_heads=2, head_dim=64, bias_shape="B,q", mask_shape="B,q"),
    CheckCase("bias-B,1+mask-1,1", batch=2, q_len=256, kv_len=320, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="B,1", mask_shape="1,1"),
    CheckCase("bias-1,kv", batch=2, q_len=256, kv_len=256, num_q_heads=4, num_kv_heads=2, head_dim=64, bias_shape="1,kv"),
    CheckCase("soft_cap", batch=2, q_len=1000, kv_len=1000, num_q_heads=4, num_kv_heads=4, head_dim=128, logits_soft_cap=5.0, softmax_scale=0.5),
    CheckCase("sinks+causal", batch=2, q_len=512, kv_len=900, num_q_heads=4, num_kv_heads=4, head_dim=64, sinks="per_head", causal=True),
    CheckCase("shared-sinks+gqa", batch=2, q_len=600, kv_len=600, num_q_heads=6, num_kv_heads=3, head_dim=64, sinks="shared"),
    CheckCase("d96", batch=2, q_len=777, kv_len=777, num_q_heads=4, num_kv_heads=4, head_dim=96, causal=True),
    CheckCase("d192", batch=1, q_len=640, kv_len=640, num_q_heads=4, num_kv_heads=2, head_dim=192),
    CheckCase("d256", batch=1, q_len=640, kv_len=700, num_q_heads=4, num_kv_heads=4, head_dim=256, causal=True),
    CheckCase("d256+bias+mask", batch=1, q_len=400, kv_len=500, num_q_heads=4, num_kv_heads=2, head_dim=256, bias_shape="B,q", mask_shape="1,kv"),
    CheckCase("d128+bias+causal", batch=1, q_len=1024, kv_len=1024, num_q_heads=4, num_kv_heads=4, head_dim=128, bias_shape="1,q", causal=True),
    CheckCase("dv!=d", batch=2, q_len=333, kv_len=555, num_q_heads=4, num_kv_heads=2, head_dim=128, v_head_dim=64),
    CheckCase("decode", batch=4, q_len=1, kv_len=1000, num_q_heads=8, num_kv_heads=2, head_dim=128, causal=True),
    CheckCase("decode-split", batch=2, q_len=1, kv_len=20000, num_q_heads=32, num_kv_heads=8, head_dim=128),
    CheckCase("decode-sq4+window+sinks", batch=2, q_len=4, kv_len=5000, num_q_heads=16, num_kv_heads=4, head_dim=128,
              causal=True, sliding_window=(1000, 0), sinks="per_head"),
    CheckCase("packed-causal", batch=2, q_len=2048, kv_len=2048, num_q_heads=4, num_kv_heads=2, head_dim=128,
              causal=True, packed_docs=7),
    CheckCase("packed+kv_lengths+window", batch=2, q_len=900, kv_len=1100, num_q_heads=4, num_kv_heads=4, head_dim=64,
              sliding_window=(256, 32), packed_docs=4, kv_lengths=True),
    CheckCase("decode-kv_lengths", batch=4, q_len=1, kv_len=20000, num_q_heads=32, num_kv_heads=8, head_dim=128,
              causal=True, kv_lengths=True),
    CheckCase("all", batch=2, q_len=500, kv_len=530, num_q_heads=4, num_kv_heads=2, head_dim=64, v_head_dim=32,
              causal=True, sliding_window=(300, 10), bias_shape="1,kv", mask_shape="B,1", logits_soft_cap=4.0,
              sinks="per_head", softmax_scale=0.3),
)  # fmt: skip

#: Cases also run in float16 (every case runs in bfloat16 and float32).
FLOAT16_CASES = ("plain-d128", "causal-ragged", "gqa4+bias-B,kv")
DTYPES = ("bfloat16", "float32", "float16")


def select_parity_cases(names: Iterable[str] | None = None) -> tuple[CheckCase, ...]:
    """``PARITY_CASES`` restricted to ``names`` (exact case names; all when empty), in their order."""
    names = list(names or [])
    unknown = sorted(set(names) - {c.name for c in PARITY_CASES})
    if unknown:
        raise ValueError(f"unknown parity case(s) {unknown}; known: {[c.name for c in PARITY_CASES]}")
    return tuple(c for c in PARITY_CASES if not names or c.name in names)


def dtypes_for(case: CheckCase, wanted: Sequence[str] = ()) -> list[str]:
    """bfloat16 and float32, float16 too for ``FLOAT16_CASES``; only those in ``wanted`` when given."""
    dtypes = ["bfloat16", "float32"] + (["float16"] if case.name in FLOAT16_CASES else [])
    return [d for d in dtypes if not wanted or d in wanted]


def served_platform(label: str) -> str:
    """The platform of a ``served_by`` label (``"triton (interpret)"``, ``"xla:chunked"`` -> ``"xla"``)."""
    return label.split(" ", 1)[0].split(":", 1)[0]


def _cotangent(case: CheckCase, seed: int) -> jnp.ndarray:
    shape = (case.batch, case.q_len, case.num_q_heads, case.v_head_dim or case.head_dim)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


def run_parity(
    platform: str,
    cases: Sequence[CheckCase],
    dtypes: Sequence[str] = (),
    *,
    interpret: bool = False,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (case, dtype); ``on_row`` sees each as it finishes. An exception fails its row only."""
    rows = []
    for case in cases:
        wanted = dtypes_for(case, dtypes)
        if not wanted:
            continue
        reference = reference_for(make_inputs(case, seed), _cotangent(case, seed))
        for dtype in wanted:
            start = time.perf_counter()
            try:
                r = run_case(platform, case, dtype, interpret=interpret, seed=seed, reference=reference)
                row = dict(case=case.name, dtype=dtype, served_by=r.served_by, errors=r.errors, tolerance=r.tolerance,
                           passed=r.passed and served_platform(r.served_by) == platform)
            except Exception as e:  # report and go on: one broken class must not hide the others
                traceback.print_exc()
                row = dict(case=case.name, dtype=dtype, served_by="error", errors={}, tolerance=TOLERANCE[dtype],
                           passed=False, error=f"{type(e).__name__}: {e}"[:2000])
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def format_row(row: dict[str, Any], platform: str) -> str:
    """``PASS|FAIL case dtype served by X worst E (output) tol T (seconds)``, and why a FAIL failed."""
    status = "PASS" if row["passed"] else "FAIL"
    text = f"{status}  {row['case']:26s} {row['dtype']:9s} served by {row['served_by']:20s}"
    if row["errors"]:
        worst = max(row["errors"], key=row["errors"].get)
        text += f" worst {row['errors'][worst]:.2e} ({worst}) tol {row['tolerance']:.0e}"
    text += f" ({row['seconds']}s)"
    if "error" in row:
        text += f": {row['error'].splitlines()[0][:200]}"
    elif not row["passed"] and served_platform(row["served_by"]) != platform:
        text += f": {platform} did not serve the call"
    return text
