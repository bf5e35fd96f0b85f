"""Measured speed per device kind and shape class: what ``platform="auto"`` ranks capable implementations by.

A *speed table* is a committed JSON file in ``ejkernel/ops/attention/speed_tables/``, one per device kind
(``jax.Device.device_kind``, e.g. ``"NVIDIA H200"``), written by ``ejkernel bench table RESULT.json`` from an
``ejkernel bench`` run on that device. It maps a *shape class* to the measured TFLOP/s of each platform
that served it, forward and forward+backward::

    {"schema": "ejkernel-speed/1", "device_kind": "NVIDIA H200", "source": "...",
     "classes": {"bfloat16/d128/causal/s8192": {"cudnn": {"fwd": 578.0, "fwd+bwd": 491.0}, ...}}}

A shape class is the dtype, the head dim rounded up to 64, 128 or 256, ``causal`` or ``full``, and the
longer sequence rounded up to a power of two (512 at least); a call with anything beyond plain (or causal)
attention on equal head dims (bias, mask, window, sinks, soft cap, dropout, segment ids, lengths, a decode
step, ``Dv != D``) has no class, so the registry's fixed priority order decides it. The ranking metric is the
forward+backward rate when every ranked platform has one, else the forward rate: one decision covers both
passes (training is the common case), except that a call that is never differentiated goes to the fastest
forward where that is another implementation (``split``).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

__all__ = [
    "SCHEMA",
    "shape_class",
    "class_of_features",
    "table_file_name",
    "load_table",
    "measured_speeds",
    "build_table",
]

SCHEMA = "ejkernel-speed/1"
HEAD_DIM_CLASSES = (64, 128, 256)
MIN_SEQ_CLASS = 512
DECODE_ROWS = 16  # a call with at most this many query rows is a decode step: no class
MODES = ("fwd+bwd", "fwd")  # ranking preference


def shape_class(dtype: str, head_dim: int, causal: bool, q_len: int, kv_len: int) -> str | None:
    """``"dtype/dD/causal|full/sS"`` of a plain attention call, or ``None`` outside the classes."""
    if q_len <= DECODE_ROWS or head_dim > HEAD_DIM_CLASSES[-1]:
        return None
    d = next(c for c in HEAD_DIM_CLASSES if head_dim <= c)
    s = max(MIN_SEQ_CLASS, 1 << math.ceil(math.log2(max(q_len, kv_len))))
    return f"{dtype}/d{d}/{'causal' if causal else 'full'}/s{s}"


def class_of_features(features: Any) -> str | None:
    """The shape class of an ``AttentionFeatures``, ``None`` when the call uses more than the classes cover."""
    f = features
    extras = (
        f.bias is not None
        or f.mask is not None
        or f.window is not None
        or f.logits_soft_cap is not None
        or f.num_sinks
        or f.dropout
        or f.segment_ids
        or f.kv_lengths
        or f.v_head_dim != f.head_dim
    )
    if extras:
        return None
    return shape_class(f.dtype, f.head_dim, f.causal, f.q_len, f.kv_len)


def table_file_name(device_kind: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia_h200.json"``."""
    return "".join(ch if ch.isalnum() else "_" for ch in device_kind.strip().lower()) + ".json"


@functools.cache
def load_table(device_kind: str) -> Mapping[str, Mapping[str, Mapping[str, float]]]:
    """The committed classes of ``device_kind`` (empty when no table was measured on it)."""
    path = resources.files("ejkernel.ops.attention").joinpath("speed_tables", table_file_name(device_kind))
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    return doc["classes"]


def measured_speeds(features: Any, device_kind: str, mode: str | None = None) -> dict[str, float]:
    """``{platform: TFLOP/s}`` measured for this call's class on ``device_kind`` (empty: no entry).

    ``mode=None``: the ranking metric (forward+backward where every platform of the entry has it, else the
    forward); ``"fwd"`` or ``"fwd+bwd"``: that pass's rates, of the platforms that have one.
    """
    name = class_of_features(features)
    entry = load_table(device_kind).get(name) if name else None
    if not entry:
        return {}
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}")
        return {platform: float(rates[mode]) for platform, rates in entry.items() if mode in rates}
    for mode in MODES:
        if all(mode in rates for rates in entry.values()):
            return {platform: float(rates[mode]) for platform, rates in entry.items()}
    return {}


def build_table(runs: Sequence[Sequence[dict[str, Any]]], device_kind: str, source: str) -> dict[str, Any]:
    """A speed table from ``ejkernel bench`` results, one list of rows per run, oldest first.

    Each ``ejkernel:<platform>`` row that ran (status ok) counts for its class and mode; an ``ejkernel:auto``
    row counts for the platform that served it (``served_by``: the same call, dispatched); baselines are not
    platforms and are left out. Within a run the rows of a (class, platform, mode) are averaged; a later
    run that measured it replaces the earlier ones, which may have timed an older version of the kernel.
    """
    latest: dict[tuple[str, str, str], tuple[int, list[float]]] = {}
    for index, run in enumerate(runs):
        for r in run:
            impl = r.get("impl", "")
            if r.get("status") != "ok" or not impl.startswith("ejkernel:") or impl.count(":") != 1:
                continue
            platform = impl.split(":", 1)[1]
            if platform == "auto":  # served_by is the serving implementation's label, "<platform>[:<variant>]"
                platform = (r.get("served_by") or "").split(":", 1)[0]
                if not platform:
                    continue
            s = r["shape"]
            if s["num_q_heads"] % s["num_kv_heads"]:
                continue
            name = shape_class(r["dtype"], s["head_dim"], r["causal"], s["q_len"], s["kv_len"])
            if name is None:
                continue
            key = (name, platform, r["mode"])
            if key not in latest or latest[key][0] < index:
                latest[key] = (index, [])
            latest[key][1].append(float(r["tflops"]))
    classes: dict[str, dict[str, dict[str, float]]] = {}
    for (name, platform, mode), (_, rates) in sorted(latest.items()):
        classes.setdefault(name, {}).setdefault(platform, {})[mode] = round(sum(rates) / len(rates), 1)
    return {"schema": SCHEMA, "device_kind": device_kind, "source": source, "classes": classes}
