"""Build script for cybn's compiled modules (project metadata lives in pyproject.toml).

The extension modules are listed below; how they are compiled (OpenMP probe, AVX2 and AVX-512
kernel builds, -ffp-contract=off, the build record cybn/_build_config.py behind
``cybn.show_config()``, rebuilds after a configuration change) is in build_support.py. What the
build does and its environment switches (CYBN_OPENMP, CYBN_REQUIRE_OPENMP, CYBN_AVX2,
CYBN_AVX512, CYBN_DEBUG): docs/building.md.
"""

import os
import sys
import sysconfig

from setuptools import Extension, find_packages, setup

# PEP 517 backends do not reliably put the project directory on sys.path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_support import ISA_BUILDS, CybnBuildExt, env_flag, x86_64_target  # noqa: E402

KERNELS = ["cybn/_kernels_impl.pxi"]  # the kernels' one source, included by every build

EXTENSIONS = [
    Extension("cybn._kernels", ["cybn/_kernels.pyx"], depends=KERNELS),  # baseline ISA
    # cybn._kernels_avx2, cybn._kernels_avx512: x86-64 only (below)
    *(Extension(b.module, [b.module.replace(".", "/") + ".pyx"], depends=KERNELS)
      for b in ISA_BUILDS),
    Extension("cybn._openmp", ["cybn/_openmp.pyx"], depends=["cybn/_openmp.pxd"]),
    Extension("cybn._cpu", ["cybn/_cpu.pyx"]),  # CPUID: which kernel build to load
    # The one validated call path and the two helpers it calls on every forward and
    # backward (layout views, thread counts): plain Python compiled by Cython, where its
    # checks cost about 1 us less per call (a (32, 64) evaluation: 5.2 -> 4.2 us). The
    # .py files are the source and are installed beside the compiled modules.
    *(Extension(f"cybn.{name}", [f"cybn/{name}.py"])
      for name in ("functional", "_layout", "_threads")),
]

for build in ISA_BUILDS:
    if not (x86_64_target() and env_flag(build.switch, True)):
        print(f"cybn: {build.module} skipped (target {sysconfig.get_platform()},"
              f" {build.switch}={os.environ.get(build.switch)})", flush=True)
        EXTENSIONS = [e for e in EXTENSIONS if e.name != build.module]

setup(
    packages=find_packages(include=["cybn", "cybn.*"]),
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": CybnBuildExt},
)
