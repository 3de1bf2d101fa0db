"""Shared helpers of the hardening tests (test_properties.py, test_stateful.py): hypothesis
settings, memory layouts, presentations of an (N, C, L) batch to the modules, and error bounds.

Hypothesis settings
-------------------
Every hypothesis test of test_properties.py and test_stateful.py uses :func:`hsettings`:
``derandomize=True`` (the examples are a fixed function of the test, so a failure in CI
reproduces on any machine with the same Hypothesis version), no example database (nothing
is written next to the checkout), no deadline, and ``print_blob=True`` (a failure prints an
``@reproduce_failure`` line). The example counts are written at each test and scaled by the
profile named in ``CYBN_HYPOTHESIS``:

* ``ci`` (default): the counts as written;
* ``quick``: a fifth of them (the bounds-checked build in tools/sanitize.sh, .ci/run);
* ``thorough``: ten times as many, randomized, with a directory database in
  ``$CYBN_HYPOTHESIS_DB`` (default ``.hypothesis/cybn``) so that a failure found once is
  replayed first on the next run.
"""

import os

import numpy as np
from _reference import backward_batch, backward_eval, batch_stats, reduce_c
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("CYBN_HYPOTHESIS", "ci")
_SCALE = {"ci": 1.0, "quick": 0.2, "thorough": 10.0}
if PROFILE not in _SCALE:
    raise RuntimeError(f"CYBN_HYPOTHESIS must be one of {sorted(_SCALE)}, got {PROFILE!r}")

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def hsettings(max_examples, **kwargs):
    """Settings for one hypothesis test: ``max_examples`` scaled by the profile."""
    n = max(5, round(max_examples * _SCALE[PROFILE]))
    if PROFILE == "thorough":
        db = DirectoryBasedExampleDatabase(
            os.environ.get("CYBN_HYPOTHESIS_DB", os.path.join(".hypothesis", "cybn")))
        base = {"derandomize": False, "database": db}
    else:
        base = {"derandomize": True, "database": None}
    base.update(deadline=None, print_blob=True, suppress_health_check=_HEALTH,
                max_examples=n)
    base.update(kwargs)
    return settings(**base)


# ---------------------------------------------------------------------------------------
# dtypes and unit roundoff

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
#: unit roundoff (half an ulp of 1) per dtype
UNIT = {F16: 2.0**-11, F32: 2.0**-24, F64: 2.0**-53}
#: dtype the kernels compute in, per input/parameter dtype (float16 -> float32)
COMPUTE = {F16: F32, F32: F32, F64: F64}


# ---------------------------------------------------------------------------------------
# memory layouts: an array with exactly the values of `data` and a chosen memory layout

LAYOUTS = ("C", "F", "channels_last", "rows_step2", "last_step2", "negative_rows",
           "negative_all", "transposed_view")


def as_layout(data, layout, readonly=False):
    """A new array equal (bit for bit) to ``data`` laid out in memory as ``layout``."""
    d = np.asarray(data)
    nd = d.ndim
    if layout == "C":
        a = np.array(d, order="C", copy=True)
    elif layout == "F":
        a = np.array(d, order="F", copy=True)
    elif layout == "channels_last":
        # axis 1 innermost in memory: (N, L..., C) storage viewed as (N, C, L...)
        perm = (0,) + tuple(range(2, nd)) + (1,)
        a = np.ascontiguousarray(d.transpose(perm)).transpose(np.argsort(perm))
    elif layout == "transposed_view":
        # reversed axis order in memory (for 2-D the same as Fortran, but a view of a
        # C array, like x.T of a torch tensor)
        a = np.ascontiguousarray(d.transpose()).transpose()
    elif layout in ("rows_step2", "last_step2"):
        axis = 0 if layout == "rows_step2" else nd - 1
        shape = list(d.shape)
        shape[axis] *= 2
        big = np.full(shape, 7.0, dtype=d.dtype)
        sl = tuple(slice(None, None, 2) if i == axis else slice(None) for i in range(nd))
        big[sl] = d
        a = big[sl]
    elif layout in ("negative_rows", "negative_all"):
        axes = (0,) if layout == "negative_rows" else tuple(range(nd))
        sl = tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(nd))
        a = np.ascontiguousarray(d[sl])[sl]
    else:
        raise ValueError(layout)
    assert a.shape == d.shape and a.dtype == d.dtype
    if readonly:
        a.flags.writeable = False
    return a


def memory_order(a):
    """Axis order of ``a`` in memory (outermost first) if it is contiguous in some axis
    order with non-negative strides, else None."""
    if a.flags.c_contiguous:
        return tuple(range(a.ndim))
    if any(s < 0 for s in a.strides):
        return None
    perm = tuple(sorted(range(a.ndim), key=lambda i: -abs(a.strides[i])))
    if a.transpose(perm).flags.c_contiguous:
        return perm
    return None


