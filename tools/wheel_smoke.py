#!/usr/bin/env python3
"""Smoke-check an installed cybn wheel: prints cybn.show_config(), then asserts that

* cybn was built with OpenMP (``--serial``: without it);
* every OpenMP runtime loaded in the process is the copy vendored inside the wheel
  (``cybn.libs/`` from auditwheel/delvewheel, ``cybn/.dylibs/`` from delocate), never a system
  one (``--any-runtime`` relaxes this for builds from source, which use the system runtime);
* an x86-64 wheel carries the AVX2 and AVX-512 kernels (unless built with CYBN_AVX2=0 or
  CYBN_AVX512=0), and uses the highest the CPU supports;
* a parallel kernel call works;
* on a free-threaded Python, importing cybn did not re-enable the GIL.

Run it from outside the source tree (cibuildwheel's test-command and tools/check_wheels.py do),
so that the installed package is imported. Exit status 0 on success.
"""

import argparse
import os
import sys
import sysconfig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial", action="store_true", help="expect a serial (no OpenMP) build")
    parser.add_argument(
        "--any-runtime", action="store_true", help="accept an OpenMP runtime outside the wheel"
    )
    args = parser.parse_args(argv)

    import numpy as np
    from threadpoolctl import threadpool_info

    import cybn

    cybn.show_config()
    problems = []

    pkg_dir = os.path.dirname(os.path.realpath(cybn.__file__))
    if os.path.isfile(os.path.join(os.path.dirname(pkg_dir), "setup.py")):
        problems.append(f"cybn was imported from a source tree ({pkg_dir}), not an installed wheel")

    enabled = cybn.openmp_enabled()
    if enabled == args.serial:
        problems.append(f"openmp_enabled() is {enabled}, expected {not args.serial}")

    from cybn._build_config import BUILD_CONFIG

    from cybn import _backend

    kernels = _backend.kernels_info()
    x86_64 = sysconfig.get_platform().lower().endswith(("x86_64", "amd64"))
    for isa in _backend._ISA_BUILDS:  # highest first
        opted_out = BUILD_CONFIG["environment"].get(isa.switch, "1").strip().lower() in (
            "0", "false", "no", "off", "")
        if not x86_64 or opted_out:
            continue
        if isa.name not in kernels["built"]:
            problems.append(f"an x86-64 wheel without cybn.{isa.module}")
        elif _backend._runs_here(isa) and not kernels["CYBN_KERNELS"]:
            if kernels["selected"] != isa.name:
                problems.append(f"the CPU has {isa.label} but {kernels['module']} was chosen")
            break  # the highest build this CPU runs: the lower ones are not chosen

    # Load the runtime for sure and exercise a multi-threaded kernel call.
    x = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)
    y = cybn.functional.batch_norm(x, None, None, training=True, n_threads=2)
    if not np.allclose(y.mean(axis=0), 0, atol=1e-4):
        problems.append("batch_norm output is not normalised")

    runtimes = [p for p in threadpool_info() if p.get("user_api") == "openmp"]
    vendored_dirs = {
        os.path.join(os.path.dirname(pkg_dir), "cybn.libs"),  # auditwheel, delvewheel
        os.path.join(pkg_dir, ".dylibs"),  # delocate
    }
    if enabled and not runtimes:
        problems.append("threadpoolctl finds no OpenMP runtime although cybn uses OpenMP")
    if args.serial and runtimes:
        # Another package may load one, but this script imports only cybn and NumPy.
        problems.append(f"a serial build loaded OpenMP runtimes: {runtimes}")
    if not args.any_runtime:
        for rt in runtimes:
            where = os.path.dirname(os.path.realpath(rt["filepath"]))
            if where not in {os.path.realpath(d) for d in vendored_dirs}:
                problems.append(f"OpenMP runtime {rt['filepath']} is not the one vendored in the wheel")
    if len(runtimes) > 1:
        problems.append(f"{len(runtimes)} OpenMP runtimes loaded: {[r['filepath'] for r in runtimes]}")

    if sysconfig.get_config_var("Py_GIL_DISABLED") and sys._is_gil_enabled():
        problems.append("importing cybn re-enabled the GIL (freethreading_compatible missing?)")

    for p in problems:
        print(f"wheel smoke: FAIL: {p}")
    if problems:
        return 1
    print(f"wheel smoke: OK (OpenMP {'on' if enabled else 'off'}, {len(runtimes)} runtime(s): "
          f"{[r['filepath'] for r in runtimes]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
