"""Precision cases, an extended-precision reference and the stated error bounds.

Shared by tests/test_precision.py (which checks the bounds and that docs/accuracy.md still
holds the numbers cybn gives) and tools/gen_accuracy.py (which writes docs/accuracy.md).
Needs only NumPy and the standard library; torch is an optional comparison.

Reference
---------
For every channel, from the exact float64 values of the input (float32 inputs convert
exactly), :func:`reference` computes

* the mean exactly (``math.fsum`` plus its residual, combined as a ``Fraction``),
* the deviations ``x - mean`` to within 2 ulps each (the mean split in a double-double
  ``m_hi + m_lo``), after scaling the channel by a power of two so that neither tiny nor
  huge data over- or underflow,
* the sum of squared deviations with ``math.fsum`` (correctly rounded sum of products that
  are each within 1 ulp),
* ``1/sqrt(var + eps)`` in 50-digit ``decimal`` arithmetic,

so its own relative error is below 1e-15 whatever the ratio |mean|/std: far below every
bound it checks. tests/test_precision.py cross-checks it against exact ``fractions``
arithmetic on small data.

Measures
--------
``y`` is measured as the max absolute error over all elements divided by the RMS of the
reference output (weight 1 and bias 0: the RMS is 1 for a normalised output, about 3e-155
for the f64-subnormal case, where eps dominates);
``running_var`` (momentum 1: the unbiased batch variance, stored in the module dtype) as the
max relative error; ``running_mean`` as the max absolute error in units of the channel's
standard deviation (what matters for normalising).
"""

import functools
import math
from decimal import ROUND_FLOOR, Decimal, localcontext
from fractions import Fraction

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
UNIT = {F32: 2.0**-24, F64: 2.0**-53}
U64 = 2.0**-53
ETA64 = 2.0**-1074  # smallest double subnormal


# ---------------------------------------------------------------------------------------
# the cases

class Case:
    """One data set: ``make(rng)`` returns the input array of the case's dtype."""

    def __init__(self, cid, dtype, shape, what, make, eps=1e-5, note=""):
        self.id = cid
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.what = what
        self.make = make
        self.eps = eps
        self.note = note

    def data(self):
        """The input (a new array on every call; generation is deterministic)."""
        return _data(self).copy()

    def refs(self):
        """The reference statistics of :meth:`data` (computed once)."""
        return _refs(self)


@functools.cache
def _data(case):
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(case.id))
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(case.make(rng, case.shape).astype(case.dtype))


@functools.cache
def _refs(case):
    return reference(_data(case), case.eps)


def _offset(offset, scale=1.0):
    return lambda rng, shape: offset + scale * rng.standard_normal(shape)


CASES = [
    # float32
    Case("f32-randn", F32, (1000, 8), "randn", _offset(0.0)),
    Case("f32-1e4-largeN", F32, (100000, 4), "1e4 + randn", _offset(1e4),
         note="torch's worst 2-D case (float32 partial sums)"),
    Case("f32-1e6", F32, (10000, 4), "1e6 + randn", _offset(1e6)),
    Case("f32-1e6-3d", F32, (100, 4, 100), "1e6 + randn", _offset(1e6)),
    Case("f32-N1e6", F32, (1000000, 2), "1e3 + randn", _offset(1e3), note="N = 10^6 rows"),
    Case("f32-N1e6-1e6", F32, (1000000, 2), "1e6 + randn", _offset(1e6),
         note="N = 10^6 rows"),
    Case("f32-1e4-C1024", F32, (2000, 1024), "1e4 + randn", _offset(1e4),
         note="1024 channels: 32 tiles of 64 rows per channel"),
    Case("f32-subnormal", F32, (1000, 4), "1e-40 * randn", _offset(0.0, 1e-40), eps=1e-90,
         note="subnormal inputs; eps=1e-90 so that var >> eps"),
    Case("f32-1e18", F32, (100000, 4), "1e18 * randn", _offset(0.0, 1e18),
         note="var 1e36 fits float32, the sum of squares 1e41 does not"),
    Case("f32-1e30", F32, (1000, 4), "1e30 * randn", _offset(0.0, 1e30),
         note="var 1e60 > FLT_MAX: running_var = inf is the correctly rounded value; "
              "y must stay accurate"),
    # float64
    Case("f64-randn", F64, (1000, 8), "randn", _offset(0.0)),
    Case("f64-1e8-N1e6", F64, (1000000, 2), "1e8 + randn", _offset(1e8),
         note="N = 10^6 rows"),
    Case("f64-1e12", F64, (10000, 4), "1e12 + randn", _offset(1e12)),
    Case("f64-1e12-N1e6", F64, (1000000, 2), "1e12 + randn", _offset(1e12),
         note="N = 10^6 rows"),
    Case("f64-1e8-C1024", F64, (2000, 1024), "1e8 + randn", _offset(1e8),
         note="1024 channels: 32 tiles of 64 rows per channel"),
    Case("f64-1e12-3d", F64, (100, 4, 100), "1e12 + randn", _offset(1e12)),
    Case("f64-tiny", F64, (1000, 4), "1e-150 * randn", _offset(0.0, 1e-150), eps=1e-310,
         note="var 1e-300; eps subnormal"),
    Case("f64-subnormal", F64, (1000, 4), "1e-310 * randn", _offset(0.0, 1e-310),
         eps=1e-300, note="subnormal inputs; eps dominates var (y = x / sqrt(eps))"),
    Case("f64-1e150", F64, (10000, 4), "1e150 * randn", _offset(0.0, 1e150)),
]
CASE_BY_ID = {c.id: c for c in CASES}

