"""What the installed package holds: only what users import. The benchmark (its harness and its
compiled speed-of-light loops) lives in the repository's benchmarks/ directory, not in cybn."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def test_benchmark_is_not_installed():
    import cybn

    assert importlib.util.find_spec("cybn.bench") is None
    assert importlib.util.find_spec("cybn._sol") is None
    leftovers = [f for f in os.listdir(os.path.dirname(cybn.__file__))
                 if f.startswith(("bench", "_sol"))]
    assert not leftovers, f"benchmark files in the installed package: {leftovers}"


def test_every_cython_module_is_built():
    # setup.py lists its extensions by hand: a new cybn/*.pyx must be added there
    from cybn import _backend

    src = os.path.join(ROOT, "cybn")
    if not os.path.isdir(src):
        pytest.skip("no cybn/ sources next to tests/")
    stems = {f[:-4] for f in os.listdir(src) if f.endswith(".pyx")}
    for isa in _backend._ISA_BUILDS:
        if isa.name not in _backend.kernels_info()["built"]:
            stems.discard(isa.module)  # not an x86-64 build, or CYBN_AVX2=0 / CYBN_AVX512=0
    missing = [s for s in sorted(stems) if importlib.util.find_spec(f"cybn.{s}") is None]
    assert not missing, f"cybn/*.pyx not built (add them to setup.py): {missing}"


needs_checkout = pytest.mark.skipif(not os.path.isdir(BENCHMARKS),
                                    reason="no benchmarks/ next to tests/ (not a checkout)")


@needs_checkout
def test_benchmark_targets_parse():
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location("_cybn_compare",
                                                      os.path.join(BENCHMARKS, "compare.py"))
        compare = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compare)
    finally:
        sys.path.remove(BENCHMARKS)
    targets = compare.load_targets()
    assert len(targets) >= 5
    by_label = {label: (pred, versus, limit) for label, pred, versus, limit in targets}
    pred, versus, limit = by_label["bwd, shape (1024, 3, 224): cybn ÷ torch"]
    assert (versus, limit) == ("torch", 0.6)
    assert pred((1024, 3, 224), 0, "bwd") and not pred((1024, 3, 224), 0, "fwd_train")
    pred, versus, _ = by_label["all, size < 64 KiB: cybn ÷ torch"]
    assert pred((2, 3), 24, "fwd_eval") and not pred((256, 512), 512 << 10, "fwd_eval")
    pred, *_ = by_label["fwd_train, L > 1: cybn ÷ torch"]
    assert pred((2, 3, 4), 96, "fwd_train") and not pred((2, 3), 24, "fwd_train")


@needs_checkout
def test_benchmark_help_runs():
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "compare.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "python benchmarks/compare.py" in proc.stdout


def test_compiled_python_matches_its_source():
    # cybn.functional (and its helpers) are plain Python compiled by Cython (setup.py); an
    # in-place or editable
    # build imports the compiled module, so an edit of functional.py after the build would
    # silently not run. The build record holds the hash of each source it compiled.
    import hashlib

    import importlib

    import cybn
    from cybn._build_config import BUILD_CONFIG

    compiled = BUILD_CONFIG["compiled_python"]
    names = ("functional", "_layout", "_threads")
    assert set(compiled) == {f"cybn/{name}.py" for name in names}
    for name in names:
        module = importlib.import_module(f"cybn.{name}")
        assert module.__file__.endswith((".so", ".pyd")), module.__file__
        src = os.path.join(os.path.dirname(cybn.__file__), f"{name}.py")
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert digest == compiled[f"cybn/{name}.py"], (
            f"{src} changed after it was compiled: rebuild "
            "(pip install --no-build-isolation -e .)")
