"""Benchmark cybn on this machine: ``python benchmarks/compare.py`` (``--help`` for the options).

Run from a checkout against the installed cybn (the script's directory, not the checkout root,
is first on sys.path, so the checkout's uncompiled ``cybn/`` does not shadow the install).
Formerly ``python -m cybn.bench``: the benchmark is not part of the installed package.

For each shape, dtype, thread count and op (training forward, backward with all three
gradients, evaluation forward) it times, side by side in one process:

* **cybn** -- ``cybn.functional.batch_norm_forward`` / ``batch_norm_backward``;
* **torch** -- ``torch.nn.functional.batch_norm`` and ``torch.ops.aten.native_batch_norm_backward``
  on CPU (when PyTorch is installed, unless ``--no-torch``);
* **NumPy** -- a plain vectorised implementation (:func:`numpy_forward_train`,
  :func:`numpy_backward`, :func:`numpy_forward_eval`), single-threaded;
* **SoL** ("speed of light") -- streaming loops (``_sol``: benchmarks/_sol.pyx, compiled on
  first use into benchmarks/.build/ by build_sol.py with the kernels' flags) that move the
  op's two-pass memory traffic into a fresh NumPy output: training forward 2 reads + 1
  write, backward 4 reads + 1 write, evaluation 1 read + 1 write.

Method
------
Every (shape, dtype, threads) case runs in a fresh child process (``compare.main(["--child",
JSON])``, see _CHILD_BOOT; ``python benchmarks/compare.py --child JSON`` runs one case by
hand), so that no case inherits another's heap. In the child, inputs are built
once from a fixed seed; every candidate is checked against a float64 NumPy reference
(relative to max|reference|: 1e-4 for float32, 1e-9 for float64; failures are flagged in
the table), warmed up, and then the candidates are timed round-robin (the starting
candidate rotates) for R rounds with ``time.perf_counter_ns``, the garbage collector off.
Calls faster than about 30 us are timed in batches and divided. Reported: the median per
call and the spread (interquartile range / median). Ratios are ratios of medians within
one child process, so they are much more stable than absolute times on a busy machine.

cybn gets the thread count through ``n_threads=``, torch through ``torch.set_num_threads``,
the SoL loops through their own argument (with more than 1 thread, the SoL is the faster of
1 thread and that many threads).
NumPy is single-threaded for these ops.

The targets the report checks at the end are the table under "## Targets" in
docs/benchmarks.md (read at run time, see load_targets), not constants of this script.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks.md")
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # build_sol, also when this file is imported as a module

OPS = ("fwd_train", "bwd", "fwd_eval")
OP_ALIASES = {"train": "fwd_train", "fwd": "fwd_train", "backward": "bwd", "eval": "fwd_eval"}
# What the speed-of-light loops move, per op (reads, writes of one input-sized array).
OP_TRAFFIC = {"fwd_train": "2R+1W", "bwd": "4R+1W", "fwd_eval": "1R+1W"}
CANDIDATES = ("cybn", "torch", "numpy", "sol")
LABELS = {"cybn": "cybn", "torch": "torch", "numpy": "NumPy", "sol": "SoL",
          "module": "cybn module", "module_out": "cybn module, out="}

# The kernels pick one of three schedules from the (N, C, L) view (2-D input: L = 1):
# "columns" for L < 64, "runs" for L >= 64, "channel slab" for C >= 8 with L * itemsize
# >= 32 KiB and N * L * itemsize <= 1 MiB (cybn/_kernels_impl.pxi). Every one is timed:
DEFAULT_SHAPES = (
    (2, 3),             # columns, L = 1: per-call overhead
    (32, 64),           # columns, L = 1
    (256, 512),         # columns, L = 1
    (4096, 1024),       # columns, L = 1: 16 MiB float32
    (65536, 256),       # columns, L = 1: tall and narrow
    (16384, 64, 4),     # columns, 1 < L < 64: short runs (16 MiB float32)
    (2048, 32, 49),     # columns, 1 < L < 64: a 7x7 feature map
    (64, 256, 1024),    # runs: L >= 64, slab too large (N * L * itemsize > 1 MiB)
    (8, 64, 16384),     # channel slab (float32 and float64)
    (1024, 3, 224),     # runs: C < 8, no slab
)
# every schedule at least once
QUICK_SHAPES = ((32, 64), (256, 512), (4096, 1024), (2048, 32, 49), (8, 64, 16384),
                (1024, 3, 224))
DEFAULT_DTYPES = ("float32", "float64")
QUICK_DTYPES = ("float32",)

MOMENTUM = 0.1
EPS = 1e-5
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
SEED = 20240607
# A timed sample is a batch of calls lasting at least this long.
BATCH_NS = 30_000
RESULT_TAG = "CYBN-BENCH-RESULT "

# (budget per op and case in s, minimum rounds, maximum rounds, warm-up s per candidate)
PROFILES = {"full": (0.4, 7, 300, 0.05), "quick": (0.08, 5, 60, 0.02)}


# =======================================================================================
# The NumPy reference: plain vectorised NumPy, also the float64 oracle of the checks.

def _axes(x):
    """Reduction axes: every axis but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def _bshape(x):
    """Shape that broadcasts a (C,) array against x along axis 1."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def numpy_forward_train(x, w, b, running_mean, running_var, momentum=MOMENTUM, eps=EPS):
    """Training forward; updates the running statistics in place (unbiased variance).

    Returns (y, mean, invstd).
    """
    axes, s = _axes(x), _bshape(x)
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(s)
    var = (xc * xc).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = xc * (invstd * w).reshape(s) + b.reshape(s)
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (n / (n - 1))
    return y, mean, invstd


def numpy_backward(dy, x, w, mean, invstd):
    """Backward through the batch statistics. Returns (dx, dw, db)."""
    axes, s = _axes(x), _bshape(x)
    n = x.size // x.shape[1]
    xhat = (x - mean.reshape(s)) * invstd.reshape(s)
    db = dy.sum(axis=axes)
    dw = (dy * xhat).sum(axis=axes)
    dx = (dy - (db / n).reshape(s) - xhat * (dw / n).reshape(s)) * (w * invstd).reshape(s)
    return dx, dw, db


def numpy_forward_eval(x, w, b, running_mean, running_var, eps=EPS):
    """Evaluation forward with the running statistics."""
    s = _bshape(x)
    return (x - running_mean.reshape(s)) * (w / np.sqrt(running_var + eps)).reshape(s) \
        + b.reshape(s)


# =======================================================================================
# Child process: one (shape, dtype, threads) case

def _rel_err(got, ref, floor=0.0):
    """max|got - ref| / max(max|ref|, floor) (inf for a shape mismatch or NaN)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    err = float(np.max(np.abs(got - ref)))
    scale = max(float(np.max(np.abs(ref))), floor)
    if math.isnan(err):
        return math.inf
    return err / scale if scale > 0 else err


def _worst_err(got: dict, ref: dict, floors: dict):
    return max(_rel_err(got[k], ref[k], floors.get(k, 0.0)) for k in got)