def same_layout(out, inp):
    """docs/semantics.md §9: the output follows the input's layout where the input is (permuted-)
    contiguous, else it is C order."""
    order = memory_order(inp)
    if order is None:
        return out.flags.c_contiguous
    if inp.size == 0 or any(s == 1 for s in inp.shape):
        # size-0/size-1 axes make the axis order ambiguous: require contiguity only
        return memory_order(out) is not None
    return out.transpose(order).flags.c_contiguous


# ---------------------------------------------------------------------------------------
# presenting a logical (N, C, L) batch to cybn: module class, axis, shape

#: name -> (module class name, ndim of the presented array, channels last?)
PRESENTATIONS = {
    "1d-NC": ("BatchNorm1d", 2, False),
    "1d-NCL": ("BatchNorm1d", 3, False),
    "1d-NLC": ("BatchNorm1d", 3, True),
    "2d-NCHW": ("BatchNorm2d", 4, False),
    "2d-NHWC": ("BatchNorm2d", 4, True),
    "3d-NCDHW": ("BatchNorm3d", 5, False),
}


def split_L(L, ndim):
    """Spatial shape with ``ndim - 2`` axes whose product is L (L's factors spread)."""
    k = ndim - 2
    if k == 0:
        assert L == 1
        return ()
    dims = [1] * k
    rest = L
    for i in range(k - 1):
        f = next((d for d in (2, 3, 5, 7) if rest % d == 0), 1)
        dims[i] = f
        rest //= f
    dims[k - 1] = rest
    return tuple(dims)


def present(ncl, name):
    """(array for the module, axis) for a logical (N, C, L) array, C-contiguous."""
    _cls, ndim, last = PRESENTATIONS[name]
    N, C, L = ncl.shape
    a = ncl.reshape((N, C) + split_L(L, ndim))
    if last:
        return np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1
    return np.ascontiguousarray(a), 1


def unpresent(a, name):
    """Back from the presented shape to the logical (N, C, L)."""
    _cls, _ndim, last = PRESENTATIONS[name]
    if last:
        a = np.moveaxis(a, -1, 1)
    return a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:])))


# ---------------------------------------------------------------------------------------
# error bounds

def check_bound(actual, expected, bound, what):
    """Assert ``|actual - expected| <= bound`` elementwise (NaN where expected is NaN).

    ``bound`` broadcasts against ``expected``; the message names the worst element and its
    error in units of its bound.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), f"{what}: NaN pattern differs"
    inf = np.isinf(expected)
    assert np.array_equal(actual[inf], expected[inf]), f"{what}: Inf pattern differs"
    fin = ~(nan | inf)
    err = np.abs(actual[fin] - expected[fin])
    b = bound[fin]
    bad = err > b
    if bad.any():
        ratio = np.where(b > 0, err / np.where(b > 0, b, 1), np.inf)
        i = int(np.argmax(ratio))
        idx = np.flatnonzero(fin.ravel())[i]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the bound; worst at "
            f"flat index {idx}: actual {actual.ravel()[idx]!r}, expected "
            f"{expected.ravel()[idx]!r}, |err| {err[i]:.3g} = {ratio[i]:.3g} x bound "
            f"{b[i]:.3g}")


def bcast(v, ndim):
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def chan_max(a, ndim=None):
    """Per-channel max of |a| over every axis but 1 (NaN ignored), broadcastable against a."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    if a.size == 0:
        return np.zeros((1, a.shape[1]) + (1,) * (a.ndim - 2))
    axes = (0,) + tuple(range(2, a.ndim))
    return np.fmax.reduce(a, axis=axes, keepdims=True)  # NaN-ignoring


# ---------------------------------------------------------------------------------------
# error bounds against the float64 oracle (see test_properties.py's docstring)

#: relative accumulation error allowed for double sums
TOL64 = 1e-12
#: per compute dtype of the input (float16 and float32 input compute in float32): the
#: allowance for rounding in the terms that cancel. float32 input is computed partly in
#: float32 ("where it is exact", cybn 601cf54): deviations and products are formed and
#: combined in float32, then accumulated in double, so a few float32 roundings of the terms
#: show up, not just double ones.
TOLC = {F32: 8 * UNIT[F32], F64: TOL64}
#: smallest subnormal per dtype (absolute floor of the bounds)
TINY = {F16: 2.0**-24, F32: 2.0**-149, F64: 5e-324}


def spread(x, center):
    """Per-channel max |x - center| (broadcastable against x): the scale of the deviations."""
    return chan_max(x - bcast(center, x.ndim))


def y_bound(y_ref, x, center, a, b, out_dtype, comp=F64):
    """Bound for y = (x - center) * a + b (a = w * invstd), see test_properties.py.

    ``comp`` is the compute dtype of the input (COMPUTE[input dtype]): its rounding applies
    to the deviations and the affine terms; double rounding (TOL64) to the centre itself.
    """
    nd = x.ndim
    a_ = np.abs(bcast(a, nd))
    S = spread(x, center) * a_ + np.abs(bcast(b, nd))
    D = (chan_max(x) + np.abs(bcast(center, nd))) * a_
    return (2 * UNIT[out_dtype] * np.abs(y_ref) + TOLC[np.dtype(comp)] * S + TOL64 * D
            + TINY[out_dtype])


