"""Concurrency, fork and memory.

* Python threads: 4 threads, each running its own module, give results bitwise equal to
  running the same work serially (the kernels release the GIL; the results do not depend
  on the thread count or on other threads). The speedup over the serial run is measured and
  printed (``pytest -s``), never asserted: CI machines are noisy.
* Sharing: modules keep per-call state (the backward cache, grad_*, running statistics),
  so ONE module used from several threads at once is not safe, as in torch; separate
  modules (or the functional API with separate arrays) are.
* fork/spawn/forkserver: a child started after the parent ran parallel kernels (and while
  another parent thread keeps running them) completes its own cybn calls -- no libgomp
  hang -- and gets the parent's results bit for bit. Every child has a timeout, so a hang
  fails the test instead of blocking CI.
* Memory: 100,000 small training forward/backward calls (with evaluation calls, failing
  calls and state_dict round trips mixed in) keep the Python heap (tracemalloc) within
  64 KiB and the resident set size (/proc/self/statm) within 2 MiB of their values after a
  warm-up. A leak of 1 byte per call would show in tracemalloc; a leaked kernel scratch
  buffer (>= 64 bytes per call) in the RSS.
"""

import multiprocessing as mp
import os
import sys
import threading
import time
import tracemalloc
import warnings

import _mp_worker
import numpy as np
import pytest

import cybn

# ---------------------------------------------------------------------------------------
# Python threads


def _workload(i, n_threads, iters=6):
    """A training loop on module i: forward/backward in training, then an evaluation."""
    rng = np.random.default_rng(100 + i)
    x = rng.standard_normal((512, 64, 32), dtype=np.float32) + i
    g = rng.standard_normal((512, 64, 32), dtype=np.float32)
    return x, g, iters, n_threads


def _run(x, g, iters, n_threads):
    m = cybn.BatchNorm1d(x.shape[1], n_threads=n_threads)
    for _ in range(iters):
        y = m(x)
        gi = m.backward(g)
    m.eval()
    ye = m(x)
    return [y, gi, m.grad_weight, m.grad_bias, m.running_mean, m.running_var, ye]


def _threaded(works):
    results = [None] * len(works)
    errors = []
    barrier = threading.Barrier(len(works))

    def target(k):
        try:
            barrier.wait()
            results[k] = _run(*works[k])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(len(works))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    return results, elapsed


@pytest.mark.parametrize("n_threads", [1, None])
def test_four_threads_bitwise_equal_to_serial(n_threads):
    works = [_workload(i, n_threads) for i in range(4)]
    serial = [_run(*w) for w in works]  # also the warm-up of the timings below
    threaded, _ = _threaded(works)
    for i, (s, t) in enumerate(zip(serial, threaded)):
        for k, (a, b) in enumerate(zip(s, t)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (i, k)
    t_serial = t_threads = float("inf")
    for _ in range(2):  # best of 2
        t0 = time.perf_counter()
        for w in works:
            _run(*w)
        t_serial = min(t_serial, time.perf_counter() - t0)
        t_threads = min(t_threads, _threaded(works)[1])
    print(f"\n4 modules x 6 training steps on (512, 64, 32) float32, n_threads={n_threads} "
          f"(default {cybn.get_num_threads()}): serial {t_serial:.3f} s, 4 Python threads "
          f"{t_threads:.3f} s, speedup {t_serial / t_threads:.2f}x on {os.cpu_count()} CPUs")


def test_threads_running_the_functional_api_on_shared_read_only_inputs():
    """Separate output arrays, one shared read-only input: safe and bitwise equal."""
    x, _g, _, _ = _workload(0, 1)
    x.flags.writeable = False
    ref = cybn.functional.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)[0]
    out = [None] * 4

    def target(k):
        out[k] = cybn.functional.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5,
                                                    n_threads=1 + k % 2)[0]

    threads = [threading.Thread(target=target, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None and o.tobytes() == ref.tobytes() for o in out)


# ---------------------------------------------------------------------------------------
# fork / spawn / forkserver


def _start_child(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_mp_worker.child, args=(q,))
    p.start()
    return p, q


def _finish_child(p, q, timeout):
    try:
        n_threads, result = q.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - queue.Empty: the child hung or died
        p.kill()
        p.join(10)
        pytest.fail(f"child did not answer within {timeout} s (hang?); exit code {p.exitcode}")
    p.join(timeout)
    if p.is_alive():
        p.kill()
        pytest.fail("child answered but did not exit")
    assert p.exitcode == 0
    return n_threads, result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_after_parallel_call_completes(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    x, g = _mp_worker.data()
    parent = _mp_worker.work(x, g)  # a parallel region (4 tiles, 2 threads) in the parent
    stop = threading.Event()

    def busy():  # and another parent thread keeps entering parallel regions meanwhile
        m = cybn.BatchNorm1d(64, n_threads=2)
        while not stop.is_set():
            m(x)
            m.backward(g)

    bg = threading.Thread(target=busy)
    bg.start()
    ctx = mp.get_context(method)
    rounds = 10 if method == "fork" else 1
    try:
        for _ in range(rounds):
            with warnings.catch_warnings():
                # Python >= 3.12 warns that fork() in a multi-threaded process may deadlock:
                # exactly the situation under test
                warnings.simplefilter("ignore", DeprecationWarning)
                p, q = _start_child(ctx)
            n_threads, result = _finish_child(p, q, timeout=60)
            for a, b in zip(parent, result):
                assert a.tobytes() == b.tobytes()
            if method == "fork":
                assert n_threads == 1  # documented: a forked child stays serial
            elif cybn.openmp_enabled():
                assert n_threads == min(2, len(os.sched_getaffinity(0))) or n_threads >= 1
    finally:
        stop.set()
        bg.join(60)


# ---------------------------------------------------------------------------------------
# memory


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CALLS = 100_000
HEAP_BOUND = 64 * 1024
RSS_BOUND = 2 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_no_leak_over_100000_calls():
    rng = np.random.default_rng(0)
    m = cybn.BatchNorm1d(8)
    x = rng.standard_normal((16, 8), dtype=np.float32)
    g = rng.standard_normal((16, 8), dtype=np.float32)
    big = rng.standard_normal((70000, 2, 2), dtype=np.float32)  # several tiles, 2 threads
    mb = cybn.BatchNorm1d(2, n_threads=2)
    bad = np.zeros((16, 9), np.float32)

    def step(i):
        m(x)
        m.backward(g)
        if i % 100 == 0:
            m.eval()
            m(x)
            m.backward(g)
            m.train()
            try:
                m(bad)
            except ValueError:
                pass
            m.load_state_dict({k: v.copy() for k, v in m.state_dict().items()})
        if i % 1000 == 0:
            mb(big)
            mb.backward(big)

    for i in range(5000):  # warm-up: caches, allocator pools, lazily created objects
        step(i)
    tracemalloc.start()
    try:
        heap0 = tracemalloc.get_traced_memory()[0]
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        samples = []
        for i in range(CALLS):
            step(i)
            if i % 20000 == 19999:
                samples.append((tracemalloc.get_traced_memory()[0] - heap0, _rss_bytes() - rss0))
        elapsed = time.perf_counter() - t0
    finally:
        tracemalloc.stop()
    heap, rss = samples[-1]
    print(f"\n{CALLS} forward+backward calls in {elapsed:.1f} s: Python heap "
          f"{heap:+d} B, RSS {rss / 1024:+.0f} KiB (samples every 20000: {samples})")
    assert heap <= HEAP_BOUND, samples
    assert rss <= RSS_BOUND, samples
