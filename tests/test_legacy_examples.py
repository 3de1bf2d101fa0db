"""The legacy-code examples run as documented: each trains its network with the
convention's own batch norm and again after cybn.compat.patch, and exits 0 only when the
float64 histories agree to 1e-10 (examples/legacy_digits.py checks that itself; here
the printed largest difference is checked too, so a script that skipped the comparison
would fail)."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "legacy_digits.py")



@pytest.mark.parametrize("convention", ["cs231n", "dlfs"])
def test_legacy_example_switches_in_one_step(convention, tmp_path):
    if not os.path.exists(SCRIPT):
        pytest.skip("examples/ is not next to the tests (installed test copy)")
    # cibuildwheel copies examples/ (for tests/test_docs.py) but installs no scikit-learn
    pytest.importorskip("sklearn", reason="the examples train on scikit-learn's digits "
                                          '(pip install ".[test]" installs it)')
    # run from another directory with -P: the checkout's cybn/ (no compiled modules)
    # must not shadow the installed package
    r = subprocess.run([sys.executable, "-P", SCRIPT, convention, "--epochs", "2"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    diff = float(re.search(r"largest difference .*: (\S+)", r.stdout).group(1))
    assert diff <= 1e-10
    assert re.search(r"binding\(s\) replaced", r.stdout)
    epochs = re.findall(r"^\s+\d+ \|", r.stdout, flags=re.M)
    assert len(epochs) == 2
    assert "time in batch norm: legacy" in r.stdout