#: known limitation (not in CASES, tested as an expected failure): the sum of squared
#: deviations of float64 data overflows double once n * var exceeds DBL_MAX.
F64_OVERFLOW = Case("f64-1e153", F64, (10000, 2), "1e153 * randn", _offset(0.0, 1e153),
                    note="var 1e306 is finite, n * var is not")

#: constant channels: value, dtype, shape. The output must be exactly ``bias``.
CONSTANTS = [(v, dt, shape)
             for dt, values in ((F32, [0.0, -3.25, 1e3, 1e7, 3e19, 1e30, 1e-40, -1e-45]),
                                (F64, [0.1, -3.25, 1e3, 1e7, 1e12, 1e300, 1e-310, 5e-324]))
             for v in values
             for shape in ((200000, 3), (64, 3, 1000))]


# ---------------------------------------------------------------------------------------
# the reference

def channel_rows(x):
    """float64 (C, n) copy: row c holds every value of channel c (axis 1)."""
    x = np.asarray(x, dtype=np.float64)
    x3 = x[:, :, None] if x.ndim == 2 else x.reshape(x.shape[0], x.shape[1], -1)
    return np.ascontiguousarray(x3.transpose(1, 0, 2).reshape(x3.shape[1], -1))


def _dec(f):
    return Decimal(f.numerator) / Decimal(f.denominator) if isinstance(f, Fraction) \
        else Decimal(f)


def _split_pow2(d):
    """Decimal d > 0 -> (M, q) with d = M * 2**q, M a float in [1, 2)."""
    q = int((d.ln() / Decimal(2).ln()).to_integral_value(rounding=ROUND_FLOOR))
    M = float(d / Decimal(2) ** q)
    if M >= 2.0:
        M, q = M / 2, q + 1
    elif M < 1.0:
        M, q = M * 2, q - 1
    return M, q


class ChannelRef:
    """Reference statistics of one channel."""

    __slots__ = ("dev", "e", "inv_M", "inv_q", "mean", "n", "std", "var_b", "var_u", "xmax")


def reference(x, eps):
    """Per-channel :class:`ChannelRef` for an (N, C) or (N, C, L) array."""
    rows = channel_rows(x)
    out = []
    with localcontext() as ctx:
        ctx.prec = 50
        for row in rows:
            r = ChannelRef()
            n = row.size
            r.n = n
            amax = float(np.max(np.abs(row))) if n else 0.0
            r.xmax = amax
            # scale by 2**e so that max |x| is in [0.5, 1): exact, no over/underflow
            e = 0 if amax == 0 else -math.frexp(amax)[1]
            xs = np.ldexp(row, e)
            s_hi = math.fsum(xs)
            s_lo = math.fsum(np.concatenate([xs, [-s_hi]]))
            mean_s = (Fraction(s_hi) + Fraction(s_lo)) / n
            m_hi = float(mean_s)
            m_lo = float(mean_s - Fraction(m_hi))
            dev = (xs - m_hi) - m_lo
            ssd = math.fsum(dev * dev)
            scale2 = Decimal(2) ** (-2 * e)
            var_b = Decimal(ssd) / n * scale2
            r.e = e
            r.dev = dev
            r.mean = float(mean_s * Fraction(2) ** -e)
            r.var_b = float(var_b)
            r.var_u = float(Decimal(ssd) / (n - 1) * scale2) if n > 1 else math.nan
            r.std = float(var_b.sqrt())
            # 1/sqrt(var + eps) in the scaled domain: y = dev * inv, dev in scaled units
            inv = 1 / (Decimal(ssd) / n + Decimal(eps) / scale2).sqrt()
            r.inv_M, r.inv_q = _split_pow2(inv)
            out.append(r)
    return out


