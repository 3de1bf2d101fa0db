"""Build the benchmark's speed-of-light module _sol (benchmarks/_sol.pyx) into benchmarks/.build/.

    python benchmarks/build_sol.py           # build if missing or out of date
    python benchmarks/build_sol.py --force   # rebuild

``python benchmarks/compare.py`` calls :func:`ensure` itself, so running this by hand is only
needed to see the compiler output or to rebuild. The loops must get the same code generation
chances as cybn's kernels, so they are compiled with the flags and Cython directives of the
installed cybn, read from its build record (``cybn/_build_config.py``, what
``cybn.show_config()`` prints). Without a record, the release flags of setup.py are used
(-O3 -ffp-contract=off -fopenmp, no -march=native, no -ffast-math). The module is rebuilt when
_sol.pyx, the flags, the directives or the interpreter change.
"""

import hashlib
import json
import os
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "_sol.pyx")
BUILD_DIR = os.path.join(HERE, ".build")  # ignored by git

# setup.py's release build, for a cybn without a build record
FALLBACK = {
    "compile_args": ["-O3", "-ffp-contract=off", "-fopenmp"],
    "link_args": ["-fopenmp"],
    "directives": {"language_level": 3, "boundscheck": False, "wraparound": False,
                   "cdivision": True, "initializedcheck": False, "nonecheck": False,
                   "embedsignature": True, "binding": True},
}


def kernel_flags():
    """(config, where it came from): the compile/link args and directives of cybn's kernels."""
    try:
        from cybn._build_config import BUILD_CONFIG as rec
    except ImportError:
        return FALLBACK, "setup.py's release flags (this cybn has no build record)"
    return {
        "compile_args": rec["optimization_args"] + rec["openmp_compile_args"],
        "link_args": rec["openmp_link_args"],
        "directives": rec["cython_directives"],
    }, "the build record of the installed cybn"


def _stamp_path():
    return os.path.join(BUILD_DIR, f"_sol{sysconfig.get_config_var('EXT_SUFFIX')}.json")


def _wanted(config):
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {**config, "source_sha256": digest, "python": sys.version}


def build(force=False, quiet=True):
    """Build _sol into BUILD_DIR unless it is up to date; return BUILD_DIR (put it on sys.path)."""
    config, origin = kernel_flags()
    wanted = _wanted(config)
    so = os.path.join(BUILD_DIR, "_sol" + sysconfig.get_config_var("EXT_SUFFIX"))
    try:
        with open(_stamp_path()) as f:
            current = json.load(f) == wanted and os.path.exists(so)
    except (OSError, ValueError):
        current = False
    if current and not force:
        return BUILD_DIR

    from Cython.Build import cythonize
    from setuptools import Extension
    from setuptools.dist import Distribution

    print(f"build_sol: compiling {SOURCE} with {' '.join(config['compile_args'])} "
          f"(from {origin})", file=sys.stderr, flush=True)
    ext = Extension("_sol", [SOURCE], extra_compile_args=config["compile_args"],
                    extra_link_args=config["link_args"])
    temp = os.path.join(BUILD_DIR, "temp")
    (ext,) = cythonize([ext], compiler_directives=config["directives"], build_dir=temp,
                       force=True, quiet=quiet)
    dist = Distribution({"name": "cybn-bench-sol", "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib, cmd.build_temp, cmd.force = BUILD_DIR, temp, True
    if quiet:  # the compiler's command lines; its warnings and errors still show
        dist.verbose = 0
    dist.run_command("build_ext")
    with open(_stamp_path(), "w") as f:
        json.dump(wanted, f, indent=1)
    return BUILD_DIR


def ensure():
    """Build if needed and make ``import _sol`` work in this process; return BUILD_DIR."""
    path = build()
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args()
    print(f"build_sol: {build(force=args.force, quiet=False)} is up to date")