def check_train_grads(gi, gw, gb, x, dy, w, eps, gi_dtype, gw_dtype, what, comp=F64):
    """grad_input/grad_weight/grad_bias of the batch-statistics formula vs the oracle."""
    tol = TOLC[np.dtype(comp)]
    nd = x.ndim
    C = x.shape[1]
    w64 = np.ones(C) if w is None else np.asarray(w, dtype=np.float64)
    dx_ref, gw_ref, gb_ref = backward_batch(x, dy, w64, eps)
    mean, var_b, _ = batch_stats(x)
    invstd = 1.0 / np.sqrt(var_b + eps)
    n = max(1, x.size // max(C, 1))
    A = bcast(np.abs(w64) * invstd, nd)
    Xs = spread(x, mean) * bcast(invstd, nd)                          # max |xhat|
    Xb = (chan_max(x) + np.abs(bcast(mean, nd))) * bcast(invstd, nd)  # with the centre
    adx = np.abs(dy)
    D = bcast(reduce_c(adx) / n, nd)
    Es = bcast(reduce_c(adx * Xs) / n, nd)
    Eb = bcast(reduce_c(adx * Xb) / n, nd)
    bound_gi = (2 * UNIT[gi_dtype] * np.abs(dx_ref) + tol * A * (adx + D + Xs * (Es + D))
                + TOL64 * A * Xb * (Eb + D) + TINY[gi_dtype])
    check_bound(gi, dx_ref, bound_gi, what + " grad_input")
    check_bound(gw, gw_ref, 2 * UNIT[gw_dtype] * np.abs(gw_ref) + tol * reduce_c(adx * Xs)
                + TOL64 * reduce_c(adx * Xb) + TINY[gw_dtype], what + " grad_weight")
    check_bound(gb, gb_ref, 2 * UNIT[gw_dtype] * np.abs(gb_ref) + tol * reduce_c(adx)
                + TINY[gw_dtype], what + " grad_bias")


def check_eval_grads(gi, gw, gb, x, dy, rm, rv, w, eps, gi_dtype, gw_dtype, what, comp=F64):
    tol = TOLC[np.dtype(comp)]
    nd = x.ndim
    C = x.shape[1]
    w64 = np.ones(C) if w is None else np.asarray(w, dtype=np.float64)
    rm64 = np.asarray(rm, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(rv, dtype=np.float64) + eps)
    dx_ref, gw_ref, gb_ref = backward_eval(x, dy, rm64, rv, w64, eps)
    adx = np.abs(dy)
    Xs = spread(x, rm64) * bcast(invstd, nd)
    Xb = (chan_max(x) + np.abs(bcast(rm64, nd))) * bcast(invstd, nd)
    check_bound(gi, dx_ref, 2 * UNIT[gi_dtype] * np.abs(dx_ref)
                + tol * adx * bcast(np.abs(w64) * invstd, nd) + TINY[gi_dtype],
                what + " grad_input")
    check_bound(gw, gw_ref, 2 * UNIT[gw_dtype] * np.abs(gw_ref) + tol * reduce_c(adx * Xs)
                + TOL64 * reduce_c(adx * Xb) + TINY[gw_dtype], what + " grad_weight")
    check_bound(gb, gb_ref, 2 * UNIT[gw_dtype] * np.abs(gb_ref) + tol * reduce_c(adx)
                + TINY[gw_dtype], what + " grad_bias")


def check_running(rm_new, rv_new, rm_old, rv_old, mean, var_u, f, dtype, what, x, comp=F64):
    """The running-statistics update (1 - f) * old + f * batch, rounded to ``dtype``.

    ``x``: the batch as float64 (N, C, L). The batch mean is good to ``tol`` times the
    spread of the deviations plus double rounding of max |x|; the oracle's own variance
    error is about (1e-12 max|x|)^2 (its uncorrected two-pass: a constant channel gets
    1e-32, not 0)."""
    tol = TOLC[np.dtype(comp)]
    xmax = np.abs(x).max(axis=(0, 2))
    dev = spread(x, mean).reshape(-1)
    rm_ref = (1 - f) * rm_old + f * mean
    rv_ref = (1 - f) * rv_old + f * var_u
    u = UNIT[np.dtype(dtype)]
    tiny = TINY[np.dtype(dtype)]
    check_bound(rm_new, rm_ref, 2 * u * np.abs(rm_ref) + tol * abs(1 - f) * np.abs(rm_old)
                + abs(f) * (tol * dev + TOL64 * xmax) + tiny, what + " running_mean")
    check_bound(rv_new, rv_ref, 2 * u * np.abs(rv_ref) + tol * (
        abs(1 - f) * np.abs(rv_old) + abs(f) * np.abs(var_u) * 10)
        + abs(f) * (TOL64 * xmax) ** 2 + tiny, what + " running_var")
