"""Bitwise comparison of two cybn builds over the test suite's kernel inputs.

    python benchmarks/compare_builds.py --build-old REV   # builds REV as cybn_old
    python tools/compare_results.py                       # installed cybn vs cybn_old

A restructuring must not change one result bit. This runs the inputs of tests/_battery.py,
as tests/test_kernel_builds.py does (every schedule, remainder and fallback of the kernels:
random, offset, constant, tiny, huge and non-finite data, float32/float64 data and
parameters, 1 and 2 threads), through the functional API, the modules (1d/2d, channels
last, float16, momentum None, evaluation) and the legacy adapters of both builds in one
process, and reports every array that differs. NaNs may differ in sign or payload only
(which NaN propagates when NaNs meet depends on operand order; see README).
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks", ".old"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from _battery import SHAPES, data, functional_results, same_but_nan_bits  # noqa: E402

# the suite's shapes plus the benchmark's short runs (COLUMNS with 1 < L < 64)
EXTRA_SHAPES = [(16384, 64, 4), (64, 16, 49)]


def battery(pkg):
    out = functional_results(pkg.functional, SHAPES + EXTRA_SHAPES, seed=20261206)
    rng = np.random.default_rng(20261206)
    # modules: 1d/2d, channels last, float16 state, cumulative momentum, train then eval
    for mi, (cls, shape, kw) in enumerate([
            ("BatchNorm1d", (64, 24), {}), ("BatchNorm1d", (8, 24, 50), {"momentum": None}),
            ("BatchNorm2d", (4, 6, 9, 9), {"dtype": np.float64}),
            ("BatchNorm2d", (4, 9, 9, 6), {"axis": -1}),
            ("BatchNorm1d", (32, 10), {"dtype": np.float16}),
            ("BatchNorm1d", (32, 10), {"affine": False}),
            ("BatchNorm1d", (32, 10), {"track_running_stats": False})]):
        m = getattr(pkg, cls)(shape[kw.get("axis", 1)], **kw)
        for step in range(3):
            x = data(rng, shape, np.float32, "offset" if step else "randn")
            g = rng.standard_normal(shape).astype(np.float32)
            m.train(step < 2)
            out[f"M{mi}-{step}-y"] = m(x)
            out[f"M{mi}-{step}-gi"] = m.backward(g)
            for k, v in m.state_dict().items():
                out[f"M{mi}-{step}-{k}"] = np.array(v)
            for k in ("grad_weight", "grad_bias"):
                if getattr(m, k) is not None:
                    out[f"M{mi}-{step}-{k}"] = getattr(m, k)
    # the legacy adapters
    cs = pkg.compat.cs231n
    for ci, (shape, dt) in enumerate([((50, 100), np.float64), ((50, 100), np.float32),
                                      ((8, 3, 5, 5), np.float64)]):
        x = data(rng, shape, dt, "offset")
        g = rng.standard_normal(shape).astype(dt)
        C = shape[1]
        gamma, beta = rng.uniform(0.5, 2, C).astype(dt), rng.standard_normal(C).astype(dt)
        spatial = len(shape) == 4
        fwd = cs.spatial_batchnorm_forward if spatial else cs.batchnorm_forward
        bwd = cs.spatial_batchnorm_backward if spatial else cs.batchnorm_backward
        p = {"mode": "train"}
        y, cache = fwd(x, gamma, beta, p)
        dx, dg, db = bwd(g, cache)
        p["mode"] = "test"
        yt, _ = fwd(x, gamma, beta, p)
        for k, v in dict(y=y, dx=dx, dg=dg, db=db, yt=yt, rm=p["running_mean"],
                         rv=p["running_var"]).items():
            out[f"C{ci}-{k}"] = v
    layer = pkg.compat.dlfs.BatchNormalization(np.ones(20), np.zeros(20))
    x = data(rng, (30, 20), np.float64, "offset")
    out["D-y"] = layer.forward(x)
    out["D-dx"] = layer.backward(np.ones_like(x))
    out["D-yt"] = layer.forward(x, train_flg=False)
    return out


def main():
    import cybn
    import cybn_old
    new, old = battery(cybn), battery(cybn_old)
    assert new.keys() == old.keys()
    bad = [k for k in new if not same_but_nan_bits(np.asarray(new[k]), np.asarray(old[k]))]
    print(f"{len(new)} arrays compared, {len(bad)} differ (new build: "
          f"{cybn._backend.kernels.__name__})")
    for k in bad[:40]:
        print("  differs:", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
