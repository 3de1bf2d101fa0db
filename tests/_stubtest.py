"""``python -m mypy.stubtest`` for cybn, safe on CPUs without every kernel build.

    python tests/_stubtest.py cybn --mypy-config-file pyproject.toml --ignore-disjoint-bases

Used by tests/test_stubs.py, tools/check_wheels.py and .github/workflows/tests.yml. stubtest
imports every module it checks, and importing cybn._kernels_avx512 on a CPU without AVX-512
dies with SIGILL (its initialisation code is compiled with AVX-512 enabled too; see
cybn/_backend.py). So a kernel build this CPU cannot run is checked against cybn._kernels
instead, registered under its name: the two are compiled from one source (the .pyi of the
ISA build re-exports cybn._kernels' names), and the substitution is printed.
"""

import sys

from mypy.stubtest import main

from cybn import _backend
from cybn import _kernels as _baseline

for build in _backend._ISA_BUILDS:
    if _backend._built(build) and not _backend._runs_here(build):
        name = f"cybn.{build.module}"
        sys.modules[name] = _baseline
        print(f"tests/_stubtest.py: this CPU cannot import {name}; its stub is checked against"
              " cybn._kernels (the same source)", flush=True)

sys.exit(main())
