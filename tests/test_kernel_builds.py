"""The two compiled builds of the kernels (baseline and AVX2) and how one is chosen.

Both builds come from cybn/_kernels_impl.pxi and must return bitwise-identical results: a
user's numbers may not depend on which CPU the wheel landed on. The comparison runs the
public API in two child processes, one per ``CYBN_KERNELS`` setting, over inputs that reach
every code path of the kernels: the rows path (L == 1) with channel counts around the tile
width, contiguous runs of every length class (remainders, short runs, channel slabs),
float32 and float64 data, mixed parameter dtypes, constant channels, values that take the
exact double fallback (tiny, huge, non-finite), 1 and 2 threads; and batch norm fused with
ReLU, with and without a residual, in every schedule (_battery.fused_results).
"""

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


AVX2_BUILT = "avx2" in _backend.kernels_info()["built"]


def test_avx2_module_matches_build_record():
    # The module present is the one this build made: no stale _kernels_avx2 left from an
    # earlier build of the tree, none missing.
    record = _build_record()
    assert AVX2_BUILT == (record["avx2_args"] is not None)
    assert record["kernel_builds"] == (["baseline", "avx2"] if AVX2_BUILT else ["baseline"])
    # An x86-64 build without the AVX2 module would silently lose the speed-up, unless it
    # was asked for (CYBN_AVX2=0).
    opted_out = record["environment"].get("CYBN_AVX2", "1").strip().lower() in (
        "0", "false", "no", "off", "")
    if X86_64 and not opted_out:
        assert AVX2_BUILT


@pytest.mark.slow
@pytest.mark.skipif(not AVX2_BUILT, reason="this copy of cybn has no AVX2 build")
@pytest.mark.skipif(not _cpu.has_avx2(), reason="this CPU cannot run the AVX2 build")
def test_builds_bitwise_identical(tmp_path):
    base = _run_battery(tmp_path, "baseline", "cybn._kernels")
    avx2 = _run_battery(tmp_path, "avx2", "cybn._kernels_avx2")
    assert base.keys() == avx2.keys()
    assert len(base) > 3000
    differ = [k for k in base if not _same_but_nan_bits(base[k], avx2[k])]
    assert not differ, f"{len(differ)} results differ between builds, e.g. {differ[:5]}"
    # the battery is not vacuous: the fallback cases and NaN propagation are in it
    assert any(np.isnan(v).any() for v in base.values())
    assert any(np.isfinite(v).all() and np.abs(v.astype(np.float64)).max() > 1e200
               for v in base.values())


def test_default_choice_follows_the_cpu():
    info = _backend.kernels_info()
    if os.environ.get("CYBN_KERNELS") is not None:
        pytest.skip("CYBN_KERNELS is set for this run")
    expected = "avx2" if ("avx2" in info["built"] and _cpu.has_avx2()) else "baseline"
    assert info["selected"] == expected
    assert _backend.kernels.__name__ == {"avx2": "cybn._kernels_avx2",
                                         "baseline": "cybn._kernels"}[expected]


def test_select_rules(monkeypatch):
    avx2 = _backend._avx2_module()
    assert _backend._select("baseline") == ("baseline", _backend._baseline)
    assert _backend._select(" Baseline ")[0] == "baseline"
    with pytest.raises(ValueError, match=r"CYBN_KERNELS='sse9' is not understood"):
        _backend._select("sse9")
    # a CPU without AVX2: auto falls back, an explicit request is refused, never executed
    monkeypatch.setattr(_cpu, "has_avx2", lambda: False)
    assert _backend._select("auto") == ("baseline", _backend._baseline)
    assert _backend._select("") == ("baseline", _backend._baseline)
    with pytest.raises(RuntimeError, match="does not support AVX2|has no AVX2 build"):
        _backend._select("avx2")
    if avx2 is not None:
        monkeypatch.setattr(_cpu, "has_avx2", lambda: True)
        assert _backend._select("auto") == ("avx2", avx2)
        assert _backend._select("AVX2") == ("avx2", avx2)


def test_bad_environment_value_fails_import(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import cybn"],
                          env={**os.environ, "CYBN_KERNELS": "fastest"},
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "CYBN_KERNELS='fastest' is not understood" in proc.stderr


def test_cpu_check_agrees_with_the_os():
    # Linux lists the flags the kernel enabled; has_avx2() must agree (it also checks XCR0).
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


def test_show_config_names_the_kernels():
    import io
    buf = io.StringIO()
    cybn.show_config(file=buf)
    line = next(ln for ln in buf.getvalue().splitlines() if ln.strip().startswith("kernels"))
    assert _backend.kernels_info()["selected"] in line
    assert _backend.kernels.__name__ in line
