"""Inputs that reach every code path of the kernels, and the results of running them.

Used by tests/test_kernel_builds.py (the baseline and AVX2 builds must agree bit for bit)
and by tools/compare_results.py (two revisions must agree bit for bit), so that both
compare builds on the same inputs: the COLUMNS walk (L == 1 and 1 < L < 64) with channel
counts around the tile width, RUNS of every length class (remainders, short runs), the
SLAB schedule, float32 and float64 data, mixed parameter dtypes, constant channels, values
that take the exact double fallback (tiny, huge, non-finite), 1 and 2 threads.
"""

import numpy as np

SHAPES = [(7, 5), (64, 3), (33, 1024), (130, 1030), (300, 40), (4096, 17),
          (3, 2, 1), (5, 3, 7), (4, 3, 16), (9, 2, 63), (6, 4, 64), (5, 3, 65), (17, 3, 224),
          (2, 9, 1000), (3, 8, 9000), (1, 2, 70000)]
KINDS = ("randn", "offset", "constant", "tiny", "huge", "nonfinite", "nanmix")


def data(rng, shape, dt, kind):
    """Standard normal data of one kind (see KINDS), in dtype dt."""
    C = shape[1]
    x = rng.standard_normal(shape)
    if kind == "offset":
        x = 1e4 + 3 * x
    elif kind == "constant":
        x[:, : (C + 1) // 2] = 0.7
    elif kind == "tiny":
        x = x * 1e-30
    elif kind == "huge":
        x = x * (1e30 if dt == np.float32 else 1e250)
    elif kind == "nonfinite":
        x.flat[:: max(1, x.size // 3)] = np.nan
        x[-1, 0] = np.inf
    elif kind == "nanmix":  # NaNs of both signs meet in the sums
        x.flat[0] = np.nan
        x.flat[x.size // 2] = -np.nan
        x.flat[-1] = -np.nan
        x[-1, 0] = -np.nan
    return x.astype(dt)


def functional_results(F, shapes=SHAPES, seed=20261130):
    """{key: array} of a training forward, its backward, an evaluation forward and its
    backward through cybn.functional ``F`` for every shape, dtype pair, kind and thread
    count."""
    rng = np.random.default_rng(seed)
    results = {}
    for si, shape in enumerate(shapes):
        C = shape[1]
        for dt in (np.float32, np.float64):
            for pdt in (np.float32, np.float64):
                for kind in KINDS:
                    x = data(rng, shape, dt, kind)
                    g = rng.standard_normal(shape).astype(dt)
                    w = rng.uniform(0.5, 2, C).astype(pdt)
                    b = rng.standard_normal(C).astype(pdt)
                    for nt in (1, 2):
                        key = f"{si}-{np.dtype(dt).name}-{np.dtype(pdt).name}-{kind}-{nt}"
                        rm = np.zeros(C, pdt)
                        rv = np.ones(C, pdt)
                        y, mean, invstd = F.batch_norm_forward(x, w, b, rm, rv, True, 0.1,
                                                               1e-5, n_threads=nt)
                        gi, gw, gb = F.batch_norm_backward(g, x, w, mean, invstd, n_threads=nt)
                        ye = F.batch_norm(x, rm, rv, w, b, training=False, n_threads=nt)
                        ge, gwe, gbe = F.batch_norm_backward(
                            g, x, w, None, None, training=False, running_mean=rm,
                            running_var=rv, n_threads=nt)
                        for name, a in dict(y=y, mean=mean, invstd=invstd, rm=rm, rv=rv, gi=gi,
                                            gw=gw, gb=gb, ye=ye, ge=ge, gwe=gwe,
                                            gbe=gbe).items():
                            results[f"{key}-{name}"] = a
    return results


def same_but_nan_bits(a, b):
    """Bitwise equal, except that a NaN may carry another sign or payload (README: which
    NaN propagates when NaNs meet depends on operand order, chosen per build)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.tobytes() == b.tobytes():
        return True
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return np.array_equal(nan_a, nan_b) and a[~nan_a].tobytes() == b[~nan_b].tobytes()


# Batch norm fused with ReLU (and residual add + ReLU): one shape per walk, the kinds
# whose outputs sit on the threshold (constant channels give exactly `bias`, chosen 0)
FUSED_SHAPES = [(64, 3), (130, 1030), (4096, 17), (5, 3, 7), (9, 2, 63), (17, 3, 224),
                (3, 8, 9000)]
FUSED_KINDS = ("randn", "constant", "tiny", "nonfinite")


def fused_results(F, shapes=FUSED_SHAPES, seed=20261208):
    """{key: array} of fused training and evaluation forwards and backwards, with and
    without a residual, for every shape, dtype, kind and thread count."""
    rng = np.random.default_rng(seed)
    results = {}
    for si, shape in enumerate(shapes):
        C = shape[1]
        for dt in (np.float32, np.float64):
            for kind in FUSED_KINDS:
                x = data(rng, shape, dt, kind)
                g = rng.standard_normal(shape).astype(dt)
                r = rng.standard_normal(shape).astype(dt)
                w = rng.uniform(0.5, 2, C).astype(dt)
                b = rng.standard_normal(C).astype(dt)
                b[::2] = 0
                for nt in (1, 2):
                    for res in (None, r):
                        key = f"relu-{si}-{np.dtype(dt).name}-{kind}-{nt}-{res is not None}"
                        rm = np.zeros(C, dt)
                        rv = np.ones(C, dt)
                        y, mean, invstd = F.batch_norm_forward(
                            x, w, b, rm, rv, True, 0.1, 1e-5, n_threads=nt,
                            activation="relu", residual=res)
                        grads = F.batch_norm_backward(
                            g, x, w, mean, invstd, n_threads=nt, activation="relu",
                            residual=res, bias=b)
                        ye = F.batch_norm(x, rm, rv, w, b, training=False, n_threads=nt,
                                          activation="relu", residual=res)
                        grads_e = F.batch_norm_backward(
                            g, x, w, None, None, training=False, running_mean=rm,
                            running_var=rv, n_threads=nt, activation="relu", residual=res,
                            bias=b)
                        out = {"y": y, "ye": ye}
                        for name, a in zip(("gi", "gw", "gb", "gr"), grads):
                            out[name] = a
                        for name, a in zip(("gie", "gwe", "gbe", "gre"), grads_e):
                            out[name] = a
                        for name, a in out.items():
                            results[f"{key}-{name}"] = a
    return results
