"""Bitwise comparison of two cybn builds over the test suite's kernel inputs.

    python benchmarks/compare_builds.py --build-old REV   # builds REV as cybn_old
    python tools/compare_results.py                       # installed cybn vs cybn_old

A restructuring must not change one result bit. This runs the inputs of
tests/test_kernel_builds.py (every schedule, remainder and fallback of the kernels:
random, offset, constant, tiny, huge and non-finite data, float32/float64 data and
parameters, 1 and 2 threads) through the functional API, the modules (1d/2d, channels
last, float16, momentum None, evaluation) and the legacy adapters of both builds in one
process, and reports every array that differs. NaNs may differ in sign or payload only
(which NaN propagates when NaNs meet depends on operand order; see README).
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks", ".old"))

SHAPES = [(7, 5), (64, 3), (33, 1024), (130, 1030), (300, 40), (4096, 17), (3, 2, 1),
          (5, 3, 7), (4, 3, 16), (9, 2, 63), (6, 4, 64), (5, 3, 65), (17, 3, 224),
          (2, 9, 1000), (3, 8, 9000), (1, 2, 70000), (16384, 64, 4), (64, 16, 49)]
KINDS = ("randn", "offset", "constant", "tiny", "huge", "nonfinite", "nanmix")


def data(rng, shape, dt, kind):
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
    elif kind == "nanmix":
        x.flat[0] = np.nan
        x.flat[x.size // 2] = -np.nan
        x.flat[-1] = -np.nan
        x[-1, 0] = -np.nan
    return x.astype(dt)


def battery(pkg):
    F = pkg.functional
    rng = np.random.default_rng(20261206)
    out = {}
    for si, shape in enumerate(SHAPES):
        C = shape[1]
        for dt in (np.float32, np.float64):
            for pdt in (np.float32, np.float64):
                for kind in KINDS:
                    x = data(rng, shape, dt, kind)
                    g = rng.standard_normal(shape).astype(dt)
                    w = rng.uniform(0.5, 2, C).astype(pdt)
                    b = rng.standard_normal(C).astype(pdt)
                    for nt in (1, 2):
                        key = f"F{si}-{np.dtype(dt).name}-{np.dtype(pdt).name}-{kind}-{nt}"
                        rm, rv = np.zeros(C, pdt), np.ones(C, pdt)
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
                            out[f"{key}-{name}"] = a
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


def same(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.tobytes() == b.tobytes():
        return True
    na, nb = np.isnan(a), np.isnan(b)
    return np.array_equal(na, nb) and a[~na].tobytes() == b[~nb].tobytes()


def main():
    import cybn
    import cybn_old
    new, old = battery(cybn), battery(cybn_old)
    assert new.keys() == old.keys()
    bad = [k for k in new if not same(np.asarray(new[k]), np.asarray(old[k]))]
    print(f"{len(new)} arrays compared, {len(bad)} differ (new build: "
          f"{cybn._backend.kernels.__name__})")
    for k in bad[:40]:
        print("  differs:", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
