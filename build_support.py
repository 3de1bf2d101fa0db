"""Build machinery for setup.py: OpenMP and instruction-set probes, flags, build record.

setup.py lists the extension modules and passes ``cmdclass={"build_ext": CybnBuildExt}``;
everything about *how* they are compiled is here. What the build does and the environment
switches (CYBN_OPENMP, CYBN_REQUIRE_OPENMP, CYBN_AVX2, CYBN_AVX512, CYBN_DEBUG):
docs/building.md.
Not installed: it ships in the sdist (MANIFEST.in) and runs only at build time.
"""

import hashlib
import json
import os
import pprint
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import NamedTuple

from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError, PlatformError

# Release directives of the .pyx modules. CYBN_DEBUG=1 overrides DEBUG_DIRECTIVES.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "autotestdict": False,  # else every module grows a __test__ dict missing from the stubs
    "freethreading_compatible": True,  # a promise: kernels are pure nogil code
    "embedsignature": True,
    "binding": True,
}
DEBUG_DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
# Plain Python modules compiled by Cython keep Python's semantics: Cython's defaults for
# indexing (negative indices wrap, bounds are checked) and division, which the .pyx
# directives above turn off (with wraparound off, `shape[-1]` reads out of bounds).
PYTHON_DIRECTIVES = {key: COMPILER_DIRECTIVES[key] for key in
                     ("language_level", "autotestdict", "freethreading_compatible",
                      "embedsignature", "binding")}



class IsaBuild(NamedTuple):
    """A build of the kernels (cybn/_kernels_impl.pxi) for an x86-64 instruction-set level.

    cybn._backend holds the run-time side (the CPUID check that may load the module).
    """

    name: str  # as in CYBN_KERNELS and the build record's kernel_builds ("<name>_args")
    module: str
    switch: str  # environment switch; 0 skips the module
    label: str  # for messages
    args: dict  # compiler type -> compile args; "default" for GCC, clang and the like
    probe: str  # C source the compiler must build with `args`: it emits one instruction of
    # the set, so the assembler is checked too, not only the compiler's option parser


