"""Sphinx configuration of cybn's documentation site (issue 16).

Build: ``pip install ".[docs]"`` then ``sphinx-build -W --keep-going -n docs docs/_build/html``
(what ``.ci/run`` runs). The pages are Markdown (MyST); parts of the README are included by
the markers ``<!-- site: ... -->`` so the README and the site say the same thing once; the API
reference is generated from the installed package's numpydoc docstrings.

Warnings are errors in CI, and this file adds two kinds of its own:
* a public name (``cybn.__all__``, ``cybn.functional.__all__``, ``cybn.compat``'s public names)
  that no page documents;
* a numpydoc validation failure of the checks listed in ``numpydoc_validation_checks``.
Links the README makes to files of the checkout (``docs/x.md``, ``../README.md#anchor``) are
rewritten to the site's pages by ``_rewrite_links``.
"""

import re
import sys
from pathlib import Path

from sphinx.util import logging

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Import the *installed* cybn (the checkout's cybn/ has no compiled modules): keep the
# checkout off sys.path, as `python -P` does.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import cybn

project = "cybn"
author = "cybn developers"
copyright = "2026, cybn developers"
release = cybn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: GitHub-style heading anchors (the README and the pages link to `#some-heading`).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# numpydoc renders the docstrings; the types in them stay text (no intersphinx: this project's
# CI reaches PyPI only, so NumPy's and Python's inventories cannot be fetched).
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_class_members_toctree = False
# Every public object has a docstring, documents each parameter it takes and no other, and
# says what it returns.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01"}
numpydoc_validation_exclude = {
    r"\.__init__$", r"\.__repr__$", r"\.__call__$",
    # Documented once, by reference: BatchNorm2d/3d take BatchNorm1d's parameters, the `_alt`
    # names are aliases (a copy of each docstring would drift); Cache and PatchReport are
    # made by cybn, never constructed by users, so their constructor arguments are private.
    r"^cybn\.BatchNorm[23]d$", r"^cybn\.compat\.batchnorm_(forward|backward)_alt$",
    r"^cybn\.compat\.Cache$", r"^cybn\.compat\.PatchReport$",
}
autodoc_typehints = "none"   # the docstrings carry the types
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}

# Broken cross-references are errors: every :class:/:func:/:mod: role must resolve. Names that
# live in NumPy, Python or mpi4py resolve nowhere without intersphinx: listed here on purpose.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|mpi4py|MPI|torch|collections|typing|os|pathlib)\..*"),
    (r"py:class", (r"(array_like|optional|ndarray|dtype|int|float|bool|str|None|callable|"
                   r"OrderedDict|dict|tuple|list|Mapping|path-like|file-like)")),
]

html_theme = "pydata_sphinx_theme"
html_title = f"cybn {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}

# --------------------------------------------------------------------------------------------
# README links -> site pages

# Which site page holds each part of the README (its `<!-- site: NAME -->` markers).
_README_PART_PAGE = {"intro": "index", "getting-started": "getting-started",
                     "platforms": "platforms", "quickstart": "getting-started",
                     "legacy": "legacy", "guide": "guide"}


def _readme_anchor_pages():
    """Map each README heading's GitHub anchor to the site page that includes it."""
    page, anchors = "index", {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        marker = re.match(r"<!-- site: ([\w-]+) -->", line)
        if marker:
            page = _README_PART_PAGE[marker.group(1)]
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors[slug] = page
    return anchors


def _anchor_links(pattern, where, text):
    """Replace each link `pattern` matches (group 1: a README anchor) by page.md#anchor."""
    anchors = _readme_anchor_pages()

    def repl(match):
        anchor = match.group(1)
        if anchor not in anchors:
            logging.getLogger(__name__).warning(
                f"{where}: link to README.md#{anchor}, a heading the README does not have")
            return match.group(0)
        return f"]({anchors[anchor]}.md#{anchor})"

    return re.sub(pattern, repl, text)


def _rewrite_links(app, docname, source):
    """`../README.md#anchor` (links from docs/ pages) -> the site page holding that heading."""
    source[0] = _anchor_links(r"\]\(\.\./README\.md#([\w-]+)\)", docname, source[0])


def _rewrite_readme_links(app, relative_path, parent_docname, content):
    """In the README's parts: `#anchor` may be on another page of the site than this part."""
    if Path(relative_path).name == "README.md":
        content[0] = _anchor_links(r"\]\(#([\w-]+)\)", "README.md", content[0])


# --------------------------------------------------------------------------------------------
# Every public name is documented


def _public_names():
    names = {f"cybn.{n}" for n in cybn.__all__ if n not in ("compat", "functional")}
    names |= {f"cybn.functional.{n}" for n in cybn.functional.__all__}
    names |= {f"cybn.compat.{n}" for n in dir(cybn.compat) if not n.startswith("_")}
    return names


def _check_public_names(app, env):
    documented = set(env.domaindata["py"]["objects"]) | set(env.domaindata["py"]["modules"])
    for name in sorted(_public_names() - documented):
        logging.getLogger(__name__).warning(
            f"public name {name} is not in the API reference (docs/api.rst)")


def setup(app):
    app.connect("source-read", _rewrite_links)
    app.connect("include-read", _rewrite_readme_links)
    app.connect("env-check-consistency", _check_public_names)
    return {"parallel_read_safe": True}