def reference_y(x, eps, weight=None, bias=None, refs=None):
    """Reference output, float64, in the layout of ``x`` (as (N, C) or (N, C, L))."""
    refs = reference(x, eps) if refs is None else refs
    C = len(refs)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    b = np.zeros(C) if bias is None else np.asarray(bias, dtype=np.float64)
    rows = np.empty((C, refs[0].n if C else 0))
    for c, r in enumerate(refs):
        rows[c] = np.ldexp(r.dev * (r.inv_M * w[c]), r.inv_q) + b[c]
    shape3 = x.shape if x.ndim == 3 else x.shape + (1,)
    N, _, L = shape3
    y = rows.reshape(C, N, L).transpose(1, 0, 2)
    return y.reshape(x.shape)


# ---------------------------------------------------------------------------------------
# measuring an implementation

def errors(y, rm, rv, x, eps, refs=None):
    """(y max abs err / RMS(y_ref), running_var max rel err, running_mean max err in std
    units).

    ``y``/``rm``/``rv`` come from a training forward with weight 1, bias 0, momentum 1.
    """
    refs = reference(x, eps) if refs is None else refs
    y_ref = reference_y(x, eps, refs=refs)
    y = np.asarray(y, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(y_ref))))
    y_err = float(np.max(np.abs(y - y_ref))) if np.all(np.isfinite(y)) else math.inf
    y_err = y_err / rms if rms > 0 else y_err
    rv_err = 0.0
    rm_err = 0.0
    dtype = np.asarray(rv).dtype
    for c, r in enumerate(refs):
        v = float(rv[c])
        with np.errstate(over="ignore"):  # correctly rounded, may be 0 or inf
            rounded = float(np.asarray(r.var_u).astype(dtype))
        if rounded == 0 or math.isinf(rounded) or not math.isfinite(v):
            # not representable in the storage dtype: only the correctly rounded value counts
            e = 0.0 if v == rounded else math.inf
        else:
            e = abs(v - r.var_u) / r.var_u
        rv_err = max(rv_err, e)
        m = float(rm[c])
        rm_err = max(rm_err, abs(m - r.mean) / r.std if r.std else abs(m - r.mean))
    return y_err, rv_err, rm_err


def run_cybn(x, eps, n_threads=None):
    import cybn

    m = cybn.BatchNorm1d(x.shape[1], eps=eps, momentum=1.0, dtype=x.dtype,
                         n_threads=n_threads)
    y = m(x)
    return y, m.running_mean.copy(), m.running_var.copy()


def run_torch(x, eps):
    import torch

    dt = torch.float64 if x.dtype == F64 else torch.float32
    m = torch.nn.BatchNorm1d(x.shape[1], eps=eps, momentum=1.0, dtype=dt)
    with torch.no_grad():
        y = m(torch.from_numpy(x)).numpy()
    return y, m.running_mean.numpy().copy(), m.running_var.numpy().copy()


def measure(case, impl="cybn", result=None):
    """(y, rv, rm) errors of ``impl`` ("cybn" or "torch") on the case (see errors())."""
    x = case.data()
    if result is None:
        run = run_cybn if impl == "cybn" else run_torch
        result = run(x, case.eps)
    y, rm, rv = result
    return errors(y, rm, rv, x, case.eps, case.refs())


def kappa(case):
    """max over channels of |mean| / std of the case's data."""
    return max(abs(r.mean) / r.std for r in case.refs())