class _Case:
    """Inputs and candidates of one (shape, dtype, threads) case."""

    def __init__(self, spec):
        self.shape = tuple(spec["shape"])
        self.dtype = np.dtype(spec["dtype"])
        self.t = int(spec["threads"])
        self.use_torch = spec["torch"]
        self.use_numpy = spec["numpy"]
        self.use_sol = spec.get("sol", True)
        self.ops = spec["ops"]
        rng = np.random.default_rng(SEED)
        dt = self.dtype
        C = self.shape[1]
        s = (1, C) + (1,) * (len(self.shape) - 2)
        x = rng.standard_normal(self.shape, dtype=dt)
        x *= dt.type(2)
        x += rng.uniform(-1, 1, C).astype(dt).reshape(s)
        self.x = x
        self.dy = rng.standard_normal(self.shape, dtype=dt) if "bwd" in self.ops else None
        self.w = rng.uniform(0.5, 1.5, C).astype(dt)
        self.b = rng.standard_normal(C).astype(dt)
        # running statistics for evaluation: plausible, not the identity
        self.rm_eval = (rng.uniform(-1, 1, C) * 0.5).astype(dt)
        self.rv_eval = rng.uniform(2, 6, C).astype(dt)
        self.tol = TOLERANCE[self.dtype.name]

    # -- float64 reference -------------------------------------------------------------

    def reference(self, op):
        """Float64 results of the op, and the error scale floors of the outputs.

        Errors are relative to max|reference|, but not less than the magnitude of the terms
        an output is computed from where it may cancel to (almost) zero: dx (exactly 0 for
        two values per channel) against max|dy| * max|w * invstd|, the means against
        mean|x|.
        """
        f64 = np.float64
        x = self.x.astype(f64)
        w, b = self.w.astype(f64), self.b.astype(f64)
        C = x.shape[1]
        if op == "fwd_train":
            rm, rv = np.zeros(C), np.ones(C)
            y, mean, invstd = numpy_forward_train(x, w, b, rm, rv)
            xmag = float(np.mean(np.abs(x)))
            return ({"y": y, "running_mean": rm, "running_var": rv, "mean": mean,
                     "invstd": invstd},
                    {"mean": xmag, "running_mean": MOMENTUM * xmag})
        if op == "bwd":
            _, mean, invstd = numpy_forward_train(x, w, b, np.zeros(C), np.ones(C))
            dy = self.dy.astype(f64)
            dx, dw, db = numpy_backward(dy, x, w, mean, invstd)
            return ({"dx": dx, "dw": dw, "db": db},
                    {"dx": float(np.max(np.abs(dy)) * np.max(np.abs(w * invstd)))})
        y = numpy_forward_eval(x, w, b, self.rm_eval.astype(f64), self.rv_eval.astype(f64))
        return {"y": y}, {}

    # -- candidates: each returns (timed callable, check callable -> dict of results) ---

    def cybn(self, op):
        from cybn import functional as F
        x, w, b, t = self.x, self.w, self.b, self.t
        C = x.shape[1]
        if op == "fwd_train":
            rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)

            def check():
                rm1, rv1 = np.zeros(C, x.dtype), np.ones(C, x.dtype)
                y, mean, invstd = F.batch_norm_forward(x, w, b, rm1, rv1, True, MOMENTUM,
                                                       EPS, n_threads=t)
                return {"y": y, "running_mean": rm1, "running_var": rv1, "mean": mean,
                        "invstd": invstd}
            return (lambda: F.batch_norm_forward(x, w, b, rm, rv, True, MOMENTUM, EPS,
                                                 n_threads=t)), check
        if op == "bwd":
            _, sm, si = F.batch_norm_forward(x, w, b, None, None, True, MOMENTUM, EPS,
                                             n_threads=t)
            dy = self.dy

            def run():
                return F.batch_norm_backward(dy, x, w, sm, si, training=True, n_threads=t)

            def check():
                return dict(zip(("dx", "dw", "db"), run()))
            return run, check
        rm, rv = self.rm_eval, self.rv_eval

        def run():
            return F.batch_norm_forward(x, w, b, rm, rv, False, MOMENTUM, EPS, n_threads=t)
        return run, lambda: {"y": run()[0]}

    def module(self, op, out=False):
        """cybn.BatchNorm1d (all the benchmark's shapes are 2-D or 3-D): the functional
        call plus the module's state handling; with ``out``, into buffers the caller
        reuses (``forward(x, out=)``, ``backward(dy, out=)``), as a training loop would."""
        import cybn
        x, w, b, t = self.x, self.w, self.b, self.t
        C = x.shape[1]

        def make(training):
            m = cybn.BatchNorm1d(C, momentum=MOMENTUM, eps=EPS, dtype=x.dtype, n_threads=t)
            m.weight[...] = w
            m.bias[...] = b
            if not training:
                m.running_mean[...] = self.rm_eval
                m.running_var[...] = self.rv_eval
            return m.train(training)

        buf = np.empty_like(x) if out else None
        if op == "fwd_train":
            m = make(True)

            def check():
                m1 = make(True)
                y = m1(x, out=np.empty_like(x) if out else None)
                return {"y": y, "running_mean": m1.running_mean, "running_var": m1.running_var}
            return (lambda: m(x, out=buf)), check
        if op == "bwd":
            m = make(True)
            m(x)
            dy = self.dy

            def run():
                return m.backward(dy, out=buf)

            def check():
                return {"dx": run(), "dw": m.grad_weight, "db": m.grad_bias}
            return run, check
        m = make(False)
        return (lambda: m(x, out=buf)), (lambda: {"y": m(x, out=buf)})

    def module_out(self, op):
        return self.module(op, out=True)

    def numpy(self, op):
        x, w, b = self.x, self.w, self.b
        C = x.shape[1]
        if op == "fwd_train":
            rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)

            def check():
                rm1, rv1 = np.zeros(C, x.dtype), np.ones(C, x.dtype)
                y, mean, invstd = numpy_forward_train(x, w, b, rm1, rv1)
                return {"y": y, "running_mean": rm1, "running_var": rv1, "mean": mean,
                        "invstd": invstd}
            return (lambda: numpy_forward_train(x, w, b, rm, rv)), check
        if op == "bwd":
            _, mean, invstd = numpy_forward_train(x, w, b, np.zeros(C, x.dtype),
                                                  np.ones(C, x.dtype))
            dy = self.dy

            def run():
                return numpy_backward(dy, x, w, mean, invstd)
            return run, lambda: dict(zip(("dx", "dw", "db"), run()))
        rm, rv = self.rm_eval, self.rv_eval

        def run():
            return numpy_forward_eval(x, w, b, rm, rv)
        return run, lambda: {"y": run()}

    def torch(self, op):
        import torch
        import torch.nn.functional as tF
        xt = torch.from_numpy(self.x)
        wt, bt = torch.from_numpy(self.w), torch.from_numpy(self.b)
        C = self.x.shape[1]
        dt = xt.dtype
        if op == "fwd_train":
            rm, rv = torch.zeros(C, dtype=dt), torch.ones(C, dtype=dt)

            def check():
                rm1, rv1 = torch.zeros(C, dtype=dt), torch.ones(C, dtype=dt)
                y = tF.batch_norm(xt, rm1, rv1, wt, bt, True, MOMENTUM, EPS)
                _, mean, invstd = torch.ops.aten.native_batch_norm(
                    xt, wt, bt, None, None, True, MOMENTUM, EPS)
                return {"y": y.numpy(), "running_mean": rm1.numpy(),
                        "running_var": rv1.numpy(), "mean": mean.numpy(),
                        "invstd": invstd.numpy()}
            return (lambda: tF.batch_norm(xt, rm, rv, wt, bt, True, MOMENTUM, EPS)), check
        if op == "bwd":
            rm, rv = torch.zeros(C, dtype=dt), torch.ones(C, dtype=dt)
            _, sm, si = torch.ops.aten.native_batch_norm(xt, wt, bt, rm, rv, True,
                                                         MOMENTUM, EPS)
            dyt = torch.from_numpy(self.dy)
            bwd = torch.ops.aten.native_batch_norm_backward
            mask = [True, True, True]

            def run():
                return bwd(dyt, xt, wt, rm, rv, sm, si, True, EPS, mask)

            def check():
                return {k: v.numpy() for k, v in zip(("dx", "dw", "db"), run())}
            return run, check
        rm, rv = torch.from_numpy(self.rm_eval), torch.from_numpy(self.rv_eval)

        def run():
            return tF.batch_norm(xt, rm, rv, wt, bt, False, MOMENTUM, EPS)
        return run, lambda: {"y": run().numpy()}

    def sol(self, op, threads=None):
        import _sol  # benchmarks/.build (build_sol.py), on sys.path in parent and child
        t = self.t if threads is None else threads
        cname = "float" if self.dtype == np.float32 else "double"
        x = self.x
        xf = x.reshape(-1)
        empty_like = np.empty_like
        if op == "fwd_train":
            kernel = _sol.stream_fwd_train.__signatures__[cname]

            def run():
                out = empty_like(x)
                kernel(xf, out.reshape(-1), t)
                return out
        elif op == "bwd":
            kernel = _sol.stream_bwd.__signatures__[cname]
            dyf = self.dy.reshape(-1)

            def run():
                out = empty_like(x)
                kernel(dyf, xf, out.reshape(-1), t)
                return out
        else:
            kernel = _sol.stream_eval.__signatures__[cname]

            def run():
                out = empty_like(x)
                kernel(xf, out.reshape(-1), 2.0, 1.0, t)
                return out
        return run, None

    def candidates(self, op):
        names = ["cybn", "module", "module_out"]
        if self.use_torch:
            names.append("torch")
        if self.use_numpy:
            names.append("numpy")
        out = [(name, getattr(self, name)) for name in names]
        if not self.use_sol:
            return out
        out.append(("sol", self.sol))
        if self.t > 1:
            # the SoL is the faster of 1 thread and t threads (small arrays do not pay for a
            # thread team; on a busy machine a team may wait for a descheduled thread)
            out.append(("sol_1t", lambda op: self.sol(op, threads=1)))
        return out


