"""Platforms: the names users pass (``platform="triton"``) and the device kind JAX would run on.

Two vocabularies meet here. *Implementation platforms* name a backend: ``"xla"``, ``"pallas_tpu"``,
``"triton"``, ``"mosaic_gpu"`` (Hopper), ``"cudnn"``; the old spelling ``"pallas"`` still means
``"pallas_tpu"``. *Device platforms* name hardware, as ``current_platform()`` reports it: ``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``.
"""

from __future__ import annotations

import jax

__all__ = [
    "KNOWN_PLATFORMS",
    "FALLBACK_PLATFORM",
    "PLATFORM_ALIASES",
    "canonical_platform",
    "current_platform",
    "cuda_capability_reason",
    "cuda_major_reason",
    "current_device_kind",
]

#: Implementation platforms a user may name. A known platform with nothing registered falls back with a warning.
KNOWN_PLATFORMS = ("xla", "pallas_tpu", "triton", "mosaic_gpu", "cudnn")
#: Where every call ends up when nothing better serves it.
FALLBACK_PLATFORM = "xla"
#: Older or alternative spellings, mapped to the canonical name.
PLATFORM_ALIASES = {"pallas": "pallas_tpu", "pallas_triton": "triton"}


def canonical_platform(platform: str) -> str:
    """``platform`` with aliases resolved ("pallas" -> "pallas_tpu"); other names are returned unchanged."""
    if not isinstance(platform, str):
        raise TypeError(f"platform must be a string, got {type(platform).__name__}")
    return PLATFORM_ALIASES.get(platform, platform)


def _default_device() -> jax.Device:
    device = jax.config.jax_default_device
    if device is None or isinstance(device, str):
        device = jax.devices(device)[0] if isinstance(device, str) else jax.devices()[0]
    return device


def current_device_kind() -> str:
    """The ``device_kind`` of the device JAX would place a computation on (e.g. ``"NVIDIA H200"``)."""
    return str(_default_device().device_kind)


def current_platform() -> str:
    """The platform of the device JAX would place a computation on: cpu, cuda, rocm, tpu, ..."""
    device = _default_device()
    platform = device.platform.lower()
    if platform == "gpu":
        version = str(getattr(device.client, "platform_version", "")).lower()
        return "rocm" if "rocm" in version else "cuda"
    return platform


def _gpu_major() -> tuple[int | None, str]:
    """``(major, reason)``: the first GPU's compute capability major (``None`` and why when there is none)."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError as e:
        return None, f"no GPU visible to JAX ({e})"
    capability = str(getattr(devices[0], "compute_capability", "0"))
    try:
        return int(capability.split(".")[0]), capability
    except ValueError:
        return None, f"unknown compute capability {capability!r}"


def cuda_capability_reason(min_major: int) -> str | None:
    """``None`` when JAX sees a GPU of compute capability ``>= min_major``.0, else why not."""
    major, capability = _gpu_major()
    if major is None:
        return capability
    if major < min_major:
        return f"needs compute capability >= {min_major}.0, this GPU has {capability}"
    return None


def cuda_major_reason(major: int) -> str | None:
    """``None`` when JAX sees a GPU of compute capability ``major``.x exactly (e.g. 9: Hopper), else why not."""
    found, capability = _gpu_major()
    if found is None:
        return capability
    if found != major:
        return f"needs compute capability {major}.x, this GPU has {capability}"
    return None
