"""Per-call time of cybn.compat's entry points against the legacy NumPy code they replace.

    python benchmarks/legacy.py                 # full run (about a minute)
    python benchmarks/legacy.py --quick         # fewer rounds
    python benchmarks/legacy.py --markdown      # the table for docs/benchmarks.md

Legacy nets call batch norm on small arrays, where per-call overhead decides. For each
case it times, side by side in one process, round-robin (the starting candidate rotates),
the garbage collector off, medians of R rounds of batched calls:

* **cybn** -- ``cybn.compat`` (cs231n functions, the book's ``BatchNormalization``);
* **NumPy** -- the convention written in plain NumPy: the example packages in
  ``examples/legacy_cs231n`` (handout-style forward, graph ``batchnorm_backward``,
  closed-form ``batchnorm_backward_alt``, spatial via the handout's transpose) and
  ``examples/legacy_dlfs`` (the book's layer);
* **torch** -- ``torch.ops.aten.native_batch_norm`` and ``native_batch_norm_backward`` on
  CPU (when installed; 1 thread like the others), the same arithmetic without Python
  bookkeeping.

Each case is checked first: cybn against the NumPy convention (float64: 1e-10 relative
to the largest magnitude; float32: 1e-4). Ratios are NumPy / cybn and torch / cybn
(> 1: cybn is faster); the target of the legacy issue is NumPy / cybn >= 4 for the
(50, 100) forward+backward in float64.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
sys.path.insert(0, HERE)  # _timing, also under `python -P`
sys.path.insert(0, os.path.join(EXAMPLES, "legacy_cs231n"))
sys.path.insert(0, os.path.join(EXAMPLES, "legacy_dlfs"))

from _timing import medians  # noqa: E402

import cybn  # noqa: E402
import cybn.compat as CP  # noqa: E402
from common import layers as book  # noqa: E402
from cs231n import layers as legacy  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional here
    torch = None

def _check(got, ref, dtype, what):
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for g, r in zip(got, ref):
        scale = max(1.0, float(np.abs(r).max()))
        err = float(np.abs(np.asarray(g, np.float64) - r).max()) / scale
        if not err <= tol:
            raise AssertionError(f"{what}: cybn differs from the NumPy convention by {err:.2e}")


def _torch_pair(x, gamma, beta, dout):
    if torch is None:
        return None
    tx, tg, tb, td = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, gamma, beta, dout))

    def fwd_bwd():
        out, mean, invstd = torch.ops.aten.native_batch_norm(tx, tg, tb, None, None, True,
                                                             0.1, 1e-5)
        return torch.ops.aten.native_batch_norm_backward(td, tx, tg, None, None, mean, invstd,
                                                         True, 1e-5, [True, True, True])

    def fwd():
        return torch.ops.aten.native_batch_norm(tx, tg, tb, None, None, True, 0.1, 1e-5)

    return fwd, fwd_bwd


def cs231n_cases(shape, dtype, rng):
    spatial = len(shape) == 4
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    if spatial:
        pairs = {"spatial fwd+bwd": (legacy.spatial_batchnorm_forward,
                                     legacy.spatial_batchnorm_backward,
                                     CP.spatial_batchnorm_forward,
                                     CP.spatial_batchnorm_backward)}
    else:
        pairs = {"fwd+bwd (graph)": (legacy.batchnorm_forward, legacy.batchnorm_backward,
                                     CP.batchnorm_forward, CP.batchnorm_backward),
                 "fwd+bwd_alt": (legacy.batchnorm_forward, legacy.batchnorm_backward_alt,
                                 CP.batchnorm_forward, CP.batchnorm_backward_alt)}
    cases = []
    lf = pairs[next(iter(pairs))][0]
    cf = pairs[next(iter(pairs))][2]
    _check(cf(x, gamma, beta, {"mode": "train"})[:1], lf(x, gamma, beta, {"mode": "train"})[:1],
           dtype, "forward")
    tpair = _torch_pair(x, gamma, beta, dout)
    fns = {"numpy": lambda: lf(x, gamma, beta, {"mode": "train"}),
           "cybn": lambda: cf(x, gamma, beta, {"mode": "train"})}
    if tpair:
        fns["torch"] = tpair[0]
    cases.append(("train forward", fns))
    for label, (lf, lb, cf, cb) in pairs.items():
        _, lc = lf(x, gamma, beta, {"mode": "train"})
        _, cc = cf(x, gamma, beta, {"mode": "train"})
        _check(cb(dout, cc), lb(dout, lc), dtype, label)
        fns = {"numpy": lambda lf=lf, lb=lb: lb(dout, lf(x, gamma, beta, {"mode": "train"})[1]),
               "cybn": lambda cf=cf, cb=cb: cb(dout, cf(x, gamma, beta, {"mode": "train"})[1])}
        if tpair:
            fns["torch"] = tpair[1]
        cases.append((label, fns))
    p = {"mode": "test", "running_mean": gamma * 0.1, "running_var": gamma}
    fns = {"numpy": lambda: lf(x, gamma, beta, dict(p)), "cybn": lambda: cf(x, gamma, beta, dict(p))}
    cases.append(("test forward", fns))
    return cases


def book_cases(shape, dtype, rng):
    D = int(np.prod(shape[1:]))
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, D).astype(dtype)
    beta = rng.standard_normal(D).astype(dtype)
    ours, theirs = CP.BatchNormalization(gamma, beta), book.BatchNormalization(gamma, beta)
    _check([ours.forward(x), ours.backward(dout)], [theirs.forward(x), theirs.backward(dout)],
           dtype, "book layer")

    def step(layer):
        layer.forward(x)
        return layer.backward(dout)

    fns = {"numpy": lambda: step(theirs), "cybn": lambda: step(ours)}
    return [("layer fwd+bwd", fns),
            ("layer test forward", {"numpy": lambda: theirs.forward(x, False),
                                    "cybn": lambda: ours.forward(x, False)})]


CASES = [
    ("cs231n", (50, 100), cs231n_cases),
    ("cs231n", (200, 500), cs231n_cases),
    ("cs231n", (64, 16, 16, 16), cs231n_cases),
    ("dlfs", (50, 100), book_cases),
    ("dlfs", (100, 16, 8, 8), book_cases),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="7 rounds instead of 21")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--dtypes", default="float64,float32")
    args = parser.parse_args(argv)
    rounds = 7 if args.quick else 21
    cybn.set_num_threads(1)  # legacy NumPy is single-threaded; so is this comparison
    if torch is not None:
        torch.set_num_threads(1)
    rng = np.random.default_rng(20261206)
    rows = []
    for conv, shape, make in CASES:
        for dt in args.dtypes.split(","):
            for label, fns in make(shape, np.dtype(dt).type, rng):
                med = medians(fns, rounds)
                rows.append((conv, shape, dt, label, med))
                if not args.markdown:
                    extra = (f" torch {med['torch'] / 1e3:8.1f} us ({med['torch'] / med['cybn']:.2f}x)"
                             if "torch" in med else "")
                    print(f"{conv:6} {str(shape):17} {dt:7} {label:18} numpy "
                          f"{med['numpy'] / 1e3:8.1f} us  cybn {med['cybn'] / 1e3:7.1f} us  "
                          f"NumPy/cybn {med['numpy'] / med['cybn']:5.2f}x{extra}", flush=True)
    if args.markdown:
        print("| convention | shape | dtype | call | NumPy µs | cybn µs | torch µs "
              "| NumPy / cybn | torch / cybn |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|")
        for conv, shape, dt, label, med in rows:
            t, c = med.get("torch"), med["cybn"]
            t_us = "" if t is None else f"{t / 1e3:.1f}"
            t_ratio = "" if t is None else f"{t / c:.2f}"
            print(f"| {conv} | {shape} | {dt} | {label} | {med['numpy'] / 1e3:.1f} | "
                  f"{c / 1e3:.1f} | {t_us} | {med['numpy'] / c:.2f} | {t_ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