def _time_batch(fn, k):
    t0 = time.perf_counter_ns()
    for _ in range(k):
        fn()
    return (time.perf_counter_ns() - t0) / k


def _measure(fns, profile, repeat):
    """Warm up, then time the callables round-robin. Returns {name: stats}."""
    budget, min_rounds, max_rounds, warm_s = profile
    if not fns:
        return {}
    est, batch = {}, {}
    for name, fn in fns.items():
        times = []
        t_end = time.perf_counter() + warm_s
        while not times or (time.perf_counter() < t_end and len(times) < 200):
            times.append(_time_batch(fn, 1))
        est[name] = max(min(times), 1.0)
        batch[name] = max(1, math.ceil(BATCH_NS / est[name]))
    if repeat:
        rounds = repeat
    else:
        round_ns = sum(est[n] * batch[n] for n in fns)
        rounds = int(budget * 1e9 / round_ns)
        rounds = min(max(rounds, min_rounds), max_rounds)
    names = list(fns)
    samples = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            samples[name].append(_time_batch(fns[name], batch[name]))
    out = {}
    for name in names:
        q1, med, q3 = np.percentile(samples[name], [25, 50, 75])
        out[name] = {"median_ns": float(med), "q1_ns": float(q1), "q3_ns": float(q3),
                     "min_ns": float(min(samples[name])), "rounds": rounds,
                     "batch": batch[name]}
    return out


def _environment(use_torch):
    info = {}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "prefix", "filepath",
                                   "version", "num_threads", "threading_layer",
                                   "architecture")}
            for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = None
    import cybn
    info["cybn_file"] = os.path.dirname(cybn.__file__)
    if use_torch:
        import torch
        info["torch"] = torch.__version__
        try:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:  # noqa: BLE001 - informational only
            info["torch_cpu_capability"] = None
    return info


def run_child(spec):
    """Run one case; returns a JSON-serialisable dict."""
    t_start = time.perf_counter()
    if spec["torch"]:
        import torch
        torch.set_num_threads(int(spec["threads"]))
        torch.set_grad_enabled(False)
    case = _Case(spec)
    profile = PROFILES[spec["profile"]]
    result = {"spec": spec, "ops": {}}
    for op in case.ops:
        try:
            ref, floors = case.reference(op)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result["ops"][op] = {"reference": {"error": f"{type(exc).__name__}: {exc}"}}
            continue
        fns, checks = {}, {}
        for name, make in case.candidates(op):
            try:
                run, check = make(op)
                if check is not None:
                    err = _worst_err(check(), ref, floors)
                    checks[name] = {"err": err, "ok": err <= case.tol}
                else:
                    run()
                fns[name] = run
            except Exception as exc:  # noqa: BLE001 - reported in the table
                checks[name] = {"err": None, "ok": False,
                                "error": f"{type(exc).__name__}: {exc}"}
        del ref, floors
        gc.collect()
        gc.disable()
        try:
            timings = _measure(fns, profile, spec.get("repeat"))
        finally:
            gc.enable()
        for name, chk in checks.items():
            timings.setdefault(name, {}).update(chk)
        result["ops"][op] = timings
    result["env"] = _environment(spec["torch"])
    result["wall_s"] = time.perf_counter() - t_start
    return result


# =======================================================================================
# Parent: plan, spawn, report

def _fmt_time(ns):
    if ns is None or not math.isfinite(ns):
        return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            v = ns / scale
            break
    else:
        unit, v = "ns", ns
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def _fmt_ratio(r):
    if r is None or not math.isfinite(r):
        return "—"
    return f"{r:.2f}" if r < 10 else f"{r:.1f}"


def _fmt_bytes(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n} B"


def _fmt_shape(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _parse_shapes(text):
    shapes = []
    for part in text.replace(";", " ").replace(" ", ",").split(","):
        part = part.strip().strip("()[]")
        if not part:
            continue
        if part in ("default", "all"):
            shapes.extend(DEFAULT_SHAPES)
            continue
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise argparse.ArgumentTypeError(
                f"shape {part!r}: expected NxC or NxCxL with positive sizes")
        if math.prod(dims) // dims[1] < 2:
            raise argparse.ArgumentTypeError(
                f"shape {part!r}: training needs more than 1 value per channel (N * L >= 2)")
        shapes.append(dims)
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def _parse_list(allowed, aliases=None):
    def parse(text):
        items = []
        for item in text.split(","):
            item = item.strip().lower()
            if not item:
                continue
            item = (aliases or {}).get(item, item)
            if item not in allowed:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not one of {', '.join(allowed)}")
            if item not in items:
                items.append(item)
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items
    return parse


def _parse_threads(text):
    items = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("all", "max"):
            items.append("all")
            continue
        try:
            n = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"thread count {item!r}: expected a positive int or 'all'") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"thread count must be >= 1, got {n}")
        items.append(n)
    if not items:
        raise argparse.ArgumentTypeError("no thread counts given")
    return items


