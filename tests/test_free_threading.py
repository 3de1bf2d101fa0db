"""Thread-stress tests that only a GIL-free interpreter can really fail (issue 13).

They run in the normal suite, GIL or not (a few seconds), and at a larger scale on a
free-threaded CPython with ``PYTHON_GIL=0`` (``bash tools/check_platforms.sh freethreaded``
sets ``CYBN_STRESS_SCALE``; results in docs/platforms.md):

* **own modules**: 8 threads, each with its own module, run forward / backward / evaluation
  in a loop on one shared read-only input; every result is bitwise equal to the serial run's.
* **global state**: the package's own globals -- the default thread count
  (``set_num_threads``), the fork guard, the kernel-build choice, the OpenMP probe -- read
  and written from many threads (and forked from, on POSIX): no crash, and every value read
  is one that was written (no torn or foreign value).
* **misuse**: one module shared by 4 threads while a fifth reassigns its attributes
  (``weight``, ``running_var`` of the wrong length, ``load_state_dict``, ``train``/``eval``):
  calls may raise the documented errors, but nothing crashes, every output has the right
  shape, and no write lands outside the arrays (each array sits between guard cells that
  must keep their sentinel values). tools/check_platforms.sh also runs it against a
  ``CYBN_DEBUG=1`` (bounds-checked) build.
* on a free-threaded interpreter: importing cybn and every compiled module does not
  re-enable the GIL (checked in a fresh interpreter without ``PYTHON_GIL``).
"""

import os
import subprocess
import sys
import sysconfig
import threading
import time

import numpy as np
import pytest

import cybn
from cybn import _backend, _openmp, _threads

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
GIL_ENABLED = getattr(sys, "_is_gil_enabled", lambda: True)()
# The on-demand free-threaded run raises this (more rounds, more iterations).
SCALE = max(1, int(os.environ.get("CYBN_STRESS_SCALE", "1")))
TIMEOUT = 120 * SCALE


