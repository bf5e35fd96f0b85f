"""Builds ``results/h100/fa3_grid.json`` (an ``ejkernel-summary/1``) from the curated H100 tables beside it.

    python benchmarks/fa3_summary.py && ejkernel bench render benchmarks/results/h100/fa3_grid.json

Ours and cuDNN come from ``fa3_grid.md`` (each cell's latest run, cuDNN in the same run); tokamax's
Mosaic-GPU kernel and the best Triton-class kernel (tokamax Pallas-Triton or JAX's Pallas-Triton ``mha``)
from the rivals' measurements on the same card model quoted there; jax.nn's XLA path from
``headline.txt`` at the two cells it was timed.
"""

from __future__ import annotations

import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent / "results" / "h100"
HEADLINE_CELLS = {"B2 S8192 H16 D128": (128, 8192), "B4 S4096 H16 D64": (64, 4096)}  # FA3 geometry: B = 16384 / S


def _number(text: str) -> float | None:
    return None if text.strip() in ("-", "", "fails") else float(text)


def build() -> dict:
    cells: dict[tuple, dict] = {}
    for line in (HERE / "fa3_grid.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) != 11 or not parts[0].isdigit():
            continue
        d, s, causal, mode, ours, cudnn, _anchor_cudnn, mosaic, triton_class = parts[:9]
        values = {"ejkernel:triton": ours, "jax.nn:cudnn": cudnn, "tokamax:mosaic-gpu": mosaic, "triton-class": triton_class}
        tflops = {k: _number(v) for k, v in values.items() if _number(v) is not None}
        key = (int(d), int(s), causal == "1", mode)
        cells[key] = {"head_dim": key[0], "seq": key[1], "causal": key[2], "mode": mode, "tflops": tflops}
    for line in (HERE / "headline.txt").read_text().splitlines():
        m = re.match(r"\| (B\d+ S\d+ H\d+ D\d+) \| ([01]) \| (fwd\+bwd|fwd) \| \d+ \| \d+ \| (\d+) \|", line)
        if m and m.group(1) in HEADLINE_CELLS:
            d, s = HEADLINE_CELLS[m.group(1)]
            cells[(d, s, m.group(2) == "1", m.group(3))]["tflops"]["jax.nn:xla"] = float(m.group(4))
    return {
        "schema": "ejkernel-summary/1",
        "title": "FlashAttention-3 grid on one H100 80GB HBM3 (jax 0.11.2)",
        "device": "NVIDIA H100 80GB HBM3",
        "dtype": "bfloat16",
        "implementations": [
            {"name": "ejkernel:triton", "label": "ejkernel (Triton)"},
            {"name": "jax.nn:cudnn", "label": "jax.nn cuDNN"},
            {"name": "tokamax:mosaic-gpu", "label": "tokamax Mosaic-GPU"},
            {"name": "triton-class", "label": "best other Triton"},
            {"name": "jax.nn:xla", "label": "jax.nn XLA"},
        ],
        "cells": list(cells.values()),
        "sources": [
            "ejkernel and cuDNN: the same runs (fa3_grid.md, from fa3_d256, fa3_s512_s2k_s8k, fa3_short and headline);",
            "tokamax Mosaic-GPU (its shipped H100 tuning) and the best other Triton kernel (max of tokamax "
            "Pallas-Triton and JAX's Pallas-Triton mha): the same card model, measured separately, S 1k/4k/16k;",
            "jax.nn XLA: headline.txt, at D128 S8192 and D64 S4096.",
        ],
    }


if __name__ == "__main__":
    path = HERE / "fa3_grid.json"
    path.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {path}")
