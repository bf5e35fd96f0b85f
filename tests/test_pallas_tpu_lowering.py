"""Lowering of the TPU flash attention for TPU, on the CPU: every claimed dtype, head dim and feature class.

``lower(lowering_platforms=("tpu",))`` runs Pallas' Mosaic lowering (block shapes Mosaic cannot tile and
primitives it lacks fail here, although interpret mode runs them). The full Mosaic compile of the same
matrix, forward-only and forward+backward, for v5e and v6e, is the ``tpu_compile`` nox session.
"""

from __future__ import annotations

import pytest

from ejkernel.kernels.pallas_tpu.compile_check import configurations, lower
from ejkernel.kernels.pallas_tpu.spec import CAPABILITIES

CONFIGS = configurations(quick=True)


def test_matrix_covers_every_claim():
    dtypes = {c.dtype for c in CONFIGS}
    assert dtypes == set(CAPABILITIES.dtypes)
    assert {c.head_dim for c in CONFIGS} >= {64, 96, 128, 192, 256}
    assert any(c.v_head_dim not in (None, c.head_dim) for c in CONFIGS)
    assert any(c.causal for c in CONFIGS) and any(c.sliding_window for c in CONFIGS)
    assert {c.sinks for c in CONFIGS} >= {"per_head", "shared"}
    layouts = {c.bias for c in CONFIGS} | {c.mask for c in CONFIGS}
    assert {"B,q", "1,kv", "1,1", "B,1"} <= layouts
    assert any(c.logits_soft_cap for c in CONFIGS) and any(c.q_len % 128 for c in CONFIGS)
    assert all(c.backward for c in CONFIGS)  # forward+backward lowers the forward too


@pytest.mark.parametrize("config", CONFIGS, ids=[c.label for c in CONFIGS])
def test_lowers_for_tpu(config):
    text = lower(config).as_text()
    # forward (once), dq and dk/dv; a bias broadcast over batch or heads adds the dbias kernel.
    expected = 3 + (config.bias is not None and not (config.bias == "B,q" or (config.bias == "1,q" and config.batch == 1)))
    assert text.count("tpu_custom_call") == expected
