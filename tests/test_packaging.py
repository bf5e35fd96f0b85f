"""The package as pip builds it: one version, py.typed and the license in the wheel, the accelerator extras."""

from __future__ import annotations

import email
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import ejkernel

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel ``pip wheel`` builds from a copy of the sources (so no build/ is left in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ejkernel", src / "ejkernel", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    (path,) = out.glob("ejkernel-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_ships_py_typed_and_the_license(wheel):
    names = wheel.namelist()
    assert "ejkernel/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
    assert "ejkernel/cli.py" in names and not any("tests/" in n for n in names)


def test_wheel_version_is_the_package_version(wheel):
    assert _metadata(wheel)["Version"] == ejkernel.__version__


def test_wheel_metadata_has_classifiers_urls_and_accelerator_extras(wheel):
    meta = _metadata(wheel)
    classifiers = meta.get_all("Classifier")
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert "Typing :: Typed" in classifiers
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Source", "Issues"}
    extras = set(meta.get_all("Provides-Extra"))
    assert {"cuda", "tpu", "bench", "test", "docs"} <= extras
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("jax[cuda12]") and 'extra == "cuda"' in r for r in requires), requires
    assert any(r.startswith("jax[tpu]") and 'extra == "tpu"' in r for r in requires), requires


def test_version_is_written_once():
    """pyproject reads it from ejkernel/__init__.py; the docs import it."""
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ejkernel.__version__"}
    assert ejkernel.__version__ not in (ROOT / "docs" / "conf.py").read_text()


def test_accelerator_extras_share_the_jax_bounds():
    """``ejkernel[cuda]`` and ``ejkernel[tpu]`` cannot pull a jax the dependencies reject."""
    (jax_dep,) = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"jax[<>=]", d)]
    bounds = jax_dep.removeprefix("jax")
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["cuda"] == [f"jax[cuda12]{bounds}"]
    assert extras["tpu"] == [f"jax[tpu]{bounds}"]


def test_changelog_opens_with_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings and headings[0].startswith("Unreleased"), headings
