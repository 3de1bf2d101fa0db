"""The compiled builds of the kernels (baseline, AVX2, AVX-512) and how one is chosen.

All builds come from cybn/_kernels_impl.pxi and must return bitwise-identical results: a
user's numbers may not depend on which CPU the wheel landed on. The comparison runs the
public API in child processes, one per ``CYBN_KERNELS`` setting, over inputs that reach
every code path of the kernels: the rows path (L == 1) with channel counts around the tile
width, contiguous runs of every length class (remainders, short runs, channel slabs),
float32 and float64 data, mixed parameter dtypes, constant channels, values that take the
exact double fallback (tiny, huge, non-finite), 1 and 2 threads; and batch norm fused with
ReLU, with and without a residual, in every schedule (_battery.fused_results).
"""

import importlib.util
import os
import platform
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import cybn
from _battery import same_but_nan_bits as _same_but_nan_bits
from cybn import _backend, _cpu

HERE = os.path.dirname(os.path.abspath(__file__))
X86_64 = sysconfig.get_platform().lower().endswith(("x86_64", "amd64"))

# Run in a child process with CYBN_KERNELS set; writes every result array to an .npz file.
BATTERY = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from _battery import functional_results, fused_results
from cybn import functional as F
from cybn._backend import kernels

assert kernels.__name__ == sys.argv[2], (kernels.__name__, sys.argv[2])
np.savez(sys.argv[1], **functional_results(F), **fused_results(F))
"""


def test_same_but_nan_bits():
    a = np.array([1.0, np.nan, -0.0])
    assert _same_but_nan_bits(a, np.array([1.0, -np.nan, -0.0]))
    assert not _same_but_nan_bits(a, np.array([1.0, np.nan, 0.0]))  # -0.0 vs 0.0
    assert not _same_but_nan_bits(a, np.array([1.0, 2.0, -0.0]))
    assert not _same_but_nan_bits(a, a.astype(np.float32))


def _run_battery(tmp_path, build, module):
    out = tmp_path / f"{build}.npz"
    env = {**os.environ, "CYBN_KERNELS": build}
    proc = subprocess.run([sys.executable, "-c", BATTERY, str(out), module, HERE],
                          env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _build_record():
    from cybn._build_config import BUILD_CONFIG
    return BUILD_CONFIG


BUILT = _backend.kernels_info()["built"]
ISA_BUILDS = _backend._ISA_BUILDS  # highest first
# the builds this CPU can run, as (CYBN_KERNELS value, module)
RUNNABLE = [("baseline", "cybn._kernels")] + [
    (b.name, f"cybn.{b.module}") for b in reversed(ISA_BUILDS)
    if b.name in BUILT and _backend._runs_here(b)]


def test_backend_knows_every_build():
    # cybn._backend (run time) and build_support.py (flags) list the same builds
    path = os.path.join(os.path.dirname(HERE), "build_support.py")
    if not os.path.exists(path):
        pytest.skip("no build_support.py next to tests/ (not a checkout)")
    spec = importlib.util.spec_from_file_location("_cybn_build_support", path)
    build_support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_support)
    BUILD_SIDE = build_support.ISA_BUILDS
    assert _backend.KERNEL_BUILDS == ("baseline", "avx2", "avx512")
    assert [(b.name, f"cybn.{b.module}", b.switch) for b in reversed(ISA_BUILDS)] == [
        (b.name, b.module, b.switch) for b in BUILD_SIDE]


@pytest.mark.parametrize("build", ISA_BUILDS, ids=lambda b: b.name)
def test_isa_module_matches_build_record(build):
    # The module present is the one this build made: no stale _kernels_avx2/_avx512 left from
    # an earlier build of the tree, none missing.
    record = _build_record()
    built = build.name in BUILT
    assert built == (record[f"{build.name}_args"] is not None)
    assert record["kernel_builds"] == BUILT
    # An x86-64 build without the module would silently lose the speed-up, unless it was
    # asked for (CYBN_AVX2=0, CYBN_AVX512=0).
    opted_out = record["environment"].get(build.switch, "1").strip().lower() in (
        "0", "false", "no", "off", "")
    if X86_64 and not opted_out:
        assert built
    if built and record["compiler_type"] != "msvc":
        # contraction stays off for the ISA modules too (-ffp-contract=off is in the
        # optimisation args every module gets; the ISA args must not turn it back on)
        assert "-ffp-contract=off" in record["optimization_args"]
        assert not any("contract" in a or a.startswith("-march") or a == "-mfma"
                       for a in record[f"{build.name}_args"])


@pytest.mark.slow
@pytest.mark.skipif(len(RUNNABLE) < 2, reason="this copy of cybn or this CPU has one kernel"
                    " build only")
def test_builds_bitwise_identical(tmp_path):
    name, module = RUNNABLE[0]
    base = _run_battery(tmp_path, name, module)
    assert len(base) > 3000
    for name, module in RUNNABLE[1:]:
        other = _run_battery(tmp_path, name, module)
        assert base.keys() == other.keys()
        differ = [k for k in base if not _same_but_nan_bits(base[k], other[k])]
        assert not differ, (f"{len(differ)} results differ between baseline and {name},"
                            f" e.g. {differ[:5]}")
    # the battery is not vacuous: the fallback cases and NaN propagation are in it
    assert any(np.isnan(v).any() for v in base.values())
    assert any(np.isfinite(v).all() and np.abs(v.astype(np.float64)).max() > 1e200
               for v in base.values())


def test_default_choice_follows_the_cpu():
    info = _backend.kernels_info()
    if os.environ.get("CYBN_KERNELS") is not None:
        pytest.skip("CYBN_KERNELS is set for this run")
    # the highest build that is built and runs here (RUNNABLE is lowest first)
    expected, module = RUNNABLE[-1]
    assert info["selected"] == expected
    assert _backend.kernels.__name__ == module
    if X86_64 and _cpu.has_avx512() and "avx512" in info["built"]:
        assert expected == "avx512"


def _cpu_has(monkeypatch, *names):
    """Patch cybn._cpu so that the CPU supports exactly the builds named."""
    for b in ISA_BUILDS:
        monkeypatch.setattr(_cpu, b.cpu_check, lambda ok=b.name in names: ok)


def _fake_modules(monkeypatch):
    """Stand-ins for the ISA modules that are built: _select may then "import" a build the real
    CPU cannot run (a patched CPU check says it can) without executing its code."""
    import types
    fakes = {b.name: types.ModuleType(f"cybn.{b.module}") for b in ISA_BUILDS
             if _backend._built(b)}
    monkeypatch.setattr(_backend, "_module", lambda b: fakes[b.name])
    return {b.name: fakes.get(b.name) for b in ISA_BUILDS}


def test_select_rules(monkeypatch):
    modules = _fake_modules(monkeypatch)
    assert _backend._select("baseline") == ("baseline", _backend._baseline)
    assert _backend._select(" Baseline ")[0] == "baseline"
    with pytest.raises(ValueError, match=r"CYBN_KERNELS='sse9' is not understood; expected"
                       r" one of 'auto', 'baseline', 'avx2', 'avx512'"):
        _backend._select("sse9")
    # a CPU without AVX2: auto falls back, an explicit request is refused, never executed
    _cpu_has(monkeypatch)
    assert _backend._select("auto") == ("baseline", _backend._baseline)
    assert _backend._select("") == ("baseline", _backend._baseline)
    with pytest.raises(RuntimeError, match="does not support AVX2|has no AVX2 build"):
        _backend._select("avx2")
    with pytest.raises(RuntimeError, match="does not support AVX-512|has no AVX-512 build"):
        _backend._select("avx512")
    # AVX2 but no AVX-512 (Haswell to Comet Lake, Zen 1-3): avx2, and avx512 is refused
    _cpu_has(monkeypatch, "avx2")
    with pytest.raises(RuntimeError, match=r"CYBN_KERNELS=avx512 was requested, but (this"
                       r" CPU or operating system does not support AVX-512|this copy of cybn"
                       r" has no AVX-512 build \(cybn._kernels_avx512 .*CYBN_AVX512=0)"):
        _backend._select("avx512")
    if modules["avx2"] is not None:
        assert _backend._select("auto") == ("avx2", modules["avx2"])
        assert _backend._select("AVX2") == ("avx2", modules["avx2"])
    # both: auto takes the highest built; either can be forced
    _cpu_has(monkeypatch, "avx2", "avx512")
    highest = next(((b.name, modules[b.name]) for b in ISA_BUILDS if modules[b.name]),
                   ("baseline", _backend._baseline))
    assert _backend._select("auto") == highest
    for b in ISA_BUILDS:
        if modules[b.name] is not None:
            assert _backend._select(f" {b.name.upper()}") == (b.name, modules[b.name])
        else:
            with pytest.raises(RuntimeError, match=f"has no {b.label} build"):
                _backend._select(b.name)


def test_small_inputs_rules(monkeypatch):
    # auto mode with AVX-512 chosen: inputs below AVX512_MIN_ELEMENTS run the AVX2 build
    # (which measured faster there); any forced build, or any other choice, runs every size
    modules = _fake_modules(monkeypatch)
    if modules["avx2"] is None or modules["avx512"] is None:
        pytest.skip("needs both ISA builds built")
    _cpu_has(monkeypatch, "avx2", "avx512")
    for request in (None, "", "auto", " Auto"):
        monkeypatch.setattr(_backend, "_REQUEST", request)
        assert _backend._small_inputs("avx512", modules["avx512"]) == ("avx2", modules["avx2"])
        assert _backend._small_inputs("avx2", modules["avx2"]) == ("avx2", modules["avx2"])
        assert _backend._small_inputs("baseline", _backend._baseline) == (
            "baseline", _backend._baseline)
    for request in ("avx512", "AVX512 "):
        monkeypatch.setattr(_backend, "_REQUEST", request)
        assert _backend._small_inputs("avx512", modules["avx512"]) == (
            "avx512", modules["avx512"])
    # AVX-512 chosen on a CPU where AVX2 would not run (no such CPU; the rule holds anyway)
    monkeypatch.setattr(_backend, "_REQUEST", None)
    _cpu_has(monkeypatch, "avx512")
    assert _backend._small_inputs("avx512", modules["avx512"]) == ("avx512", modules["avx512"])


def test_functional_routes_by_input_size():
    # every specialised kernel of cybn.functional: inputs of at least AVX512_MIN_ELEMENTS
    # elements go to cybn._backend.kernels, smaller ones to kernels_small
    from cybn import functional as F
    tables = [v for k, v in vars(F).items() if k.isupper() and k.startswith(("_FORWARD",
              "_BACKWARD", "_BATCH", "_NORMALIZE", "_UPDATE"))]
    assert len(tables) == 9
    for table in tables:
        assert len(table) in (2 * 2, 2 * 4)  # dtypes x {small, big}
        for key, fn in table.items():
            fn = getattr(fn, "func", fn)  # the two-type kernels are functools.partial
            module = _backend.kernels if key[-1] else _backend.kernels_small
            assert fn.__module__ == module.__name__, (key, fn.__module__)
    info = _backend.kernels_info()
    build_of = {"cybn._kernels": "baseline", **{f"cybn.{b.module}": b.name for b in ISA_BUILDS}}
    assert info["small_inputs"] == build_of[_backend.kernels_small.__name__]
    if info["selected"] == "avx512" and os.environ.get("CYBN_KERNELS") is None:
        assert info["small_inputs"] == ("avx2" if "avx2" in dict(RUNNABLE) else "avx512")


@pytest.mark.parametrize("build", ISA_BUILDS, ids=lambda b: b.name)
def test_select_refuses_a_build_not_built(monkeypatch, build):
    # as on a non-x86-64 target or with CYBN_AVX512=0: the module is not installed
    _fake_modules(monkeypatch)
    real = _backend._built
    monkeypatch.setattr(_backend, "_built", lambda b: b != build and real(b))
    _cpu_has(monkeypatch, "avx2", "avx512")
    with pytest.raises(RuntimeError, match=f"no {build.label} build .*{build.switch}=0"):
        _backend._select(build.name)
    assert _backend._select("auto")[0] != build.name


@pytest.mark.parametrize("request_", ["avx2", "avx512"])
def test_environment_forces_the_build(tmp_path, request_):
    # CYBN_KERNELS at import: the build runs if it can, else import fails with the reason
    proc = subprocess.run(
        [sys.executable, "-c", ("import cybn; from cybn._backend import kernels_info as k;"
                                " print(k()['module'])")],
        env={**os.environ, "CYBN_KERNELS": request_}, capture_output=True, text=True,
        timeout=120, check=False, cwd=tmp_path)
    if request_ in dict(RUNNABLE):
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == dict(RUNNABLE)[request_]
    else:
        assert proc.returncode != 0
        assert f"CYBN_KERNELS={request_} was requested, but" in proc.stderr


def test_bad_environment_value_fails_import(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import cybn"],
                          env={**os.environ, "CYBN_KERNELS": "fastest"},
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "CYBN_KERNELS='fastest' is not understood" in proc.stderr


def test_cpu_check_agrees_with_the_os():
    # Linux lists the flags the kernel enabled; has_avx2() and has_avx512() must agree (they
    # also check XCR0).
    if platform.system() != "Linux" or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs /proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        # AVX2 is x86-64's: has_avx2() is False elsewhere. Under qemu-user (the aarch64 run of
        # tools/check_platforms.sh, issue 13) /proc/cpuinfo is the x86 host's, with avx2.
        pytest.skip(f"AVX2 is an x86-64 feature; this is {platform.machine()}")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f
                      if line.startswith("flags")), None)
    if flags is None:
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    assert _cpu.has_avx2() == ("avx2" in flags)
    assert _cpu.has_avx512() == (
        "avx2" in flags and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(flags))


def test_a_build_is_imported_only_where_it_runs(monkeypatch):
    # importing an ISA module runs code compiled with its flags (SIGILL on a CPU without
    # them): _select must ask the CPU first
    imported = []
    monkeypatch.setattr(_backend, "_module", lambda b: imported.append(b.name))
    _cpu_has(monkeypatch, "avx2")
    _backend._select("auto")
    assert "avx512" not in imported
    _cpu_has(monkeypatch)
    assert _backend._select("auto")[0] == "baseline"
    assert _backend.kernels_info()["built"] == BUILT
    assert imported in ([], ["avx2"])


def test_show_config_names_the_kernels():
    import io
    buf = io.StringIO()
    cybn.show_config(file=buf)
    line = next(ln for ln in buf.getvalue().splitlines() if ln.strip().startswith("kernels"))
    assert _backend.kernels_info()["selected"] in line
    assert _backend.kernels.__name__ in line
