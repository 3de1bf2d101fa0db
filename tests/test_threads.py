"""Threads: results are BITWISE identical for every thread count, the thread
count API and OMP_NUM_THREADS are honoured, concurrent Python threads are
safe, and a fork()ed child after a parallel call does not hang."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _reference import assert_close, backward_batch, forward_batch

import cybn
import cybn.functional as F

THREADS = [1, 2, 3, 4]
BIG_SHAPES = [(4096, 64), (3000, 17), (64, 32, 1000), (2, 3, 200000), (1024, 3, 224)]


def run_sequence(x, g, n_threads, dtype):
    """train fwd, backward, eval fwd, eval backward; returns every array produced."""
    C = x.shape[1]
    m = cybn.BatchNorm1d(C, dtype=dtype, n_threads=n_threads)
    assert m.n_threads == n_threads
    m.weight[...] = np.linspace(0.5, 1.5, C)
    m.bias[...] = np.linspace(-1, 1, C)
    out = {}
    out["y_train"] = m(x)
    out["gi_train"] = m.backward(g)
    out["gw_train"], out["gb_train"] = m.grad_weight.copy(), m.grad_bias.copy()
    m(x[::-1])  # second step, negative strides
    out["rm"], out["rv"] = m.running_mean.copy(), m.running_var.copy()
    m.eval()
    out["y_eval"] = m(x)
    out["gi_eval"] = m.backward(g)
    out["gw_eval"], out["gb_eval"] = m.grad_weight.copy(), m.grad_bias.copy()
    return out


@pytest.mark.parametrize(
    "shape, dtype",
    [(s, np.float32) for s in BIG_SHAPES]
    + [((4096, 64), np.float64), ((64, 32, 1000), np.float64), ((2, 3, 200000), np.float64)],
)
def test_bitwise_identical_across_thread_counts(shape, dtype):
    rng = np.random.default_rng(hash(shape) % 2**32)
    x = (rng.standard_normal(shape, dtype=np.float32) * 3 + 1).astype(dtype)
    g = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    results = {k: run_sequence(x, g, k, dtype) for k in THREADS}
    base = results[1]
    for k in THREADS[1:]:
        for name, arr in results[k].items():
            assert arr.dtype == base[name].dtype
            assert np.array_equal(arr, base[name]), (
                f"n_threads={k}: {name} differs from n_threads=1"
            )
    # and the (common) result is right, so determinism is not vacuous
    y, _, _, _ = forward_batch(x, np.linspace(0.5, 1.5, shape[1]), np.linspace(-1, 1, shape[1]))
    assert_close(
        base["y_train"],
        y,
        rtol=1e-5 if dtype is np.float32 else 1e-11,
        atol=1e-5 if dtype is np.float32 else 1e-11,
    )


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((4096, 64), "F"),
        ((64, 32, 1000), "channels_last"),
        ((64, 32, 1000), "F"),
        ((64, 2500), "C"),
        ((3, 2, 70000), "C"),
        ((4096, 64), "strided"),
    ],
)
def test_bitwise_identical_across_thread_counts_layouts(shape, layout):
    rng = np.random.default_rng(5)
    base = rng.standard_normal(shape, dtype=np.float32) * 2 + 1
    if layout == "F":
        x = np.asfortranarray(base)
    elif layout == "channels_last":
        x = np.ascontiguousarray(base.transpose(0, 2, 1)).transpose(0, 2, 1)
    elif layout == "strided":
        big = np.zeros((2 * shape[0],) + shape[1:], np.float32)
        big[::2] = base
        x = big[::2]
    else:
        x = base
    g = rng.standard_normal(shape, dtype=np.float32)
    results = {k: run_sequence(x, g, k, np.float32) for k in THREADS}
    for k in THREADS[1:]:
        for name, arr in results[k].items():
            assert np.array_equal(arr, results[1][name]), f"n_threads={k}: {name}"
    w = np.linspace(0.5, 1.5, shape[1]).astype(np.float32)
    assert_close(results[1]["gi_train"], backward_batch(x, g, w)[0], np.float32)


@pytest.mark.parametrize("shape", [(4096, 64), (64, 32, 1000)])
def test_functional_bitwise_across_thread_counts(shape):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape, dtype=np.float32) + 2
    g = rng.standard_normal(shape, dtype=np.float32)
    C = shape[1]
    res = []
    for k in THREADS:
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        out, sm, si = F.batch_norm_forward(x, None, None, rm, rv, True, 0.1, 1e-5, n_threads=k)
        gi, gw, gb = F.batch_norm_backward(g, x, None, sm, si, n_threads=k)
        y2 = F.batch_norm(x, rm, rv, training=False, n_threads=k)
        res.append((out, sm, si, rm, rv, gi, gw, gb, y2))
    for k, r in zip(THREADS[1:], res[1:]):
        for i, (a, b) in enumerate(zip(r, res[0])):
            assert np.array_equal(a, b), f"n_threads={k}: output #{i} differs"
    assert_close(res[0][5], backward_batch(x, g)[0], np.float32)


@pytest.mark.parametrize("shape", [(4096, 64), (2, 3, 200000)])
def test_set_num_threads_bitwise(shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape, dtype=np.float32) * 2
    g = rng.standard_normal(shape, dtype=np.float32)
    res = []
    for k in THREADS:
        cybn.set_num_threads(k)
        assert cybn.get_num_threads() == (k if cybn.openmp_enabled() else 1)
        res.append(run_sequence(x, g, None, np.float32))
    cybn.set_num_threads(None)
    for k, r in zip(THREADS[1:], res[1:]):
        for name in r:
            assert np.array_equal(r[name], res[0][name]), f"set_num_threads({k}): {name}"


def test_get_set_num_threads():
    default = cybn.get_num_threads()
    assert isinstance(default, int) and default >= 1
    cybn.set_num_threads(3)
    assert cybn.get_num_threads() == (3 if cybn.openmp_enabled() else 1)
    cybn.set_num_threads(1)
    assert cybn.get_num_threads() == 1
    cybn.set_num_threads(None)
    assert cybn.get_num_threads() == default


def test_openmp_enabled_is_bool():
    assert isinstance(cybn.openmp_enabled(), bool)


def test_concurrent_python_threads_match_serial():
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((512, 32, 8), dtype=np.float32) + i for i in range(8)]
    gs = [rng.standard_normal((512, 32, 8), dtype=np.float32) for _ in range(8)]

    def work(i):
        out, sm, si = F.batch_norm_forward(
            xs[i], None, None, None, None, True, 0.1, 1e-5, n_threads=2
        )
        gi, gw, _gb = F.batch_norm_backward(gs[i], xs[i], None, sm, si, n_threads=2)
        return out, gi, gw

    serial = [work(i) for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as ex:
        parallel = list(ex.map(work, range(8)))
    for i, (s, p) in enumerate(zip(serial, parallel)):
        for a, b in zip(s, p):
            assert np.array_equal(a, b), i


def _run(code, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("value", ["1", "3"])
def test_omp_num_threads_respected(value):
    r = _run(
        """
        import cybn
        print(cybn.get_num_threads(), cybn.openmp_enabled())
    """,
        {"OMP_NUM_THREADS": value},
    )
    assert r.returncode == 0, r.stderr
    n, enabled = r.stdout.split()
    assert int(n) == (int(value) if enabled == "True" else 1)


def test_threadpoolctl_limit_respected():
    r = _run("""
        import cybn, numpy as np
        from threadpoolctl import threadpool_limits
        before = cybn.get_num_threads()
        with threadpool_limits(limits=1, user_api="openmp"):
            inside = cybn.get_num_threads()
        print(before, inside, cybn.openmp_enabled())
    """)
    assert r.returncode == 0, r.stderr
    before, inside, enabled = r.stdout.split()
    if enabled == "True":
        assert int(inside) == 1
    assert int(before) >= 1


FORK_SCRIPT = """
    import multiprocessing as mp
    import numpy as np
    import cybn

    def child(q, x):
        setup = "CHILD_SETUP"
        if setup == "set_num_threads":
            cybn.set_num_threads(2)
        m = cybn.BatchNorm1d(x.shape[1], n_threads=2 if setup == "n_threads=2" else None)
        q.put(m(x))

    if __name__ == "__main__":
        x = np.random.default_rng(0).standard_normal((4096, 64), dtype=np.float32)
        parent = cybn.BatchNorm1d(64, n_threads=2)(x)      # parallel region in the parent
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q, x))
        p.start()
        try:
            res = q.get(timeout=30)
        except Exception:
            p.kill()
            print("CHILD-HUNG")
            raise SystemExit(3)
        p.join(30)
        assert np.array_equal(res, parent), "child result differs"
        print("OK", p.exitcode)
"""


@pytest.mark.parametrize("child_setup", ["", "n_threads=2", "set_num_threads"])
def test_fork_child_after_parallel_call_does_not_hang(child_setup):
    """The parent runs a 2-thread parallel region, then forks; the child runs
    cybn (default threads / explicit n_threads=2 / after set_num_threads(2),
    which the package documents as re-enabling threads in a child).  A hang
    fails the test: the child gets 30 s, the whole script 90 s."""
    script = FORK_SCRIPT.replace("CHILD_SETUP", child_setup)
    try:
        r = _run(script, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("fork scenario timed out (hang)")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.split() == ["OK", "0"], r.stdout
