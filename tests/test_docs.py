"""The documentation builds with warnings as errors, and its worked examples agree with the code."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from ejkernel.kernels.xla.reference import attention
from ejkernel.ops.attention.masks import allowed

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
SETUP_COMMANDS = [
    'python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/ejkernel',
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest -q',
]


def _rst_python_blocks(page: str) -> list[str]:
    """The ``.. code-block:: python`` bodies of a docs page, dedented."""
    text = (DOCS / page).read_text()
    return [textwrap.dedent(m.group(1)) for m in re.finditer(r"^\.\. code-block:: python\n\n((?:(?: {3}.*)?\n)+)", text, re.M)]


def _markdown_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def _run_as_pasted(code: str, name: str) -> str:
    """Executes ``code`` as a fresh script and returns what it printed (warnings may be raised, not errors)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    return out.getvalue()


def test_readme_opens_with_the_two_setup_commands():
    first = re.search(r"```(\w*)\n(.*?)```", README, re.S)
    assert first.group(1) == "bash" and first.group(2).splitlines() == SETUP_COMMANDS


def test_readme_quickstart_runs_as_pasted():
    quickstart = README.split("## Quickstart", 1)[1]
    code = _markdown_blocks(quickstart, "python")[0]
    printed = _run_as_pasted(code, "README.md")
    assert "(2, 256, 8, 64)" in printed and "attention: xla" in printed


def test_readme_has_an_install_line_per_device():
    install = "\n".join(_markdown_blocks(README.split("## Install", 1)[1], "bash"))
    for extra in ('".[cuda]"', '".[tpu]"', '".[bench]"'):
        assert f"pip install -q -e {extra}" in install, extra
    assert "pip install -q -e .  " in install  # the CPU line


def test_index_example_runs_as_pasted():
    (code,) = _rst_python_blocks("index.rst")
    _run_as_pasted(code, "index.rst")


@pytest.mark.parametrize("index", range(3))
def test_migration_examples_run_as_pasted(index):
    blocks = _rst_python_blocks("migration.rst")
    assert len(blocks) == 3
    if "import flax" in blocks[index]:
        pytest.importorskip("flax")  # not a dependency: the page shows an adapter for flax users
    _run_as_pasted(blocks[index], f"migration.rst[{index}]")


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
