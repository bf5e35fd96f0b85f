"""Sphinx configuration for the ejkernel documentation (build: ``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # document the checkout, installed or not
    sys.path.insert(0, str(ROOT))

project = "ejkernel"
author = "the ejkernel authors"
copyright = "the ejkernel authors"
from ejkernel import __version__  # noqa: E402  (the one place the version is written)

release = version = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]

exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
