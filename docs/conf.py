"""Sphinx configuration for the ejkernel documentation (build: ``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # document the checkout, installed or not
    sys.path.insert(0, str(ROOT))

from ejkernel import __version__  # noqa: E402  (the one place the version is written)

project = "ejkernel"
author = "the ejkernel authors"
copyright = "the ejkernel authors"
release = version = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]

exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "furo"  # the docs extra installs it; its code blocks scroll instead of overflowing the page
html_title = f"ejkernel {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"

# Signatures stay one line per parameter, without types; the types go into each parameter's description,
# written short (``Array`` rather than ``jaxlib._jax.Array``).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
python_maximum_signature_line_length = 88
autodoc_default_options = {"exclude-members": "__init__, __new__"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Annotations stay as written in the source ("Float[Array, 'batch q_len num_q_heads head_dim']"): naming
# ``Array`` an alias keeps Sphinx from expanding it (and jaxtyping's shapes) to ``jaxlib._jax.Array``.
autodoc_type_aliases = {"Array": "Array", "DTypeLike": "DTypeLike"}