def _build_parser():
    p = argparse.ArgumentParser(
        prog="python benchmarks/compare.py",
        description="Time cybn's batch norm against plain NumPy, PyTorch (CPU) and a "
                    "streaming 'speed of light' on this machine; print a Markdown report.",
        epilog="Shapes are written NxC or NxCxL, e.g. --shapes 256x512,8x64x16384. "
               "Progress goes to stderr, the report to stdout.")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run (float32, {len(QUICK_SHAPES)} shapes, fewer rounds; "
                        "about a minute)")
    p.add_argument("--shapes", type=_parse_shapes, default=None,
                   help=f"comma-separated shapes (default: the {len(DEFAULT_SHAPES)} standard "
                        "shapes, which take every kernel schedule)")
    p.add_argument("--dtypes", type=_parse_list(DEFAULT_DTYPES, {"f32": "float32",
                                                                 "f64": "float64"}),
                   default=None, help="float32,float64 (default: both; --quick: float32)")
    p.add_argument("--threads", type=_parse_threads, default=None,
                   help="comma-separated thread counts, 'all' = cybn's default thread "
                        "count (default: 1,all)")
    p.add_argument("--ops", type=_parse_list(OPS, OP_ALIASES), default=list(OPS),
                   help="fwd_train,bwd,fwd_eval (default: all three)")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="timed rounds per op (default: as many as fit a time budget, "
                        "7..300; --quick 5..60)")
    p.add_argument("--out", metavar="FILE", help="also write the Markdown report to FILE")
    p.add_argument("--json", metavar="FILE", help="write the raw results as JSON to FILE")
    p.add_argument("--chart", metavar="FILE",
                   help="also draw the ratios at the largest thread count to FILE (.png, .svg; "
                        "needs matplotlib: benchmarks/chart.py)")
    p.add_argument("--from-json", metavar="FILE",
                   help="time nothing: write the report (and --chart) of a run saved by --json")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="full runs, one after another; the report shows the median of the "
                        "runs and the range of each ratio (default 1)")
    p.add_argument("--update-docs", action="store_true",
                   help="write the results into docs/benchmarks.md and the README summary, "
                        "the chart into docs/_static/benchmark.png and the runs into "
                        "docs/_static/benchmark.json (needs --runs 3 or more and the full "
                        "default cases)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    p.add_argument("--no-numpy", action="store_true",
                   help="do not time the NumPy reference (it is still the correctness "
                        "oracle)")
    p.add_argument("--no-sol", action="store_true",
                   help="do not build and time the speed-of-light loops (no compiler needed)")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="seconds before a case's child process is killed (default 900)")
    p.add_argument("--fused", action="store_true",
                   help="time batch norm fused with ReLU (and residual add + ReLU) against "
                        "cybn's batch norm alone, cybn + a NumPy ReLU, and torch "
                        "(F.batch_norm + F.relu with autograd), side by side in one "
                        f"process; shapes default to {_fmt_fused_shapes()}, threads to "
                        "the usable CPUs")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cpus():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _thp():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
        return text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return None


def _openmp_pools(threadpools):
    return [p for p in threadpools or [] if p.get("user_api") == "openmp"]


# The child is `python benchmarks/compare.py --child JSON` in effect, except that torch is
# imported before cybn when it is timed: this script imports cybn (and maps the system
# libgomp.so.1) first, and torch would then run on that copy instead of the libgomp it
# ships. With torch first, cybn's libgomp.so.1 resolves to torch's copy: one OpenMP runtime,
# the one torch was built with (as in the anchors of docs/benchmarks.md). The report names
# the runtime. sys.path is the parent's: this directory first, instead of the current
# directory `-c` would put there (a checkout's uncompiled cybn/ must not shadow the install).
_CHILD_BOOT = """import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
sys.path.insert(0, sys.argv[3])
if sys.argv[1] == "torch":
    import torch
from compare import main
sys.exit(main(["--child", sys.argv[2]]))
"""


def _interpreter_flags():
    """The parent's interpreter flags (-P, -I, -E, -s, ...), so that a child resolves
    ``import cybn`` exactly as the parent did."""
    try:
        return subprocess._args_from_interpreter_flags()
    except AttributeError:  # private helper (used by multiprocessing); absent elsewhere
        return []


def _run_case(spec, timeout):
    cmd = [sys.executable, *_interpreter_flags(), "-c", _CHILD_BOOT,
           "torch" if spec["torch"] else "-", json.dumps(spec), HERE]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"spec": spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln[0].isspace()]
    tail = lines[-1] if lines else "no output"
    return {"spec": spec, "error": f"child exited with code {proc.returncode}: {tail}"}


def _progress(i, n, res, elapsed):
    spec = res["spec"]
    head = (f"[{i}/{n}] {_fmt_shape(spec['shape'])} {spec['dtype']} "
            f"{spec['threads']} thread{'s' if spec['threads'] > 1 else ''}")
    if "error" in res:
        return f"{head}: ERROR {res['error']}"
    parts = []
    for op, tm in res["ops"].items():
        c = tm.get("cybn", {}).get("median_ns")
        bits = [f"cybn {_fmt_time(c)}"]
        for name in ("torch", "sol"):
            m = _best(tm, name)
            if m is not None:
                bits.append(f"{LABELS[name]} {_fmt_time(m)}")
        bad = [n for n, v in tm.items() if v.get("ok") is False]
        if bad:
            bits.append("CHECK FAILED: " + ",".join(bad))
        parts.append(f"{op} " + " ".join(bits))
    return f"{head}: " + "; ".join(parts) + f"  ({elapsed:.1f} s)"


def _best(tm, name):
    """Median of a candidate; for SoL, the faster of the thread variants."""
    if name == "sol":
        vals = [tm[k]["median_ns"] for k in ("sol", "sol_1t")
                if k in tm and "median_ns" in tm[k]]
        return min(vals) if vals else None
    v = tm.get(name)
    return v.get("median_ns") if v else None


def _spread(tm, name):
    if name == "sol":
        keys = [k for k in ("sol", "sol_1t") if k in tm and "median_ns" in tm[k]]
        if not keys:
            return None
        name = min(keys, key=lambda k: tm[k]["median_ns"])
    v = tm.get(name)
    if not v or "median_ns" not in v or v["median_ns"] <= 0:
        return None
    return (v["q3_ns"] - v["q1_ns"]) / v["median_ns"]


def _cell(tm, name):
    m = _best(tm, name)
    v = tm.get(name, {})
    if v.get("error"):
        return "ERROR"
    if m is None:
        return "—"
    text = _fmt_time(m)
    sp = _spread(tm, name)
    if sp is not None:
        text += f" ({sp * 100:.0f}%)"
    if v.get("ok") is False:
        text += " **FAIL**"
    return text


def _ratio_of_medians(tm, a, b):
    ma, mb = _best(tm, a), _best(tm, b)
    if ma is None or mb is None or mb <= 0:
        return None
    return ma / mb


def _ratio(tm, a, b):
    """a's time ÷ b's: of several runs (_combine), the median of the same-run ratios."""
    runs = tm.get(a, {}).get("ratio_runs", {}).get(b)
    if runs:
        return statistics.median(runs)
    return _ratio_of_medians(tm, a, b)


def _ratio_cell(tm, a, b):
    """The ratio, and over several runs its range: "0.45 (0.41-0.49)"."""
    text = _fmt_ratio(_ratio(tm, a, b))
    runs = tm.get(a, {}).get("ratio_runs", {}).get(b)
    if runs and len(runs) > 1:
        text += f" ({_fmt_ratio(min(runs))}-{_fmt_ratio(max(runs))})"
    return text


# The ratios the report shows, as (numerator, denominator) pairs.
_RATIO_PAIRS = [("cybn", "torch"), ("cybn", "numpy"), ("cybn", "sol"), ("module", "cybn"),
                ("module_out", "module")]


def _combine(runs):
    """One results list from several full runs of the same cases.

    Per case, op and candidate: the median of the runs' medians (its quartiles replaced by
    the lowest and highest run median, so "(x%)" is the spread across runs), and for each
    ratio of the report the list of the runs' same-process ratios (``ratio_runs``), whose
    median the tables show with its range.
    """
    combined = []
    for cases in zip(*runs, strict=True):
        failed = [c for c in cases if "error" in c]
        if failed:
            combined.append(failed[0])
            continue
        res = {"spec": cases[0]["spec"], "ops": {}, "env": cases[0].get("env"),
               "runs": len(cases)}
        for op in cases[0]["ops"]:
            tms = [c["ops"].get(op, {}) for c in cases]
            tm = {}
            for name in tms[0]:
                entries = [t[name] for t in tms if name in t]
                entry = dict(entries[0])
                meds = [e["median_ns"] for e in entries if "median_ns" in e]
                if meds:
                    entry.update(median_ns=statistics.median(meds), q1_ns=min(meds),
                                 q3_ns=max(meds))
                if any(e.get("ok") is False for e in entries):
                    entry["ok"] = False
                    entry["err"] = max((e["err"] for e in entries if e.get("err") is not None),
                                       default=None)
                elif any(e.get("err") is not None for e in entries):
                    entry["err"] = max(e["err"] for e in entries if e.get("err") is not None)
                tm[name] = entry
            for a, b in _RATIO_PAIRS:
                values = [r for r in (_ratio_of_medians(t, a, b) for t in tms) if r is not None]
                if values and a in tm:
                    tm[a].setdefault("ratio_runs", {})[b] = values
            res["ops"][op] = tm
        combined.append(res)
    return combined


