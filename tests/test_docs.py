"""Every Python example in the README, docs/ and the public docstrings runs (issue 16).

The README's and docs/' ```python blocks are executed with Sybil, one test per visible block,
in document order and in one namespace per document (a block may use the names an earlier one
defined). Set-up a reader does not need to see (a file to load, the legacy example packages on
``sys.path``) is in ``<!-- invisible-code-block: python -->`` comments next to the block, and a
block that needs an optional extra carries ``<!-- skip: next if(..., reason="...") -->``, so it
is skipped, saying why, only when that extra is missing. A block that shows its output
(``>>>`` lines) has the output compared. Docstring examples (``>>>``) of the installed package
run with doctest's rules; ``+SKIP`` is reserved for examples that need several MPI ranks or a
user's file.

Each document runs in its own temporary working directory, so files an example writes
(``bn.npz``, ``model.pt``) land there.
"""

import doctest
import importlib
import os
import typing
import unittest
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil", reason='Sybil runs the documentation examples: pip install ".[test]"')

from sybil import Document
from sybil.document import PythonDocStringDocument
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

ROOT = Path(__file__).resolve().parents[1]
# README.md and docs/ sit next to tests/ in a checkout and in cibuildwheel's test-sources.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
_PARSERS = (PythonCodeBlockParser(doctest_optionflags=_FLAGS), SkipParser())


def _documents_present():
    missing = [p for p in DOCUMENTS[:1] if not p.exists()]
    if missing or not (ROOT / "docs").is_dir():
        pytest.fail(f"the documentation is not next to the tests ({ROOT}): copy README.md and "
                    "docs/ with tests/ (cibuildwheel: test-sources)")


class _Run:
    """A document's examples, evaluated in order, each once, in the document's own cwd."""

    _cache: typing.ClassVar[dict] = {}

    def __init__(self, path, tmp_dir):
        self.document = Document.parse(str(path), *_PARSERS)
        self.examples = list(self.document)
        self.done = 0
        self.cwd = tmp_dir
        self.document.namespace.update(__name__="__docs__", REPO=str(ROOT))

    @classmethod
    def of(cls, path, tmp_path_factory):
        if path not in cls._cache:
            cls._cache[path] = cls(path, tmp_path_factory.mktemp(path.stem))
        return cls._cache[path]

    def run_through(self, index):
        """Evaluate every example up to `index`; a skip before `index` only skips that one."""
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            while self.done <= index:
                example = self.examples[self.done]
                self.done += 1
                try:
                    example.evaluate()
                except unittest.SkipTest:
                    if self.done - 1 == index:
                        raise
        finally:
            os.chdir(old)


def _block_params():
    params = []
    for path in DOCUMENTS:
        if not path.exists():
            continue
        doc = Document.parse(str(path), *_PARSERS)
        examples = list(doc)
        for i, ex in enumerate(examples):
            if doc.text.startswith("```", ex.start):
                # docs/distributed.md's block is the MPI benchmark script: ~5 s on one rank
                marks = [pytest.mark.slow] if path.name == "distributed.md" else []
                params.append(pytest.param(path, i, id=f"{path.relative_to(ROOT)}:{ex.line}",
                                           marks=marks))
    return params


BLOCKS = _block_params()


def test_every_document_is_found():
    _documents_present()
    names = {p.values[0].name for p in BLOCKS}
    # The README and these pages hold Python blocks; losing one means the parser missed it.
    assert {"README.md", "semantics.md"} <= names, names
    assert len([p for p in BLOCKS if p.values[0].name == "README.md"]) >= 10
    assert DOCSTRINGS, "no docstring examples found in the installed package"


@pytest.mark.parametrize("path, index", BLOCKS)
def test_block_runs(path, index, tmp_path_factory):
    run = _Run.of(path, tmp_path_factory)
    # Blocks run in order; a test selected alone (-k) first runs the blocks before it.
    try:
        run.run_through(index)
    except unittest.SkipTest as skip:
        # CI installs the MPI extra for its second run: there, no MPI block may skip.
        if os.environ.get("CYBN_REQUIRE_MPI") == "1" and "mpi4py" in str(skip):
            pytest.fail(f"CYBN_REQUIRE_MPI=1 but the block was skipped: {skip}")
        raise


def _docstring_params():
    """The installed package's modules whose source holds a ``>>>`` example (the wheel ships
    the Python source of every module, compiled ones included; the site renders these)."""
    import cybn

    package = Path(cybn.__file__).resolve().parent
    params = []
    for source in sorted(package.rglob("*.py")):
        if ">>>" in source.read_text(encoding="utf-8"):
            rel = source.relative_to(package.parent).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            params.append(pytest.param(name, id=name))
    return params


DOCSTRINGS = _docstring_params()


@pytest.mark.parametrize("module_name", DOCSTRINGS)
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    module = importlib.import_module(module_name)
    source = Path(module.__file__).with_suffix(".py")
    if not source.exists():  # compiled module: its source sits next to it in the package
        pytest.fail(f"{source} is missing: the wheel ships the Python sources of its modules")
    document = PythonDocStringDocument.parse(str(source), DocTestParser(optionflags=_FLAGS))
    document.namespace.update(vars(module))
    monkeypatch.chdir(tmp_path)
    examples = list(document)
    for example in examples:
        example.evaluate()