# The kernel builds beyond the baseline one, x86-64 targets only (setup.py), in order of
# instruction-set level. Never -march: it changes tuning too, and the baseline and ISA builds
# must differ only in the instructions they may use. No -mfma either: -ffp-contract=off keeps
# GCC/clang from contracting anyway (no vfmadd in the AVX-512 module's code), and the builds
# must stay bitwise-identical.
ISA_BUILDS = (
    IsaBuild("avx2", "cybn._kernels_avx2", "CYBN_AVX2", "AVX2",
             {"msvc": ["/arch:AVX2"], "default": ["-mavx2"]},
             "#include <immintrin.h>\n"
             "__m256i cybn_isa_probe(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }\n"),
    # x86-64-v4's AVX-512 subsets, F, BW, DQ and VL (they imply AVX2). -mprefer-vector-width
    # is left at the compiler's default: GCC 12's generic tuning already emits 512-bit
    # vectors with these flags (a loop compiled with and without -mprefer-vector-width=512
    # gives the same assembly). The alternative, -mprefer-vector-width=256 (AVX-512
    # instructions on 256-bit vectors, against clock throttling on older Xeons), measured
    # against the default with benchmarks/compare_builds.py --old-args on 2026-12-08 (Xeon,
    # Sapphire Rapids class, 2 vCPUs; 6 shapes x float32/64 x fwd_train/bwd/fwd_eval, 2 runs):
    # 512-bit / 256-bit time, 1 thread, median 0.989 (0.889-1.043); float32 backward 0.965,
    # best case (65536, 256) float32 backward 0.889; 2 threads too noisy to call (another
    # job held a core). So 512-bit.
    IsaBuild("avx512", "cybn._kernels_avx512", "CYBN_AVX512", "AVX-512",
             {"msvc": ["/arch:AVX512"],
              "default": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"]},
             "#include <immintrin.h>\n"
             "__m512i cybn_isa_probe(__m512i a, __m512i b) { return _mm512_add_epi8(a, b); }\n"),
)


def isa_args(build, compiler_type):
    """The compile args of an IsaBuild for a compiler type ("unix", "msvc", "mingw32", ...)."""
    return build.args.get(compiler_type, build.args["default"])

# Compiled with and without OpenMP. Without it, _OPENMP is undefined and #error fires.
OPENMP_PROBE_SOURCE = r"""
#ifndef _OPENMP
#error "_OPENMP is not defined: these flags do not enable OpenMP"
#endif
#include <omp.h>

int cybn_openmp_probe(void)
{
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n + omp_get_max_threads();
}
"""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_flag(name, default):
    """Read a boolean environment switch; reject values that are neither true nor false."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise PlatformError(f"cybn: {name}={raw!r} is not understood; use 1 or 0")


def _banner(message):
    line = "=" * 78
    print(f"\n{line}\n{message}\n{line}\n", flush=True)


def _openmp_candidates(compiler_type):
    """Return [(compile_args, link_args), ...] to try, most likely first."""
    if compiler_type == "msvc":
        return [(["/openmp"], [])]  # MSVC: compile flag only, vcomp is linked automatically
    if sys.platform == "darwin":
        env_flags = " ".join(os.environ.get(v, "") for v in ("CPPFLAGS", "CFLAGS"))
        if "openmp" in env_flags:
            # The environment carries the preprocessor flags and include dir. distutils links
            # macOS extensions with "-undefined dynamic_lookup", so a link without the runtime
            # would succeed anyway: make sure libomp is named.
            link = [] if "omp" in os.environ.get("LDFLAGS", "") else ["-lomp"]
            return [([], link)]
        return [
            (["-fopenmp"], ["-fopenmp"]),  # GCC or Homebrew/conda LLVM clang
            (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),  # Apple clang + libomp
        ]
    return [(["-fopenmp"], ["-fopenmp"])]  # GCC, LLVM clang, MinGW


class CybnBuildExt(build_ext):
    """build_ext that probes OpenMP, applies flags and directives, then cythonizes."""

    def _probe(self, compile_args, link_args, source=OPENMP_PROBE_SOURCE):
        """Compile and link `source` (default: the OpenMP probe) as a shared object; True if both
        succeed.

        Runs inside a temporary directory with a relative source path: with an absolute path
        distutils would nest the object file under a copy of the temporary path.
        """
        old_cwd = os.getcwd()
        tmpdir = tempfile.mkdtemp(prefix="cybn-probe-")
        try:
            os.chdir(tmpdir)
            with open("cybn_probe.c", "w") as f:
                f.write(source)
            objects = self.compiler.compile(
                ["cybn_probe.c"], output_dir=".", extra_postargs=compile_args
            )
            self.compiler.link_shared_object(
                objects,
                "cybn_probe" + (".pyd" if sys.platform == "win32" else ".so"),
                output_dir=".",
                extra_postargs=link_args,
            )
            return True
        except (CompileError, LinkError, OSError):
            return False
        finally:
            os.chdir(old_cwd)
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _choose_openmp(self):
        """Return (compile_args, link_args) for OpenMP, or None for a serial build."""
        use_openmp = env_flag("CYBN_OPENMP", True)
        require = env_flag("CYBN_REQUIRE_OPENMP", False)
        if not use_openmp:
            if require:
                raise PlatformError(
                    "cybn: CYBN_OPENMP=0 (serial build) contradicts CYBN_REQUIRE_OPENMP=1"
                )
            _banner("cybn: OpenMP DISABLED (serial build): CYBN_OPENMP=0 was set")
            return None

        tried = []
        for compile_args, link_args in _openmp_candidates(self.compiler.compiler_type):
            print(
                f"cybn: probing OpenMP with compile args {compile_args}, link args {link_args}"
                " (compiler errors below mean this candidate is unusable)",
                flush=True,
            )
            if self._probe(compile_args, link_args):
                _banner(
                    f"cybn: OpenMP ENABLED (compile args {compile_args}, link args {link_args})"
                )
                return compile_args, link_args
            tried.append(f"compile {compile_args} / link {link_args}")

        reason = (
            f"the {self.compiler.compiler_type!r} compiler could not compile and link an OpenMP"
            f" test program with any of: {'; '.join(tried)}"
        )
        if require:
            raise PlatformError(
                f"cybn: OpenMP is required (CYBN_REQUIRE_OPENMP=1) but {reason}. Install an"
                " OpenMP-capable compiler/runtime (GCC with libgomp; on macOS libomp, e.g. with"
                " CPPFLAGS='-Xpreprocessor -fopenmp -I<libomp>/include' and"
                " LDFLAGS='-L<libomp>/lib -lomp'), or unset CYBN_REQUIRE_OPENMP to accept a"
                " serial build."
            )
        _banner(
            f"cybn: OpenMP DISABLED (serial build): {reason}.\n"
            "cybn will work but run single-threaded. Set CYBN_REQUIRE_OPENMP=1 to make this fatal."
        )
        return None

    def _config_changed(self, config):
        """Compare config with the one stored by the previous build in build_temp."""
        stamp = os.path.join(self.build_temp, "cybn-build-config.json")
        try:
            with open(stamp) as f:
                return json.load(f) != config
        except (OSError, ValueError):
            return True

    def _store_config(self, config):
        os.makedirs(self.build_temp, exist_ok=True)
        with open(os.path.join(self.build_temp, "cybn-build-config.json"), "w") as f:
            json.dump(config, f, indent=1, sort_keys=True)

    def build_extensions(self):
        import Cython
        from Cython.Build import cythonize

        debug = env_flag("CYBN_DEBUG", False)
        # Python modules compiled by Cython, and the hash of the source compiled: an
        # in-place build imports the compiled module, so a later edit of the .py is not
        # seen until the next build (tests/test_packaging.py checks the record)
        self._compiled_python = {
            src.replace(os.sep, "/"): _sha256(src)
            for ext in self.extensions for src in ext.sources if src.endswith(".py")}
        openmp = self._choose_openmp()
        omp_compile, omp_link = openmp if openmp is not None else ([], [])

        directives = dict(COMPILER_DIRECTIVES)
        if self.compiler.compiler_type == "msvc":
            opt_args = ["/Od"] if debug else ["/O2"]
        else:
            # Never -ffast-math (NaN/Inf semantics must follow torch) nor -march=native (wheels).
            # Contraction off: a fused multiply-add would change results between the baseline
            # and AVX2/AVX-512 builds, and between x86-64 and aarch64 (GCC contracts by default).
            opt_args = ["-O0", "-g", "-UNDEBUG"] if debug else ["-O3"]
            opt_args.append("-ffp-contract=off")
        if debug:
            directives.update(DEBUG_DIRECTIVES)
            _banner(
                "cybn: DEBUG build (CYBN_DEBUG=1): boundscheck, wraparound, initializedcheck on;"
                f" {' '.join(opt_args)}"
            )

        # {build name: compile args, or None where the module is not built}
        isa_args_used = {build.name: self._choose_isa(build) for build in ISA_BUILDS}
        for build in ISA_BUILDS:
            if isa_args_used[build.name] is None:
                # build_lib keeps the products of earlier builds, and everything in it goes
                # into the wheel: such a module from a previous build of this tree must not ship
                stale = self.get_ext_fullpath(build.module)
                if os.path.exists(stale):
                    print(f"cybn: removing {stale}, left by an earlier build", flush=True)
                    os.remove(stale)
        isa_by_module = {b.module: isa_args_used[b.name] for b in ISA_BUILDS}

        config = {
            **{f"{name}_args": args for name, args in isa_args_used.items()},
            "cython": Cython.__version__,
            "directives": directives,
            "compile_args": opt_args + omp_compile,
            "link_args": omp_link,
            "compiler": getattr(self.compiler, "compiler_so", None) or self.compiler.compiler_type,
        }
        if self._config_changed(config):
            self.force = True  # regenerate the C and recompile every module

        for ext in self.extensions:
            python = ext.sources[0].endswith(".py")
            (cythonized,) = cythonize(
                [ext],
                compiler_directives=PYTHON_DIRECTIVES if python else directives,
                # Generated C lives in build_temp (per interpreter and platform), not in cybn/.
                build_dir=os.path.join(self.build_temp, "cython"),
                force=self.force,
                quiet=False,
            )
            ext.sources = cythonized.sources
            isa = isa_by_module.get(ext.name) or []
            ext.extra_compile_args = [*ext.extra_compile_args, *opt_args, *omp_compile, *isa]
            ext.extra_link_args = [*ext.extra_link_args, *omp_link]

        super().build_extensions()
        self._store_config(config)
        self._write_build_record(
            openmp=openmp is not None,
            omp_compile=omp_compile,
            omp_link=omp_link,
            opt_args=opt_args,
            debug=debug,
            directives=directives,
            cython_version=Cython.__version__,
            kernel_builds=["baseline"] + [n for n, a in isa_args_used.items() if a is not None],
            isa_args=isa_args_used,
        )

    def _choose_isa(self, build):
        """Return the compile args of an IsaBuild, or None after removing its module from the
        build."""
        ext = next((e for e in self.extensions if e.name == build.module), None)
        if ext is None:  # not an x86-64 target, or its switch is 0 (see setup.py)
            return None
        args = isa_args(build, self.compiler.compiler_type)
        if self._probe(args, [], source=build.probe):
            print(f"cybn: building {build.module} with {args}", flush=True)
            return args
        self.extensions.remove(ext)
        _banner(f"cybn: the compiler rejects {args} (or its assembler the {build.label}"
                f" instructions): {build.module} is not built; cybn will run the other kernel"
                " builds only")
        return None

    def _compiler_description(self):
        """(compiler type, executable, first line of `<cc> --version` or None)."""
        ctype = self.compiler.compiler_type
        exe = None
        if ctype == "msvc":
            exe = getattr(self.compiler, "cc", None)
        else:
            cmd = getattr(self.compiler, "compiler_so", None)
            if cmd:
                exe = cmd[0]
        version = None
        if exe and ctype != "msvc":
            try:
                out = subprocess.run(
                    [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
                ).stdout
                version = out.splitlines()[0].strip() if out.strip() else None
            except (OSError, subprocess.SubprocessError):
                version = None
        return ctype, exe, version

    def copy_extensions_to_source(self):
        """In-place and editable builds: what build_extensions did to build_lib happens to the
        source tree too (setuptools copies only the extension modules listed)."""
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("cybn")
        record = os.path.join(package_dir, "_build_config.py")
        if getattr(self, "_record_path", None) and os.path.abspath(record) != self._record_path:
            self.copy_file(self._record_path, record, level=self.verbose)
        built = {ext.name for ext in self.extensions}
        for build in ISA_BUILDS:
            if build.module in built:
                continue
            stale = os.path.join(package_dir, os.path.basename(self.get_ext_filename(build.module)))
            if os.path.exists(stale):
                print(f"cybn: removing {stale}, left by an earlier build", flush=True)
                os.remove(stale)

    def _write_build_record(self, **facts):
        """Write cybn/_build_config.py next to the compiled modules (read by show_config)."""
        ctype, exe, version = self._compiler_description()
        record = {
            "openmp": facts["openmp"],
            "openmp_compile_args": list(facts["omp_compile"]),
            "openmp_link_args": list(facts["omp_link"]),
            "optimization_args": list(facts["opt_args"]),
            "debug": facts["debug"],
            "kernel_builds": facts["kernel_builds"],
            **{f"{name}_args": args for name, args in facts["isa_args"].items()},
            "cython_version": facts["cython_version"],
            "cython_directives": dict(sorted(facts["directives"].items())),
            "compiled_python": dict(sorted(self._compiled_python.items())),
            "compiler_type": ctype,
            "compiler": exe,
            "compiler_version": version,
            "build_platform": sysconfig.get_platform(),
            "build_python": sys.version.split()[0],
            "environment": {
                name: os.environ[name]
                for name in ("CYBN_OPENMP", "CYBN_REQUIRE_OPENMP", "CYBN_DEBUG",
                             *(b.switch for b in ISA_BUILDS), "CC", "CFLAGS", "CPPFLAGS",
                             "LDFLAGS", "MACOSX_DEPLOYMENT_TARGET")
                if name in os.environ
            },
        }
        target_dir = os.path.dirname(self.get_ext_fullpath("cybn._openmp"))
        os.makedirs(target_dir, exist_ok=True)
        path = self._record_path = os.path.abspath(os.path.join(target_dir, "_build_config.py"))
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                '"""How this copy of cybn was built. Generated by setup.py: do not edit."""\n\n'
                f"BUILD_CONFIG = {pprint.pformat(record, sort_dicts=False)}\n"
            )
        print(f"cybn: wrote build record {path}", flush=True)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def x86_64_target():
    # the platform being built for (cibuildwheel/crossenv set _PYTHON_HOST_PLATFORM, which
    # sysconfig honours); universal2 holds an arm64 slice, so it gets no ISA_BUILDS module
    return sysconfig.get_platform().lower().endswith(("x86_64", "amd64"))