def _bits(a):
    """The array's bytes as unsigned ints: bitwise comparison, NaN-safe."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _run_threads(n, target, args_of=lambda i: ()):
    """Start n threads at a barrier; return their results; re-raise the first error."""
    barrier = threading.Barrier(n)
    results = [None] * n
    errors = []

    def body(i):
        try:
            barrier.wait()
            results[i] = target(i, *args_of(i))
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append((i, exc))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} threads still running after {TIMEOUT} s (hang?)"
    if errors:
        i, exc = errors[0]
        raise AssertionError(f"thread {i} raised {exc!r}") from exc
    return results


# ---------------------------------------------------------------------------------------
# 1. own modules, shared read-only input: bitwise equal to serial

N_OWN = 8


def _shared_input():
    rng = np.random.default_rng(1313)
    x = (rng.standard_normal((192, 24, 16)) * 3 + 5).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    x.flags.writeable = False
    g.flags.writeable = False
    return x, g


def _own_module_loop(i, x, g, iters):
    # Each thread differs (eps, momentum, dtype, thread count) so a mix-up between
    # threads' modules or scratch buffers would show in the results.
    dtype = np.float64 if i % 3 == 2 else np.float32
    m = cybn.BatchNorm1d(x.shape[1], eps=1e-5 * (i + 1), momentum=0.05 * (i % 4 + 1),
                         dtype=dtype, n_threads=1 + i % 2)
    xi = x if dtype == np.float32 else x.astype(dtype)
    gi = g if dtype == np.float32 else g.astype(dtype)
    out = []
    for k in range(iters):
        m.train()
        y = m(xi)
        grad = m.backward(gi)
        m.weight -= 0.01 * m.grad_weight
        m.bias -= 0.01 * m.grad_bias
        m.eval()
        ye = m(xi)
        ge = m.backward(gi)
        if k == iters - 1:
            out = [y, grad, m.grad_weight, m.grad_bias, ye, ge, m.weight, m.bias,
                   m.running_mean, m.running_var, m.num_batches_tracked]
    return [np.array(a, copy=True) for a in out]


def test_own_modules_bitwise_equal_to_serial():
    x, g = _shared_input()
    iters = 4 * SCALE
    serial = [_own_module_loop(i, x, g, iters) for i in range(N_OWN)]
    for _ in range(2 * SCALE):
        threaded = _run_threads(N_OWN, _own_module_loop, lambda i: (x, g, iters))
        for i in range(N_OWN):
            for k, (a, b) in enumerate(zip(serial[i], threaded[i])):
                assert a.dtype == b.dtype and a.shape == b.shape, (i, k)
                assert np.array_equal(_bits(a), _bits(b)), f"thread {i}, result {k} differs"
    # the shared input was only read
    assert not x.flags.writeable and not g.flags.writeable


def test_functional_api_threads_bitwise_equal_to_serial():
    x, _ = _shared_input()
    F = cybn.functional

    def work(i):
        w = np.linspace(0.5, 1.5, x.shape[1], dtype=np.float32) * (i + 1)
        b = np.full(x.shape[1], 0.25 * i, dtype=np.float32)
        rm = np.zeros(x.shape[1], np.float32)
        rv = np.ones(x.shape[1], np.float32)
        outs = []
        for _ in range(3 * SCALE):
            outs.append(F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1,
                                     n_threads=1 + i % 3))
        outs.append(F.batch_norm(x, rm, rv, w, b, training=False, n_threads=2))
        return [*outs, rm, rv]

    serial = [work(i) for i in range(N_OWN)]
    threaded = _run_threads(N_OWN, lambda i: work(i))
    for i in range(N_OWN):
        for a, b in zip(serial[i], threaded[i]):
            assert np.array_equal(_bits(a), _bits(b)), f"thread {i} differs"


# ---------------------------------------------------------------------------------------
# 2. the package's global state from many threads


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_global_state_hammer():
    auto = cybn.get_num_threads()  # the automatic default, before anyone sets one
    cpus = _threads._usable_cpus()
    written = [None, 1, 2, 3, -1]
    allowed_default = set(written)
    allowed_effective = {auto, 1, 2, 3, cpus} if _threads._OPENMP else {1}
    backend_info = _backend.kernels_info()
    backend_module = _backend.kernels
    openmp = cybn.openmp_enabled()
    x = np.random.default_rng(7).standard_normal((64, 8)).astype(np.float32)
    ref = cybn.functional.batch_norm(x, None, None, training=True, n_threads=1)
    stop = threading.Event()
    n_iter = 2000 * SCALE
    fork_results = []

    def writer(i):
        for k in range(n_iter):
            cybn.set_num_threads(written[(i + k) % len(written)])
            if k % 50 == 0:
                with pytest.raises(ValueError):
                    cybn.set_num_threads(0)  # a rejected value must not be stored
        return True

    def reader(i):
        seen = set()
        for k in range(n_iter):
            d = _threads._default
            assert d in allowed_default, f"torn/foreign default {d!r}"
            n = cybn.get_num_threads()
            assert n in allowed_effective, f"get_num_threads() gave {n}"
            assert _threads.effective_n_threads(-1) == (cpus if _threads._OPENMP else 1)
            assert _threads.effective_n_threads(2) == (2 if _threads._OPENMP else 1)
            assert _threads._forked_child is False
            assert cybn.openmp_enabled() is openmp
            assert _openmp.omp_max_threads() >= 1
            assert _backend.kernels is backend_module
            if k % 25 == 0:
                assert _backend.kernels_info() == backend_info
                assert _backend._select("auto")[1] is backend_module
                y = cybn.functional.batch_norm(x, None, None, training=True)
                assert np.array_equal(_bits(y), _bits(ref))
            seen.add(n)
        return seen

    def forker(i):
        # The fork guard: a child forked while other threads change the default must run
        # serial (get_num_threads() == 1) and still compute the same result.
        if not hasattr(os, "fork"):
            return True
        for _ in range(2):
            pid = os.fork()
            if pid == 0:  # child: only this thread exists
                code = 1
                try:
                    ok = (_threads._forked_child and cybn.get_num_threads() == 1
                          and np.array_equal(_bits(cybn.functional.batch_norm(
                              x, None, None, training=True, n_threads=4)), _bits(ref)))
                    code = 0 if ok else 3
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 60
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    fork_results.append(os.waitstatus_to_exitcode(status))
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    fork_results.append("hang")
                    break
                time.sleep(0.01)
            if stop.is_set():
                break
        return True

    roles = [writer] * 3 + [reader] * 4 + [forker]
    try:
        _run_threads(len(roles), lambda i: roles[i](i))
    finally:
        stop.set()
        cybn.set_num_threads(None)
    assert all(r == 0 for r in fork_results), f"forked children: {fork_results}"
    assert _threads._default is None and cybn.get_num_threads() == auto
    assert _threads._forked_child is False


# ---------------------------------------------------------------------------------------
# 3. misuse: one module shared by 4 threads while a fifth reassigns its attributes

GUARD = 16
SENTINEL = np.float32(-7.25e30)


def _guarded(values, dtype=np.float32):
    """values copied into the middle of a buffer with GUARD sentinel cells each side."""
    values = np.asarray(values, dtype=dtype)
    buf = np.full(values.size + 2 * GUARD, SENTINEL, dtype=dtype)
    buf[GUARD:GUARD + values.size] = values
    return buf, buf[GUARD:GUARD + values.size]


# What a misused module may raise: the documented validation errors.
_ALLOWED = (ValueError, TypeError, RuntimeError)


def test_shared_module_misuse_never_crashes_or_writes_out_of_bounds():
    C = 12
    rng = np.random.default_rng(99)
    x = (rng.standard_normal((96, C, 4)) + 2).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    x.flags.writeable = False
    g.flags.writeable = False
    m = cybn.BatchNorm1d(C, n_threads=2)
    buffers = []

    def guarded(values):
        buf, view = _guarded(values)
        buffers.append(buf)
        return view

    # every array the module ever holds sits between guard cells
    m.weight, m.bias = guarded(np.ones(C)), guarded(np.zeros(C))
    m.running_mean, m.running_var = guarded(np.zeros(C)), guarded(np.ones(C))
    good_state = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    stop = threading.Event()
    n_iter = 400 * SCALE
    errors = {"user": 0, "ok": 0}
    lock = threading.Lock()

    def user(i):
        ok = err = 0
        for k in range(n_iter):
            if stop.is_set():
                break
            try:
                y = m(x)
                assert y.shape == x.shape and y.dtype == np.float32
                gi = m.backward(g)
                assert gi.shape == x.shape and gi.dtype == np.float32
                sd = m.state_dict()
                assert all(isinstance(v, np.ndarray) for v in sd.values())
                ok += 1
            except _ALLOWED:
                err += 1
        with lock:
            errors["ok"] += ok
            errors["user"] += err
        return True

    def mutator(i):
        r = np.random.default_rng(5)
        try:
            for k in range(n_iter * 2):
                choice = k % 11
                if choice == 0:
                    m.weight = guarded(r.uniform(0.5, 2, C))
                elif choice == 1:
                    m.running_var = guarded(np.ones(C - 1 - k % 3))  # wrong length
                elif choice == 2:
                    m.running_var = guarded(r.uniform(0.5, 2, C))
                elif choice == 3:
                    m.weight = guarded(np.ones(C + 2))  # wrong length
                elif choice == 4:
                    try:
                        m.load_state_dict(good_state)
                    except _ALLOWED:
                        pass  # size mismatch while a wrong-length array is installed
                elif choice == 5:
                    try:
                        m.load_state_dict({"weight": np.ones(C + 1)}, strict=False)
                    except _ALLOWED:
                        pass
                elif choice == 6:
                    m.train(k % 2 == 0)
                elif choice == 7:
                    m.eval()
                elif choice == 9:
                    m.weight = guarded(np.ones(C - 1))  # too short: a read past its end?
                elif choice == 10:
                    m.bias = guarded(np.zeros(C - 2))
                    m.running_mean = guarded(np.zeros(C - 1))
                else:
                    m.weight = guarded(np.ones(C))
                    m.running_mean = guarded(np.zeros(C))
                    m.bias = guarded(np.zeros(C))
                time.sleep(0)
        finally:
            stop.set()
        return True

    roles = [user] * 4 + [mutator]
    _run_threads(len(roles), lambda i: roles[i](i))
    for n, buf in enumerate(buffers):
        assert np.all(buf[:GUARD] == SENTINEL), f"write before array {n}"
        assert np.all(buf[-GUARD:] == SENTINEL), f"write after array {n}"
    # the module is still usable once it is given consistent state again
    m.weight, m.bias = np.ones(C, np.float32), np.zeros(C, np.float32)
    m.running_mean, m.running_var = np.zeros(C, np.float32), np.ones(C, np.float32)
    m.train()
    y = m(x)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert errors["ok"] + errors["user"] > 0


# ---------------------------------------------------------------------------------------
# 4. the GIL stays off


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded (--disable-gil) CPython")
def test_import_does_not_enable_the_gil():
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "assert not sys._is_gil_enabled(), 'GIL on before import'\n"
        "import cybn, cybn.functional, cybn._layout, cybn._threads, cybn._openmp, cybn._cpu\n"
        "import cybn._kernels, cybn.compat, cybn.sync, cybn.serialization\n"
        "from cybn import _backend\n"
        "for b in _backend._ISA_BUILDS:  # those built that this CPU runs (else SIGILL)\n"
        "    if _backend._built(b) and _backend._runs_here(b):\n"
        "        _backend._module(b)\n"
        "assert not sys._is_gil_enabled(), 'importing cybn enabled the GIL'\n"
        "print('GIL disabled after import')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(__file__),
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GIL disabled after import" in proc.stdout


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded (--disable-gil) CPython")
def test_gil_still_off_in_this_process():
    if os.environ.get("PYTHON_GIL") == "1":
        pytest.skip("PYTHON_GIL=1 forces the GIL on")
    assert not sys._is_gil_enabled(), "the GIL is on in the test process"
