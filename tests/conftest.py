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


_deselected_gpu: list[str] = []


def pytest_collection_modifyitems(config, items):
    """GPU-profile tests (``@pytest.mark.gpu``) are collected everywhere and deselected without a GPU."""
    reason = _gpu_absent_reason()
    if reason is None:
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=gpu)
        _deselected_gpu.append(f"{len(gpu)} GPU-profile tests deselected: {reason}")


def pytest_terminal_summary(terminalreporter):
    for line in _deselected_gpu:
        terminalreporter.write_line(line)


def examples(factor: float = 1.0) -> int:
    """Example count for a test, scaled from the active profile."""
    return max(1, int(settings().max_examples * factor))
