"""Test configuration: hypothesis profiles and a persistent compilation cache (tests only).

Profiles: "ci" (default; keeps the suite inside the CI budget) and "thorough" (100 examples per property, against 8),
chosen with ``HYPOTHESIS_PROFILE``. Tests scale their own example counts from ``settings().max_examples``.
"""

from __future__ import annotations

import os
import pathlib

import jax
from hypothesis import HealthCheck, settings

CI_EXAMPLES = 8
THOROUGH_EXAMPLES = 100

settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=THOROUGH_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Compilation dominates the suite's time; a cache makes reruns several times faster.
_cache = pathlib.Path(os.environ.get("EJKERNEL_TEST_CACHE", pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _gpu_absent_reason() -> str | None:
    """Why the GPU profile cannot run here (``None`` on a CUDA GPU)."""
    try:
        jax.devices("gpu")
    except RuntimeError:
        return f"no GPU visible to JAX (devices: {', '.join(sorted({d.platform for d in jax.devices()}))})"
    return None


_deselected: list[str] = []

#: Why interpret-mode Pallas tests cannot run under ``jax_debug_infs`` (a JAX limitation, not ours): when a
#: pallas_call's output holds an inf (an empty row's lse is -inf by design), the infs check re-runs the call
#: op by op, and that re-run is the same pallas_call, checked again, without end: the process dies of a
#: stack overflow. On hardware the check sees a kernel's outputs only, never its interior.
PALLAS_UNDER_DEBUG_INFS = "Pallas interpret mode under jax_debug_infs re-runs a pallas_call with an inf output without end"

#: Tests that run a Pallas kernel in interpret mode, by the platform names in their ids or files.
_PALLAS_WORDS = ("triton", "pallas_tpu", "mosaic_gpu", "interpret")


def _runs_pallas(item) -> bool:
    if item.get_closest_marker("pallas_interpret"):
        return True
    return any(word in item.nodeid.lower() for word in _PALLAS_WORDS)


def _deselect(config, items, selected, why: str) -> None:
    chosen = [item for item in items if selected(item)]
    if chosen:
        items[:] = [item for item in items if not selected(item)]
        config.hook.pytest_deselected(items=chosen)
        _deselected.append(f"{len(chosen)} tests deselected: {why}")


def pytest_collection_modifyitems(config, items):
    """GPU-profile tests (``@pytest.mark.gpu``) are collected everywhere and deselected without a GPU; under
    ``jax_debug_infs``, tests that ask for an infinite result (``infs_by_design``) and interpret-mode Pallas
    tests (``PALLAS_UNDER_DEBUG_INFS``) are deselected. Each deselection prints its count and reason."""
    reason = _gpu_absent_reason()
    if reason is not None:
        _deselect(config, items, lambda item: item.get_closest_marker("gpu"), f"GPU profile: {reason}")
    if jax.config.jax_debug_infs:
        _deselect(config, items, lambda item: item.get_closest_marker("infs_by_design"),
                  "they ask for an infinite result (infs_by_design), which jax_debug_infs reports as it should")
        _deselect(config, items, _runs_pallas, PALLAS_UNDER_DEBUG_INFS)


def pytest_terminal_summary(terminalreporter):
    for line in _deselected:
        terminalreporter.write_line(line)


def examples(factor: float = 1.0) -> int:
    """Example count for a test, scaled from the active profile."""
    return max(1, int(settings().max_examples * factor))
