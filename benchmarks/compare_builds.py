"""Same-process A/B of two cybn builds: new ÷ old time for every benchmark case.

    python benchmarks/compare_builds.py --build-old HEAD~1     # build a revision as cybn_old
    python benchmarks/compare_builds.py                        # installed cybn vs cybn_old
    python benchmarks/compare_builds.py --kernels avx512,avx2  # one revision, two kernel builds

A kernel change must report, for every case, the ratio new ÷ old measured side by side in
one process (timings on a shared machine drift between runs; interleaved rounds in one
process see the same drift). Two builds of one package cannot be imported together under
one name, so ``--build-old REV`` checks the revision out into a temporary git worktree and
compiles it as the package ``cybn_old`` (same compiler flags as setup.py's release build:
-O3, -ffp-contract=off, OpenMP, build_support.ISA_BUILDS's flags for the AVX2 and AVX-512
modules the revision has; ``--old-args MODULE=FLAGS`` adds flags to one module, to try a flag)
into ``benchmarks/.old/`` (ignored by git). The comparison then imports both, checks that they
return bitwise-identical results for each case, and times them round-robin.

``--kernels NEW,OLD`` imports cybn with ``CYBN_KERNELS=NEW`` and cybn_old with
``CYBN_KERNELS=OLD`` (each reads it once, at import): with cybn_old built from the installed
revision, that times two kernel builds of one source side by side (e.g. avx512 ÷ avx2).

Cases: the shapes of ``benchmarks/compare.py`` (SHAPES below, equal to its DEFAULT_SHAPES:
every kernel schedule), float32 and float64, training forward, backward (all three gradients)
and evaluation forward through ``cybn.functional``, at 1 and 2 threads; the kernel's
numerical fallbacks (FALLBACK_SHAPES: underflowing float32 data, overflowing constants);
plus the legacy-code calls of ``benchmarks/legacy.py`` (``cybn.compat``), which are where
per-call overhead shows.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _timing, also under `python -P`
from _timing import medians  # noqa: E402

ROOT = os.path.dirname(HERE)
OLD_DIR = os.path.join(HERE, ".old")

# The shapes of compare.py's DEFAULT_SHAPES (kept equal by hand: importing compare.py here
# would pull its whole harness in). Schedules of cybn/_kernels_impl.pxi, (N, C, L) view:
SHAPES = (
    (2, 3), (32, 64), (256, 512), (4096, 1024), (65536, 256),  # columns, L = 1 (2-D)
    (16384, 64, 4), (2048, 32, 49),  # columns, 1 < L < 64 (short runs, a 7x7 map)
    (64, 256, 1024),  # runs, L >= 64
    (8, 64, 16384),  # channel slab: C >= 8, L*itemsize >= 32 KiB, N*L*itemsize <= 1 MiB
    (1024, 3, 224),  # runs (C < 8: no slab)
)
BUILD_OLD = r'''
import json, os
from setuptools import setup, Extension
from Cython.Build import cythonize
D = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True,
     "initializedcheck": False, "nonecheck": False, "autotestdict": False,
     "freethreading_compatible": True, "embedsignature": True, "binding": True}
common = ["-O3", "-ffp-contract=off", "-fopenmp"]
MODULE_ARGS, PY_DIRECTIVES = json.loads(%r)  # module -> its own flags; for .py modules
exts = [Extension(f"cybn_old.{m}", [f"cybn_old/{m}.pyx"], extra_compile_args=common + extra,
                  extra_link_args=["-fopenmp"])
        for m, extra in [("_kernels", []), ("_openmp", []), ("_cpu", []),
                         *MODULE_ARGS.items()]
        if os.path.exists(f"cybn_old/{m}.pyx")]
# setup.py compiles these Python modules too (about 1 us less per call): so must the old
# build, or every small case would credit the new build with that microsecond
py_exts = [Extension(f"cybn_old.{m}", [f"cybn_old/{m}.py"], extra_compile_args=["-O3"])
           for m in ("functional", "_layout", "_threads") if os.path.exists(f"cybn_old/{m}.py")]
setup(name="cybn_old", ext_modules=cythonize(exts, compiler_directives=D, quiet=True)
      + cythonize(py_exts, compiler_directives=PY_DIRECTIVES, quiet=True),
      script_args=["build_ext", "--inplace"])
'''


def _build_support():
    """The checkout's build_support.py (flags and directives of setup.py's build)."""
    sys.path.insert(0, ROOT)
    try:
        import build_support
    finally:
        sys.path.remove(ROOT)
    return build_support


def _module_args(extra):
    """{module: flags} of the ISA builds (GCC/clang flags of build_support.py), plus `extra`
    ({module: [flag, ...]} from --old-args)."""
    bs = _build_support()
    args = {b.module.split(".")[-1]: bs.isa_args(b, "unix") for b in bs.ISA_BUILDS}
    for module, flags in extra.items():
        args[module] = args.get(module, []) + flags
    return args


def build_old(rev, extra=None):
    tmp = tempfile.mkdtemp(prefix="cybn-old-")
    try:
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tmp, rev], check=True)
        shutil.rmtree(OLD_DIR, ignore_errors=True)
        os.makedirs(OLD_DIR)
        shutil.copytree(os.path.join(tmp, "cybn"), os.path.join(OLD_DIR, "cybn_old"),
                        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
        with open(os.path.join(OLD_DIR, "build_old.py"), "w") as f:
            f.write(BUILD_OLD % json.dumps([_module_args(extra or {}),
                                           _build_support().PYTHON_DIRECTIVES]))
        subprocess.run([sys.executable, "build_old.py"], cwd=OLD_DIR, check=True)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tmp], check=False)
    print(f"built {rev} as cybn_old in {OLD_DIR}")


def functional_cases(pkg, shape, dtype, nt, rng_seed=0):
    F = pkg.functional
    rng = np.random.default_rng(rng_seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)  # updated by every training call
    em, ev = b.copy(), w.copy()  # evaluation statistics, never updated
    _, sm, si = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, n_threads=nt)
    return {
        "fwd_train": lambda: F.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5,
                                                  n_threads=nt),
        "bwd": lambda: F.batch_norm_backward(dy, x, w, sm, si, n_threads=nt),
        "fwd_eval": lambda: F.batch_norm_forward(x, w, b, em, ev, False, 0.1, 1e-5,
                                                 n_threads=nt),
    }


# The kernel's numerical fallbacks (cybn/_kernels_impl.pxi, section 2), each triggered on
# every channel: float32 data so small that its squares underflow (mean square < 1e-30:
# statistics and backward sums redone in double per channel, _channel_exact), and
# normalisation constants that overflow float32 (running_var 0, eps 1e-80: invstd 1e40,
# so the output pass runs with double constants, _double_constants).
FALLBACK_SHAPES = ((4096, 64), (64, 32, 256))


def fallback_cases(pkg, shape, nt):
    F = pkg.functional
    rng = np.random.default_rng(2)
    C = shape[1]
    tiny = (rng.standard_normal(shape) * 1e-20).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    x = (rng.standard_normal(shape) * 1e-36).astype(np.float32)  # finite outputs ~1e4
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    _, sm, si = F.batch_norm_forward(tiny, w, b, None, None, True, 0.1, 1e-5, n_threads=nt)
    zero_var = np.zeros(C, np.float32)
    return {
        "fwd_train tiny": lambda: F.batch_norm_forward(tiny, w, b, None, None, True, 0.1,
                                                       1e-5, n_threads=nt),
        "bwd tiny": lambda: F.batch_norm_backward(dy, tiny, w, sm, si, n_threads=nt),
        "fwd_eval wide": lambda: F.batch_norm(x, b, zero_var, w, b, eps=1e-80, n_threads=nt),
    }


def compat_cases(pkg, shape, dtype):
    CP = pkg.compat
    rng = np.random.default_rng(1)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    fwd = CP.batchnorm_forward if len(shape) == 2 else CP.spatial_batchnorm_forward
    bwd = CP.batchnorm_backward_alt if len(shape) == 2 else CP.spatial_batchnorm_backward
    cases = {"compat fwd+bwd": lambda: bwd(dy, fwd(x, g, b, {"mode": "train"})[1]),
             "compat test fwd": lambda: fwd(x, g, b, {"mode": "test", "running_mean": b,
                                                      "running_var": g})}
    if len(shape) == 2 and hasattr(CP, "BatchNormalization"):
        def layer_step(layer=CP.BatchNormalization(g, b)):
            layer.forward(x)
            return layer.backward(dy)
        cases["book layer fwd+bwd"] = layer_step
    return cases


def _same(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return all(np.asarray(u).tobytes() == np.asarray(v).tobytes()
               for u, v in zip(a, b) if isinstance(u, np.ndarray))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-old", metavar="REV", help="build REV as cybn_old first")
    parser.add_argument("--old-args", metavar="MODULE=FLAGS", action="append", default=[],
                        help="with --build-old: compile cybn_old.MODULE with FLAGS added"
                        " (space-separated; e.g. _kernels_avx512=-mprefer-vector-width=256)")
    parser.add_argument("--kernels", metavar="NEW,OLD",
                        help="CYBN_KERNELS for cybn and for cybn_old (e.g. avx512,avx2)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="time only cases whose label contains TEXT (repeatable)")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.old_args:
        module, sep, flags = item.partition("=")
        if not sep or not flags.split():
            parser.error(f"--old-args expects MODULE=FLAGS, got {item!r}")
        extra[module] = flags.split()
    if args.build_old:
        build_old(args.build_old, extra)
    elif extra:
        parser.error("--old-args needs --build-old")
    kernels = args.kernels.split(",") if args.kernels else None
    if kernels is not None and len(kernels) != 2:
        parser.error(f"--kernels expects NEW,OLD (e.g. avx512,avx2), got {args.kernels!r}")
    sys.path.insert(0, OLD_DIR)
    saved = os.environ.get("CYBN_KERNELS")
    try:
        if kernels:
            os.environ["CYBN_KERNELS"] = kernels[0]
        import cybn
        if kernels:
            os.environ["CYBN_KERNELS"] = kernels[1]
        import cybn_old
    finally:
        if saved is None:
            os.environ.pop("CYBN_KERNELS", None)
        else:
            os.environ["CYBN_KERNELS"] = saved

    print(f"new: {cybn.__file__} ({cybn._backend.kernels.__name__}); "
          f"old: {cybn_old.__file__} ({cybn_old._backend.kernels.__name__})")
    print(f"{'case':44} {'new':>10} {'old':>10} {'new/old':>8}")
    ratios = []

    def row(label, new_fn, old_fn):
        if args.only and not any(t in label for t in args.only):
            return
        assert _same(new_fn(), old_fn()), f"{label}: the builds' results differ"
        m = medians({"new": new_fn, "old": old_fn}, args.rounds, min_ns=2_000_000,
                    same_calls=True)
        new, old = m["new"], m["old"]
        ratios.append(new / old)
        print(f"{label:44} {new / 1e3:9.1f}u {old / 1e3:9.1f}u {new / old:8.3f}", flush=True)

    for nt in (int(t) for t in args.threads.split(",")):
        for shape in SHAPES:
            for dt in (np.float32, np.float64):
                new_c = functional_cases(cybn, shape, dt, nt)
                old_c = functional_cases(cybn_old, shape, dt, nt)
                for op in new_c:
                    row(f"{op} {shape} {np.dtype(dt).name} t{nt}", new_c[op], old_c[op])
        for shape in FALLBACK_SHAPES:
            new_c, old_c = fallback_cases(cybn, shape, nt), fallback_cases(cybn_old, shape, nt)
            for op in new_c:
                row(f"{op} {shape} float32 t{nt}", new_c[op], old_c[op])
    for shape in ((50, 100), (200, 500), (64, 16, 16, 16)):
        for dt in (np.float32, np.float64):
            new_c, old_c = compat_cases(cybn, shape, dt), compat_cases(cybn_old, shape, dt)
            for op in new_c:
                if op in old_c:
                    row(f"{op} {shape} {np.dtype(dt).name}", new_c[op], old_c[op])
    print(f"new/old: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}, "
          f"min {min(ratios):.3f} over {len(ratios)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
