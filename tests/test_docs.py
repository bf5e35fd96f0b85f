"""The documentation builds with warnings as errors, and its worked examples agree with the code."""

from __future__ import annotations

import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.kernels.xla.reference import attention
from ejkernel.ops.attention.masks import allowed

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


# Sphinx's own napoleon uses an interface Sphinx itself deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:The mapping interface for autodoc options")
def test_sphinx_build_has_no_warnings(tmp_path):
    from sphinx.cmd.build import build_main  # in the [test] extra: a missing Sphinx fails, never skips
    out, doctrees = tmp_path / "html", tmp_path / "doctrees"
    code = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees), str(DOCS), str(out)])
    assert code == 0, "sphinx-build -W failed; run it by hand to see the warnings"
    for page in ("index", "semantics", "registry", "api"):
        assert (out / f"{page}.html").is_file(), page
    for page in DOCS.glob("*.rst"):  # the glob toctree picks up every page
        assert (out / f"{page.stem}.html").is_file(), page.name


def _grids(text: str) -> list[list[str]]:
    """Consecutive ``query i ...:  x  .`` lines of the semantics page, as rows of "x"/"." strings."""
    grids, current = [], []
    for line in text.splitlines():
        m = re.match(r"\s+query \d+[^:]*:\s+([x.](?:\s+[x.])*)\s*$", line)
        if m:
            current.append("".join(m.group(1).split()))
        elif current:
            grids.append(current)
            current = []
    return grids


def _expected_grid(q_len, kv_len, causal, window):
    mask = np.asarray(allowed(np.arange(q_len)[:, None], np.arange(kv_len)[None, :], q_len, kv_len, causal, window))
    mask = np.broadcast_to(mask, (q_len, kv_len))
    return ["".join("x" if a else "." for a in row) for row in mask]


def _packed_grid():
    """The packed-row example: ids [0, 0, 0, 1, 1, -1] on both sides, causal, from the reference's weights."""
    ids = jnp.array([[0, 0, 0, 1, 1, -1]])
    q = jnp.ones((1, 6, 1, 4))
    weights = attention(q, q, q, q_segment_ids=ids, kv_segment_ids=ids, causal=True, dtype=jnp.float32)[1]
    return ["".join("x" if w > 0 else "." for w in row) for row in np.asarray(weights[0, 0])]


def test_alignment_examples_match_the_masks():
    grids = _grids((DOCS / "semantics.rst").read_text())
    assert grids == [
        _packed_grid(),
        _expected_grid(3, 5, True, None),
        _expected_grid(3, 5, False, (1, 0)),
        _expected_grid(5, 3, True, None),
    ]


def test_sinks_example_matches_the_reference():
    text = " ".join((DOCS / "semantics.rst").read_text().split())
    q = jnp.ones((1, 1, 1, 1))
    k = jnp.array([1.0, 0.0]).reshape(1, 2, 1, 1)  # logits [1, 0] with softmax_scale=1
    v = jnp.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    for sinks in (None, jnp.array([0.0])):
        out, weights = attention(q, k, v, softmax_aux=sinks, softmax_scale=1.0, dtype=jnp.float32)
        w = np.asarray(weights).ravel()
        assert f"[{w[0]:.4f}, {w[1]:.4f}]" in text
        assert f"= {float(out.ravel()[0]):.4f}" in text
    assert f"(sum {w.sum():.4f})" in text
