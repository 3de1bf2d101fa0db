"""Child-process side of tests/test_concurrency.py (kept tiny: spawn/forkserver children
import it, and only it, besides numpy and cybn)."""

import numpy as np

import cybn


def data():
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((4096, 64), dtype=np.float32)  # 4 tiles: a parallel region
    g = rng.standard_normal((4096, 64), dtype=np.float32)
    return x, g


def work(x, g):
    """One training forward + backward with 2 OpenMP threads requested."""
    m = cybn.BatchNorm1d(x.shape[1], n_threads=2)
    y = m(x)
    gi = m.backward(g)
    return y, gi, m.running_mean.copy(), m.running_var.copy()


def child(q):
    x, g = data()
    q.put((cybn.get_num_threads(), work(x, g)))