# --- targets ------------------------------------------------------------------------

def _nbytes(res):
    spec = res["spec"]
    return math.prod(spec["shape"]) * (4 if spec["dtype"] == "float32" else 8)


# The targets are the table under "## Targets" in docs/benchmarks.md (columns: ops, cases,
# cybn ÷, limit), read when the report is written. A case condition is `all`,
# `shape (N, C, L)`, or `size|elements|L <op> number [B|KiB|MiB|GiB]` (L = product of the
# trailing dimensions, 1 for 2-D input), several joined with " and ".
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_COMPARE = {"<": float.__lt__, ">": float.__gt__, "<=": float.__le__, "≤": float.__le__,
            ">=": float.__ge__, "≥": float.__ge__, "=": float.__eq__}


def _condition(text):
    """predicate(shape, nbytes) of one case condition of the targets table."""
    m = re.fullmatch(r"shape\s*\(([\d,\s]+)\)", text)
    if m:
        want = tuple(int(d) for d in m.group(1).split(",") if d.strip())
        return lambda shape, nb: shape == want
    m = re.fullmatch(r"(size|elements|L)\s*(<=|>=|[<>=≤≥])\s*([\d\s×x*]+?)\s*(B|KiB|MiB|GiB)?",
                     text)
    if not m:
        raise ValueError(f"target case {text!r}: expected 'all', 'shape (N, C, L)' or "
                         "'size|elements|L <op> number [unit]'")
    what, op, number, unit = m.groups()
    value = float(math.prod(int(d) for d in re.split(r"[\s×x*]+", number.strip()) if d)
                  * _UNITS[unit or "B"])
    compare = _COMPARE[op]
    measure = {"size": lambda shape, nb: nb, "elements": lambda shape, nb: math.prod(shape),
               "L": lambda shape, nb: math.prod(shape[2:])}[what]
    return lambda shape, nb: compare(float(measure(shape, nb)), value)