def constant_data(v, dt, shape):
    """Channels constant at v, -v and v, weight (2, -0.5, 1), bias (0.5, -1.25, 3)."""
    dt = np.dtype(dt)
    x = np.empty(shape, dtype=dt)
    for c, s in enumerate((1, -1, 1)):
        x[:, c] = s * dt.type(v)
    w = np.array([2.0, -0.5, 1.0], dtype=dt)
    b = np.array([0.5, -1.25, 3.0], dtype=dt)
    return x, w, b


# ---------------------------------------------------------------------------------------
# the stated bounds (cybn); docs/accuracy.md prints them, check_bounds implements them

def tiles_per_channel(shape, itemsize=4):
    """M: how many tiles one channel's statistics are merged from, as the kernel plans them
    (``cybn._kernels.plan_info``: the tiling is read from the kernel, not copied). The
    tile count is used for every schedule; a slab takes one channel as one tile, for which
    it is an upper bound, so the bounds stay valid and identical across schedules."""
    from cybn import _kernels

    N, C = shape[0], shape[1]
    L = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    plan = _kernels.plan_info(max(N, 1), max(C, 1), max(L, 1), itemsize, False)
    return plan["bn"] * plan["bl"]


#: (quantity, bound) as printed in docs/accuracy.md
BOUNDS = [
    ("y (output)",
     "|y - y_ref| <= 2 u |y_ref| + |w| invstd ((2 + M) u64 |mean| + a std + eta64) + 2 u64 |b|"),
    ("running_var (unbiased batch variance, momentum 1)",
     "|rv - var_u| <= (2 u + a + 16 u64 kappa / sqrt(n)) var_u + eta"),
    ("running_mean (batch mean, momentum 1)",
     "|rm - mean| <= (2 u + (2 + M) u64) |mean| + a std + eta"),
]


def check_bounds(case, y, rm, rv):
    """Assert the stated bounds for a cybn result of ``case`` (weight 1, bias 0); return
    the largest error / bound ratio per quantity."""
    x = case.data()
    refs = case.refs()
    y_ref = reference_y(x, case.eps, refs=refs)
    u = UNIT[case.dtype]
    M = tiles_per_channel(x.shape)
    tiny = float(np.finfo(case.dtype).smallest_subnormal)
    rows_y = channel_rows(y)
    rows_ref = channel_rows(y_ref)
    ratios = {"y": 0.0, "running_var": 0.0, "running_mean": 0.0}
    for c, r in enumerate(refs):
        if r.std == 0 or math.isinf(r.var_b):
            raise ValueError(f"{case.id}: the bounds need a finite, non-zero variance")
        kap = abs(r.mean) / r.std
        # accumulation over n values in double (probabilistic, x8), and a few roundings in
        # the input's precision (float32 input forms deviations and products in float32)
        acc = 8 * math.sqrt(r.n) * U64 + 4 * u
        invstd = math.ldexp(r.inv_M, r.inv_q + r.e)  # 1/sqrt(var + eps), unscaled
        bound = (2 * u * np.abs(rows_ref[c])
                 + invstd * ((2 + M) * U64 * abs(r.mean) + acc * r.std + ETA64))
        err = np.abs(rows_y[c] - rows_ref[c])
        assert np.all(np.isfinite(rows_y[c])), (case.id, c, "y not finite")
        assert np.all(err <= bound), (case.id, c, "y", float(np.max(err / bound)))
        ratios["y"] = max(ratios["y"], float(np.max(err / bound)))
        if math.isinf(r.var_u) or r.var_u > float(np.finfo(case.dtype).max):
            assert math.isinf(rv[c]) and rv[c] > 0, (case.id, c, "running_var", rv[c])
        else:
            e = abs(float(rv[c]) - r.var_u)
            rel = 2 * u + acc + 16 * U64 * kap / math.sqrt(r.n)
            assert e <= rel * r.var_u + tiny, (case.id, c, "running_var", e / (rel * r.var_u))
            ratios["running_var"] = max(ratios["running_var"], e / (rel * r.var_u + tiny))
        e = abs(float(rm[c]) - r.mean)
        b = (2 * u + (2 + M) * U64) * abs(r.mean) + acc * r.std + tiny
        assert e <= b, (case.id, c, "running_mean", e / b)
        ratios["running_mean"] = max(ratios["running_mean"], e / b)
    return ratios
