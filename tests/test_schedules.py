"""Which schedule the kernels take for a shape, read from the kernel (plan_info), and
that the schedules agree.

The kernel walks an (N, C, L) array in one of three ways (cybn/_kernels_impl.pxi, section 1:
COLUMNS for L < 64, RUNS for longer runs, SLAB for a fused operation whose channel fits
L2). These tests pin the choice for representative shapes and at each threshold, so a
change of threshold is a visible change of this file, and check that the benchmark times
every schedule. Numerical agreement between schedules is checked against the float64
reference: the same batch through a slab and through tiles (check_finite forces tiles)
gives results within the float32 bound of docs/accuracy.md (atol 1e-5 on unit-scale data;
float64: 1e-12).
"""

import ast
import os

import numpy as np
import pytest
from _reference import backward_batch, forward_batch

import cybn
from cybn import _kernels

HERE = os.path.dirname(os.path.abspath(__file__))


def schedule(shape, itemsize=4, fused=True):
    N, C = shape[0], shape[1]
    L = shape[2] if len(shape) > 2 else 1
    return _kernels.plan_info(N, C, L, itemsize, fused)["schedule"]


@pytest.mark.parametrize("shape,itemsize,fused,expected", [
    ((32, 64), 4, True, "columns"),           # 2-D: L == 1
    ((16384, 64, 4), 4, True, "columns"),     # short runs
    ((64, 8, 63), 4, True, "columns"),        # the last L walked as columns
    ((64, 8, 64), 4, True, "runs"),           # COLUMNS_MAX_L = 64
    ((1024, 3, 224), 4, True, "runs"),        # long runs, C < 8: no slab
    ((64, 256, 1024), 4, True, "runs"),       # runs of 4 KiB: below SLAB_MIN_RUN_BYTES
    ((8, 64, 16384), 4, True, "slab"),        # 64 KiB runs, 512 KiB channels
    ((8, 64, 16384), 4, False, "runs"),       # check_finite / decomposed kernels: no slab
    ((8, 64, 16384), 8, True, "slab"),        # float64: 1 MiB channels, the limit
    ((9, 64, 16384), 8, True, "runs"),        # one row more: over SLAB_BYTES
    ((16, 8, 8192), 4, True, "slab"),         # SLAB_MIN_CHANNELS = 8, L * 4 = 32 KiB
    ((16, 7, 8192), 4, True, "runs"),         # 7 channels: no slab
    ((16, 8, 8191), 4, True, "runs"),         # a run just under 32 KiB
])
def test_schedule_of_shape(shape, itemsize, fused, expected):
    assert schedule(shape, itemsize, fused) == expected


def test_tiles_follow_the_table():
    # COLUMNS tiles hold at most 1024 columns (tc * L), RUNS tiles 64 Ki elements
    p = _kernels.plan_info(16384, 64, 4, 4, True)
    assert p["tc"] * p["tl"] <= 1024 and p["tl"] == 4 and p["bl"] == 1
    p = _kernels.plan_info(64, 256, 1024, 4, True)
    assert p["tn"] * p["tc"] * p["tl"] <= 65536 and p["tl"] == 1024


def _literal_shapes(path, name):
    tree = ast.parse(open(path).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


@pytest.mark.parametrize("path,name", [("compare.py", "DEFAULT_SHAPES"),
                                       ("compare_builds.py", "SHAPES")])
def test_benchmark_times_every_schedule(path, name):
    # (compare_builds.py times the same shapes as compare.py, and the fallback cases)
    full = os.path.join(os.path.dirname(HERE), "benchmarks", path)
    if not os.path.exists(full):
        pytest.skip("benchmarks/ is not shipped in the sdist: a checkout test")
    shapes = _literal_shapes(full, name)
    for itemsize in (4, 8):  # float32 and float64 each take all three
        assert {schedule(s, itemsize, True) for s in shapes} == {"columns", "runs", "slab"}
    # ... and 1 < L < 64, the short runs that 2-D input does not reach
    assert any(len(s) == 3 and 1 < s[2] < 64 for s in shapes)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_slab_and_tiles_agree(dtype, tol):
    rng = np.random.default_rng(3)
    shape = (8, 16, 8192)
    assert schedule(shape, np.dtype(dtype).itemsize, True) == "slab"
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    results = []
    for check_finite in (False, True):  # slab, then tiles (runs)
        m = cybn.BatchNorm1d(16, dtype=dtype, check_finite=check_finite)
        y = m(x)
        results.append((y, m.backward(g), m.running_mean.copy(), m.running_var.copy()))
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    ref_y = forward_batch(x64)[0]
    ref_gi = backward_batch(x64, g64)[0]
    for y, gi, _, _ in results:
        np.testing.assert_allclose(y, ref_y, rtol=0, atol=tol * 10)
        np.testing.assert_allclose(gi, ref_gi, rtol=0, atol=tol * 10)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