def load_targets(path=DOCS):
    """[(label, predicate(shape, nbytes, op), versus, limit)] from docs/benchmarks.md."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Targets\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    if m is None:
        raise ValueError(f"{path} has no '## Targets' section")
    versus_names = {label.lower(): name for name, label in LABELS.items() if name != "cybn"}
    targets = []
    for line in m.group(1).splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] == "ops" or set(cells[0]) <= set("-: "):
            continue
        ops_text, cases, versus_text, limit_text = cells
        ops = set(OPS) if ops_text == "all" else {o.strip() for o in ops_text.split(",")}
        if not ops <= set(OPS) or versus_text.lower() not in versus_names:
            raise ValueError(f"{path}: target row {line!r}: ops must be 'all' or of "
                             f"{', '.join(OPS)}; cybn ÷ one of {', '.join(versus_names)}")
        conds = [] if cases == "all" else [_condition(c.strip()) for c in cases.split(" and ")]
        limit = float(limit_text.lstrip("≤<= "))

        def pred(shape, nb, op, ops=ops, conds=conds):
            return op in ops and all(c(shape, nb) for c in conds)
        label = f"{ops_text}, {'every case' if cases == 'all' else cases}: cybn ÷ {versus_text}"
        targets.append((label, pred, versus_names[versus_text.lower()], limit))
    if not targets:
        raise ValueError(f"{path}: no rows in the '## Targets' table")
    return targets


def _targets(results, t_all, targets):
    rows = []
    for label, pred, versus, limit in targets:
        worst, where, n = None, None, 0
        for res in results:
            spec = res["spec"]
            if "error" in res or spec["threads"] != t_all:
                continue
            shape = tuple(spec["shape"])
            for op, tm in res["ops"].items():
                if not pred(shape, _nbytes(res), op):
                    continue
                r = _ratio(tm, "cybn", versus)
                if r is None:
                    continue
                n += 1
                if worst is None or r > worst:
                    worst, where = r, f"{_fmt_shape(shape)} {spec['dtype']} {op}"
        if n == 0:
            verdict = "not measured"
        else:
            verdict = "holds" if worst <= limit else "**misses**"
        rows.append((label, limit, verdict, worst, where, n))
    return rows


# --- report -------------------------------------------------------------------------

def _report(results, meta, args):
    lines = []
    # environment as seen at the end of an all-threads case (thread counts of the pools)
    envs = [r for r in results if "env" in r]
    env = next((r["env"] for r in envs if r["spec"]["threads"] == meta["t_all"]),
               envs[0]["env"] if envs else {})
    pools = env.get("threadpools")
    lines.append("# cybn benchmark")
    lines.append("")
    if meta.get("date"):
        lines.append(f"- **Date:** {meta['date']}")
    lines.append(f"- **Machine:** {meta['cpu']}; {meta['cpus']} logical CPUs "
                 f"({meta['usable']} usable); {meta['platform']}; Python {meta['python']}")
    if meta["torch"]:
        torch_text = f"PyTorch {meta['torch']}"
        if env.get("torch_cpu_capability"):
            torch_text += f" (CPU capability {env['torch_cpu_capability']})"
    else:
        torch_text = f"PyTorch {meta['torch_note']}"
    openmp = "OpenMP on" if meta["cybn_openmp"] else "OpenMP OFF: serial build, 1 thread"
    kernels = meta.get("cybn_kernels")
    kernels = f"{kernels} kernels; " if kernels else ""
    lines.append(f"- **Software:** NumPy {meta['numpy']}; {torch_text}; cybn "
                 f"{meta['cybn']} ({kernels}{openmp}; default threads {meta['t_all']}) from "
                 f"`{meta['cybn_path']}`")
    if not envs:
        lines.append("- **Thread pools:** unknown (no case finished)")
    elif pools is None:
        lines.append("- **Thread pools:** unknown (threadpoolctl is not installed)")
    else:
        def _pool(p):
            extra = f", {p['threading_layer']}" if p.get("threading_layer") else ""
            return f"{p['internal_api']} `{p['filepath']}` ({p['num_threads']} threads{extra})"
        omp = [_pool(p) for p in _openmp_pools(pools)]
        other = [_pool(p) for p in pools if p.get("user_api") != "openmp"]
        lines.append("- **OpenMP runtimes mapped in a benchmark process** (threadpoolctl, "
                     f"all-threads case): {'; '.join(omp) or 'none'}"
                     + (f". Other pools: {'; '.join(other)}" if other else ""))
    strays = sorted({r["env"]["cybn_file"] for r in envs} - {meta["cybn_path"]})
    if strays:
        lines.append(f"- **WARNING: benchmark processes imported cybn from "
                     f"{', '.join(strays)}**, not from `{meta['cybn_path']}`")
    omp_sets = {tuple(sorted(p["filepath"] for p in _openmp_pools(r["env"].get("threadpools"))))
                for r in envs}
    if any(len(s) > 1 for s in omp_sets):
        lines.append("- **WARNING: two OpenMP runtimes are loaded** "
                     f"({', '.join(max(omp_sets, key=len))}). Their thread pools compete "
                     "for the cores (idle workers spin after each parallel region), which "
                     "can slow down both cybn and torch. Consider OMP_WAIT_POLICY=passive "
                     "for mixed runs, or make cybn and torch share one libgomp.")
    lines.append(f"- **Environment:** {meta['env_vars']}; transparent huge pages: "
                 f"{meta['thp'] or 'unknown'}; load average {meta['load_start']} at start, "
                 f"{meta['load_end']} at end"
                 + (" (**busy machine: expect noisy times**)" if meta["busy"] else "")
                 + f"; wall time {meta['wall']:.0f} s")
    runs = meta.get("runs", 1)
    spread = ("times are medians per call, (x%) = interquartile range ÷ median; ratios are "
              "of medians in the same process" if runs == 1 else
              f"{runs} full runs, one after another: times are the median of the runs' "
              "medians per call, (x%) = (highest − lowest run median) ÷ median; each ratio "
              "is the median of the runs' same-process ratios, with their range in "
              "parentheses")
    lines.append("- **Method:** each (shape, dtype, threads) case in a fresh process; "
                 f"candidates interleaved round-robin; {spread} (lower is better). "
                 "SoL = streaming loops with the op's two-pass "
                 "traffic (fwd_train 2R+1W, bwd 4R+1W, fwd_eval 1R+1W) into a fresh NumPy "
                 "array. NumPy is single-threaded. **FAIL** = disagrees with the float64 "
                 "reference. Compare ratios, not absolute times across runs.")
    lines.append("")

    thread_counts = sorted({r["spec"]["threads"] for r in results}, reverse=True)
    for t in thread_counts:
        title = f"{t} threads" if t > 1 else "1 thread"
        if t == meta["t_all"] and t > 1:
            title = f"All threads ({t})"
        lines.append(f"## {title}")
        lines.append("")
        lines.append("| shape | dtype | size | op | cybn | torch | NumPy | SoL | cybn ÷ torch "
                     "| cybn ÷ NumPy | cybn ÷ SoL |")
        lines.append("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for res in results:
            spec = res["spec"]
            if spec["threads"] != t:
                continue
            shape = _fmt_shape(spec["shape"])
            mb = _fmt_bytes(_nbytes(res))
            if "error" in res:
                lines.append(f"| {shape} | {spec['dtype']} | {mb} | — | ERROR: "
                             f"{res['error'].splitlines()[0][:80]} | | | | | | |")
                continue
            for op, tm in res["ops"].items():
                cells = [_cell(tm, n) for n in ("cybn", "torch", "numpy", "sol")]
                ratios = [_ratio_cell(tm, "cybn", n) for n in ("torch", "numpy", "sol")]
                lines.append(f"| {shape} | {spec['dtype']} | {mb} | {op} | "
                             + " | ".join(cells + ratios) + " |")
        lines.append("")

    lines.append("## Modules: the functional call, the module, the module into buffers")
    lines.append("")
    lines.append("cybn.BatchNorm1d around the same kernels (state handling, a new output per "
                 "call) and with `out=` (buffers the caller reuses); time ratios, lower is "
                 "better.")
    lines.append("")
    lines.append("| shape | dtype | threads | op | functional | module | module, out= "
                 "| module ÷ functional | out= ÷ module |")
    lines.append("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for res in results:
        if "error" in res:
            continue
        spec = res["spec"]
        for op, tm in res["ops"].items():
            cells = [_cell(tm, n) for n in ("cybn", "module", "module_out")]
            ratios = [_ratio_cell(tm, "module", "cybn"), _ratio_cell(tm, "module_out", "module")]
            lines.append(f"| {_fmt_shape(spec['shape'])} | {spec['dtype']} | "
                         f"{spec['threads']} | {op} | " + " | ".join(cells + ratios) + " |")
    lines.append("")

    t_all = meta["t_all"]
    lines.append(f"## Targets ({t_all} thread{'s' if t_all > 1 else ''}; time ratios, "
                 "lower is better)")
    lines.append("")
    try:
        targets = load_targets()
    except (OSError, ValueError) as exc:
        targets = f"the targets of docs/benchmarks.md could not be read: {exc}"
    if t_all not in thread_counts:
        lines.append(f"Not evaluated: no case ran with all threads ({t_all}).")
    elif isinstance(targets, str):
        lines.append(f"Not evaluated: {targets}.")
    else:
        lines.append("The targets of docs/benchmarks.md:")
        lines.append("")
        lines.append("| target | limit | verdict | worst ratio | worst case | cases |")
        lines.append("|---|---:|---|---:|---|---:|")
        for label, limit, verdict, worst, where, n in _targets(results, t_all, targets):
            lines.append(f"| {label} | ≤ {limit} | {verdict} | {_fmt_ratio(worst)} "
                         f"| {where or '—'} | {n} |")
    lines.append("")

    lines.append("## Correctness")
    lines.append("")
    worst = {}
    problems = []
    for res in results:
        if "error" in res:
            problems.append(f"- {_fmt_shape(res['spec']['shape'])} {res['spec']['dtype']} "
                            f"{res['spec']['threads']} threads: case failed: {res['error']}")
            continue
        spec = res["spec"]
        for op, tm in res["ops"].items():
            for name, v in tm.items():
                if v.get("error"):
                    problems.append(f"- {name} {_fmt_shape(spec['shape'])} {spec['dtype']} "
                                    f"{spec['threads']}t {op}: {v['error']}")
                elif v.get("err") is not None:
                    key = (name, spec["dtype"])
                    if key not in worst or v["err"] > worst[key][0]:
                        worst[key] = (v["err"], f"{_fmt_shape(spec['shape'])} {op}")
                    if not v["ok"]:
                        problems.append(
                            f"- **FAIL** {name} {_fmt_shape(spec['shape'])} {spec['dtype']} "
                            f"{spec['threads']}t {op}: relative error {v['err']:.2e} > "
                            f"{TOLERANCE[spec['dtype']]:.0e}")
    lines.append("Largest error of each candidate against the float64 NumPy reference "
                 "(max |got − ref| ÷ max |ref| over all outputs: y, running stats, "
                 "mean/invstd where returned, dx, dw, db; for outputs that can cancel to "
                 "zero the divisor is at least the size of their terms: dx ≥ max|dy|·"
                 "max|w·invstd|, means ≥ mean|x|); tolerance 1e-4 (float32), "
                 "1e-9 (float64):")
    lines.append("")
    for (name, dtype), (err, where) in sorted(worst.items()):
        lines.append(f"- {LABELS.get(name, name)} {dtype}: {err:.1e} ({where})")
    lines.append("")
    if problems:
        lines.append("Problems:")
        lines.append("")
        lines.extend(problems)
    else:
        lines.append("All candidates agree with the reference.")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = _build_parser().parse_args(argv)
    if args.fused:
        return run_fused(args)
    # What the arguments allow is settled before anything is built or timed.
    default_cases = not (args.quick or args.shapes or args.dtypes or args.threads
                         or args.ops != list(OPS) or args.repeat or args.no_torch
                         or args.no_numpy or args.no_sol)
    if args.update_docs:
        args.chart = args.chart or os.path.join(STATIC, "benchmark.png")
        if not args.from_json:
            args.json = args.json or os.path.join(STATIC, "benchmark.json")
            problem = _docs_ready(args, args.runs, default_cases)
            if problem:
                print(f"compare: {problem}", file=sys.stderr)
                return 2
    # A child times SoL only when its case asks for it (the parent's --no-sol reaches the
    # child in the case's spec, not on its command line).
    wants_sol = (json.loads(args.child).get("sol", True) if args.child is not None
                 else not (args.no_sol or args.from_json))
    if wants_sol:
        # builds benchmarks/.build/_sol on first use (a child finds it up to date)
        import build_sol
        try:
            build_sol.ensure()
        except Exception as exc:  # noqa: BLE001 - no compiler, no Cython, a compile error
            print(f"compare: cannot build the speed-of-light module ({type(exc).__name__}: "
                  f"{exc}); install Cython and a C compiler, or pass --no-sol",
                  file=sys.stderr)
            return 2
    if args.child is not None:
        res = run_child(json.loads(args.child))
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # before minutes of timing, not after
            print("compare: --chart needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            saved = json.load(f)
        if args.update_docs:
            problem = _docs_ready(args, len(saved.get("runs") or [saved["results"]]),
                                  saved["meta"].get("default_cases", False))
            if problem:
                print(f"compare: {args.from_json}: {problem}", file=sys.stderr)
                return 2
        # files of one run, from before --runs, hold "results"
        return _write_outputs(saved.get("runs") or [saved["results"]], saved["meta"], args)

    t0 = time.perf_counter()
    import cybn  # fails early (with the real error) if cybn is not built
    from cybn._backend import kernels_info as _kernels_info

    t_all = cybn.get_num_threads()
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    dtypes = args.dtypes or (QUICK_DTYPES if args.quick else DEFAULT_DTYPES)
    threads = []
    for t in (args.threads or [1, "all"]):
        t = t_all if t == "all" else t
        if t not in threads:
            threads.append(t)
    if args.repeat is not None and args.repeat < 1:
        print("--repeat must be >= 1", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("--runs must be >= 1", file=sys.stderr)
        return 2
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    torch_note = ("not timed (--no-torch)" if args.no_torch
                  else "not installed" if not use_torch else "")

    cases = []
    for shape in shapes:
        for dtype in dtypes:
            for t in threads:
                cases.append({
                    "shape": list(shape), "dtype": dtype, "threads": t, "ops": args.ops,
                    "torch": use_torch, "numpy": not args.no_numpy, "sol": not args.no_sol,
                    "profile": "quick" if args.quick else "full", "repeat": args.repeat,
                })

    load_start = _loadavg()
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5 * _usable_cpus()
    if busy:
        print(f"compare: warning: the machine is busy (load average {load_start}); "
              "times will be noisy, multi-threaded ones most", file=sys.stderr, flush=True)
    print(f"compare: {len(cases)} cases ({len(shapes)} shapes x {len(dtypes)} dtypes x "
          f"threads {threads}), ops {', '.join(args.ops)}"
          + ("" if use_torch else f"; torch {torch_note}"), file=sys.stderr, flush=True)
    runs = []
    for run in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"compare: run {run} of {args.runs}", file=sys.stderr, flush=True)
        results = []
        for i, spec in enumerate(cases, 1):
            t_case = time.perf_counter()
            res = _run_case(spec, args.timeout)
            results.append(res)
            print(_progress(i, len(cases), res, time.perf_counter() - t_case),
                  file=sys.stderr, flush=True)
        runs.append(results)

    env_names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "GOMP_SPINCOUNT",
                 "THP_MEM_ALLOC_ENABLE", "CYBN_KERNELS")
    env_vars = ", ".join(f"{k}={os.environ[k]}" for k in env_names if k in os.environ)
    meta = {
        "numpy": np.__version__, "cybn": cybn.__version__,
        "cybn_openmp": cybn.openmp_enabled(), "cybn_path": os.path.dirname(cybn.__file__),
        "cybn_kernels": _kernels_info()["selected"],
        "torch": _dist_version("torch") if use_torch else None,
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "usable": _usable_cpus(),
        "platform": platform.platform(terse=True), "python": platform.python_version(),
        "t_all": t_all, "torch_note": torch_note, "thp": _thp(),
        "env_vars": env_vars or "no OMP_*/GOMP_*/THP_* variables set",
        "load_start": load_start, "load_end": _loadavg(), "busy": busy,
        "date": time.strftime("%Y-%m-%d"), "runs": len(runs), "default_cases": default_cases,
        "wall": time.perf_counter() - t0,
    }
    return _write_outputs(runs, meta, args)


def _write_outputs(runs, meta, args):
    """The report on stdout, and the --out, --json, --chart and --update-docs outputs."""
    results = runs[0] if len(runs) == 1 else _combine(runs)
    meta = {**meta, "runs": len(runs)}
    report = _report(results, meta, args)
    sys.stdout.write(report + "\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report + "\n")
    if args.json and not args.from_json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "runs": runs}, f, indent=1)
    if args.update_docs:
        _update_docs(report, results, meta)
    if args.chart:
        import chart
        rows, threads = _chart_rows(results, meta)
        if not rows:
            print("compare: no case ran: no chart to draw", file=sys.stderr)
            return 1
        chart.draw(rows, f"python benchmarks/compare.py, {meta.get('date', 'undated')}, "
                         f"{threads} thread(s)\n{meta['cpu']}; cybn {meta['cybn']} "
                         f"({meta.get('cybn_kernels')} kernels); torch "
                         f"{meta['torch'] or meta['torch_note']}; NumPy {meta['numpy']}",
                   args.chart)
        print(f"compare: chart written to {args.chart}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


# --- batch norm fused with ReLU (--fused) -----------------------------------------------
# The targets of issue 14 item 5, checked against ratios of medians measured side by side
# in one process (arrays >= 16 MiB): fused / batch norm alone <= 1.15 (forward and
# backward); fused forward + backward / (cybn batch norm + NumPy ReLU, forward + backward)
# <= 0.7, / torch (F.batch_norm + F.relu, autograd backward) <= 0.4.

# >= 16 MiB in float32, one per schedule: columns (L = 1), runs, channel slab
FUSED_SHAPES = ((65536, 64), (64, 256, 256), (8, 64, 8192))
FUSED_TARGETS = {"fwd": 1.15, "bwd": 1.15, "vs_numpy": 0.7, "vs_torch": 0.4}


def _fmt_fused_shapes():
    return ", ".join(_fmt_shape(s) for s in FUSED_SHAPES)


def _fused_candidates(x, w, b, r, dy, threads, use_torch):
    """{name: callable} for one case; r: the residual or None."""
    import cybn.functional as F
    nt = threads
    kw = {"residual": r}  # None: no residual (batch_norm_backward requires it explicitly)

    def bn_fwd():
        return F.batch_norm_forward(x, w, b, None, None, True, MOMENTUM, EPS, n_threads=nt)

    _, m, s = bn_fwd()

    def bn_bwd():
        return F.batch_norm_backward(dy, x, w, m, s, n_threads=nt)

    def fused_fwd():
        return F.batch_norm_forward(x, w, b, None, None, True, MOMENTUM, EPS, n_threads=nt,
                                    activation="relu", **kw)

    def fused_bwd():
        return F.batch_norm_backward(dy, x, w, m, s, n_threads=nt, activation="relu",
                                     bias=b, **kw)

    def fused_both():
        _, fm, fs = fused_fwd()
        return F.batch_norm_backward(dy, x, w, fm, fs, n_threads=nt, activation="relu",
                                     bias=b, **kw)

    def bn_numpy_both():  # cybn batch norm, then the activation in NumPy, and back
        z, zm, zs = bn_fwd()
        if r is not None:
            z = z + r
        a = np.maximum(z, 0)
        gz = np.where(a > 0, dy, 0).astype(x.dtype, copy=False)
        return a, F.batch_norm_backward(gz, x, w, zm, zs, n_threads=nt), gz

    fns = {"bn_fwd": bn_fwd, "fused_fwd": fused_fwd, "bn_bwd": bn_bwd,
           "fused_bwd": fused_bwd, "fused_fwd_bwd": fused_both,
           "bn_numpy_fwd_bwd": bn_numpy_both}
    if use_torch:
        import torch
        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w).requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        tr = torch.from_numpy(r).requires_grad_(True) if r is not None else None
        tdy = torch.from_numpy(dy)

        def torch_both():
            z = torch.nn.functional.batch_norm(tx, None, None, tw, tb, True, MOMENTUM, EPS)
            if tr is not None:
                z = z + tr
            a = torch.nn.functional.relu(z)
            return torch.autograd.grad(a, (tx, tw, tb) if tr is None else (tx, tw, tb, tr),
                                       tdy)

        fns["torch_fwd_bwd"] = torch_both
    return fns


def run_fused(args):
    """--fused: the report of the fused cases (Markdown on stdout)."""
    shapes = args.shapes or FUSED_SHAPES
    dtypes = args.dtypes or DEFAULT_DTYPES
    threads = args.threads or [_usable_cpus()]
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
            torch.set_grad_enabled(True)
        except ImportError:
            use_torch = False
    profile = PROFILES["quick" if args.quick else "full"]
    rng = np.random.default_rng(SEED)
    lines = ["# cybn: batch norm fused with ReLU", "",
             ("Medians side by side in one process, ratios of medians (lower is better); "
              "targets: fused ÷ BN ≤ 1.15 (forward, backward), fused fwd+bwd ÷ (BN + NumPy "
              "ReLU) ≤ 0.7, ÷ torch ≤ 0.4."), "",
             ("| shape | dtype | MiB | threads | residual | schedule | fwd ÷ BN | bwd ÷ BN "
              "| fwd+bwd ÷ (BN + NumPy) | fwd+bwd ÷ torch | fused fwd+bwd |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    from cybn._backend import kernels
    failed = False
    for shape in shapes:
        for dtype in dtypes:
            x = rng.standard_normal(shape).astype(dtype)
            r = rng.standard_normal(shape).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            C = shape[1]
            w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
            b = (0.1 * rng.standard_normal(C)).astype(dtype)
            L = math.prod(shape[2:]) if len(shape) > 2 else 1
            sched = kernels.plan_info(shape[0], C, L, x.itemsize, True)["schedule"]
            for nt in threads:
                if use_torch:
                    torch.set_num_threads(nt)
                for res in (None, r):
                    fns = _fused_candidates(x, w, b, res, dy, nt, use_torch)
                    gc.collect()
                    gc.disable()
                    try:
                        t = _measure(fns, profile, args.repeat)
                    finally:
                        gc.enable()
                    med = {k: v["median_ns"] for k, v in t.items()}
                    ratios = [med["fused_fwd"] / med["bn_fwd"], med["fused_bwd"] / med["bn_bwd"],
                              med["fused_fwd_bwd"] / med["bn_numpy_fwd_bwd"],
                              med["fused_fwd_bwd"] / med["torch_fwd_bwd"]
                              if "torch_fwd_bwd" in med else float("nan")]
                    cells = []
                    for key, v in zip(("fwd", "bwd", "vs_numpy", "vs_torch"), ratios):
                        ok = not math.isfinite(v) or v <= FUSED_TARGETS[key]
                        failed |= res is None and not ok
                        cells.append(f"{v:.2f}" + ("" if ok else " ✗"))
                    lines.append(
                        f"| {_fmt_shape(shape)} | {dtype} | {x.nbytes / 2**20:.0f} | {nt} | "
                        f"{'yes' if res is not None else 'no'} | {sched} | "
                        + " | ".join(cells) + f" | {_fmt_time(med['fused_fwd_bwd'])} |")
                    print(lines[-1], file=sys.stderr)
    lines += ["", (f"cybn kernels: {kernels.__name__}; load average {_loadavg()}; ✗: over "
                   "the target (the targets are for the ReLU without residual: a residual "
                   "adds one read to the forward and a read and a write to the backward).")]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report + "\n")
    return 0


# --- documentation written from runs (--update-docs) -----------------------------------

README = os.path.join(os.path.dirname(HERE), "README.md")
STATIC = os.path.join(os.path.dirname(HERE), "docs", "_static")
_MARK = "<!-- benchmarks/compare.py --update-docs: {} {} -->"
# The README summary's size classes (bytes of one input array).
_CLASSES = (("< 64 KiB", 0, 64 << 10), ("64 KiB - 16 MiB", 64 << 10, 32 << 20),
            ("32-128 MiB", 32 << 20, float("inf")))
_OP_NAMES = {"fwd_eval": "evaluation", "fwd_train": "training forward", "bwd": "backward"}
MIN_DOC_RUNS = 3


def _span(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    lo, hi = _fmt_ratio(min(values)), _fmt_ratio(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _summary(results, meta):
    """The README's table: per size class and op, the range over cases of each ratio."""
    t_all = meta["t_all"]
    done = [r for r in results if "error" not in r and r["spec"]["threads"] == t_all]
    lines = ["| arrays | op | cybn ÷ torch | cybn ÷ speed of light | cybn ÷ NumPy |",
             "|---|---|---|---|---|"]
    for label, lo, hi in _CLASSES:
        cases = [r for r in done if lo <= _nbytes(r) < hi]
        for op, name in _OP_NAMES.items():
            tms = [r["ops"][op] for r in cases if op in r["ops"]]
            if tms:
                lines.append(f"| {label} | {name} | "
                             + " | ".join(_span(_ratio(tm, "cybn", n) for tm in tms)
                                          for n in ("torch", "sol", "numpy")) + " |")
    lines.append("")
    lines.append(f"Median of {meta['runs']} full runs of `python benchmarks/compare.py "
                 f"--runs {meta['runs']} --update-docs` on {meta.get('date', '?')}: "
                 f"{meta['cpu']}, {t_all} threads, cybn's {meta.get('cybn_kernels')} kernels, "
                 f"torch {meta['torch'] or meta['torch_note']}; ranges over the cases of each "
                 "class. Each case's spread across the runs is in docs/benchmarks.md.")
    return "\n".join(lines)


