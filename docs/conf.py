"""Sphinx configuration of nasax's documentation site: MyST Markdown pages, the config
reference generated from the schema (`_ext/nasax_config.py`), and an API reference from
the Google-style docstrings. Build: sphinx-build -W -b html docs docs/_build/html"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "nasax"
author = "the nasax authors"
copyright = "the nasax authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "nasax_config",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # `page.md#a-heading` links, as GitHub renders them

# sphinx-book-theme, the theme of optax's and flax's sites, installs cleanly beside
# Sphinx 9 (pinned in .ci/constraints.txt), so the site looks like theirs.
html_theme = "sphinx_book_theme"
html_title = "nasax"
html_theme_options = {"show_toc_level": 2}
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
