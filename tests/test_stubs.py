"""The shipped stubs (.pyi for the compiled modules, the .py sources for the rest) match the
installed package: ``python -m mypy.stubtest cybn``, through tests/_stubtest.py (which keeps it
from importing a kernel build this CPU cannot run). Skipped when mypy is not installed."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("mypy")

# The mypy configuration lives in pyproject.toml, next to tests/ in a checkout or an sdist
# (cibuildwheel and tools/check_wheels.py copy it next to the tests as well).
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "pyproject.toml")


@pytest.mark.skipif(not os.path.isfile(PYPROJECT), reason="pyproject.toml not next to tests/")
def test_stubtest(tmp_path):
    # Run from an empty directory so that the installed cybn is checked, never a source tree.
    proc = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stubtest.py"),
         "cybn",
         "--mypy-config-file", PYPROJECT,
         # PEP 800 disjoint-base checks misfire on module-level aliases such as
         # `DTYPE = np.float32`; cybn defines no classes for which they would matter.
         "--ignore-disjoint-bases"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / ".mypy_cache")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