def _replace_marked(path, name, body):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = _MARK.format(name, "begin"), _MARK.format(name, "end")
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"compare: {path} must hold the markers {begin} and {end} once")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{body.strip()}\n{end}{tail}")


def _update_docs(report, results, meta):
    """Write the report into docs/benchmarks.md (headings one level down, under "Results")
    and the summary into the README, between their markers."""
    lines = report.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    demoted = [("#" + line) if line.startswith("#") else line for line in lines]
    _replace_marked(DOCS, "report", "\n".join(demoted))
    _replace_marked(README, "summary", _summary(results, meta))
    print(f"compare: wrote {DOCS} and {README}", file=sys.stderr)


def _docs_ready(args, runs_available, default_cases):
    """Why --update-docs cannot be honoured, or None."""
    if runs_available < MIN_DOC_RUNS:
        return (f"--update-docs needs at least {MIN_DOC_RUNS} full runs (--runs "
                f"{MIN_DOC_RUNS}), got {runs_available}")
    if not default_cases:
        return ("--update-docs needs the full default cases: no --quick, --shapes, --dtypes, "
                "--threads, --ops, --repeat, --no-torch, --no-numpy or --no-sol")
    return None


def _chart_rows(results, meta):
    """The chart's rows: every case at the run's largest thread count, every op."""
    done = [r for r in results if "error" not in r]
    threads = max((r["spec"]["threads"] for r in done), default=meta["t_all"])
    short = {"float32": "f32", "float64": "f64"}
    rows = []
    for res in done:
        spec = res["spec"]
        if spec["threads"] != threads:
            continue
        label = f"{_fmt_shape(spec['shape'])} {short.get(spec['dtype'], spec['dtype'])}"
        for op, tm in res["ops"].items():
            rows.append({"label": label, "op": op,
                         "ratios": {n: _ratio(tm, "cybn", n) for n in ("torch", "numpy", "sol")}})
    return rows, threads


def _dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - informational only
        return "(version unknown)"


def _loadavg():
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
