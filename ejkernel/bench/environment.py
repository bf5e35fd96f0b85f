"""What every benchmark result records about where and how it ran."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
from typing import Any

import jax

from ejkernel.bench.flops import device_peak
from ejkernel.platform import current_platform

__all__ = ["environment", "peak_rates"]


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi``, or ``None`` where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _cudnn_version() -> str | None:
    try:
        from jax._src.lib import cuda_versions  # private; absent on CPU-only jaxlib

        return str(cuda_versions.cudnn_get_version()) if cuda_versions is not None else None
    except Exception:
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every OS
        return None


def peak_rates(device_kind: str, dtype: str) -> dict[str, Any]:
    """Nominal peak and measured ceiling (TFLOP/s) for this device and dtype; ``None`` where unknown."""
    peak = device_peak(device_kind)
    if peak is None:
        return {"name": None, "nominal_tflops": None, "ceiling_tflops": None, "note": "unknown device: no peak"}
    ceiling = peak.measured_matmul_bf16 if dtype in ("bfloat16", "float16") else None
    return {"name": peak.name, "nominal_tflops": peak.nominal.get(dtype), "ceiling_tflops": ceiling, "note": peak.note}


def environment(bench_argv: list[str], dtype: str) -> dict[str, Any]:
    """Device, versions, date and the exact command of this run."""
    import jaxlib

    import ejkernel

    device = jax.devices()[0]
    here = current_platform()
    cuda = here == "cuda"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["ejkernel", "bench", *bench_argv]),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "platform": here,
        "device_kind": device.device_kind,
        "device_count": len(jax.devices()),
        "platform_version": str(getattr(device.client, "platform_version", "")),
        "driver": _nvidia_driver() if cuda else None,
        "cudnn": _cudnn_version() if cuda else None,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "ejkernel": ejkernel.__version__,
        "python": platform.python_version(),
        "host": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": _load_average(),  # other work on the host inflates and spreads the times
        "peak": peak_rates(device.device_kind, dtype),
    }
