"""What the legacy conventions share: argument conversion, dtypes, and the cache type.

Legacy layer code is plain NumPy arithmetic, so it accepts whatever NumPy's operators
accept (integer arrays, lists for per-channel values, (1, D) parameters that broadcast)
and its results carry NumPy's type promotion. The helpers here reproduce exactly that
much, and reject what the legacy arithmetic would turn into NaN, inf or an unrelated
exception, with an error that names the argument.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import _threads
from .. import functional as F

_F64 = np.dtype(np.float64)


def _real(dt):
    """float16/32/64 (either byte order) or an integer dtype: what legacy arithmetic takes
    and cybn can compute (longdouble and complex are refused, not silently narrowed)."""
    return dt.kind in "iu" or F._compute_dtype(dt) is not None


def _shapes_text(shapes):
    return " or ".join(str(s) for s in shapes)


def check_x(x, func, ndims, name="x"):
    """x as the legacy code reads it: an ndarray of real numbers with ``ndims`` dims.

    Returns its float dtype: x's own dtype, or float64 for integers (NumPy's mean of
    an integer array is float64, so the legacy statistics are).
    """
    if type(x) is not np.ndarray:
        if isinstance(x, (np.matrix, np.ma.MaskedArray)):
            F._check_input(x, f"{func}: {name}")  # raises the functional API's TypeError
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{func}: {name} must be a NumPy array of floats or integers, got "
                            f"{type(x).__module__}.{type(x).__qualname__}")
    dt = x.dtype
    if not _real(dt):
        raise TypeError(f"{func}: {name} must be an array of float16/32/64 or integers, "
                        f"got dtype {dt}")
    if x.ndim not in ndims:
        expected = (f"at least {ndims.start}D" if isinstance(ndims, range)
                    else " or ".join(f"{d}D" for d in ndims))
        raise ValueError(f"{func}: expected {expected} {name} (got {x.ndim}D {name})")
    if dt.kind != "f":
        return _F64
    return dt if dt.isnative else dt.newbyteorder("=")


def as_real(a, name, func):
    """An ndarray of real numbers from an ndarray, list, tuple or Python/NumPy scalar."""
    if type(a) is not np.ndarray:
        if isinstance(a, (np.matrix, np.ma.MaskedArray)):
            F._check_input(a, f"{func}: {name}")
        if isinstance(a, bool) or a is None:
            raise TypeError(f"{func}: {name} must be an array of real numbers, "
                            f"got {type(a).__name__}")
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{func}: {name} must be an array of real numbers, "
                            f"got {type(a).__name__} ({exc})") from None
    if not _real(a.dtype):
        raise TypeError(f"{func}: {name} must be an array of float16/32/64 or integers, "
                        f"got dtype {a.dtype}")
    return a


def plain(dt, C, *arrays):
    """Whether every array is an ndarray of shape (C,) and dtype dt: the common call, which
    needs no conversion, promotion or reshaping."""
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dt or a.shape != (C,):
            return False
    return True


def per_channel(a, name, func, C, shapes, what):
    """Validate a per-channel value; return (ndarray of C values, the caller's shape).

    ``shapes`` are the accepted shapes ((C,) first); a scalar (0-d) value is accepted
    too and broadcast, as the legacy ``gamma * x_hat`` broadcasts it; its caller's
    shape is reported as (C,), the shape the legacy reductions give its gradient.
    ``what`` describes where C comes from, for the message.
    """
    a = as_real(a, name, func)
    shape = a.shape
    if shape == shapes[0]:
        return a, shape
    if shape in shapes:
        return a.reshape(C), shape
    if a.ndim == 0:
        return np.broadcast_to(a, (C,)), shapes[0]
    raise ValueError(f"{func}: {name} must have shape {_shapes_text(shapes)} ({what}), "
                     f"got shape {shape}")


def promoted(value, values):
    """What takes part in NumPy's promotion for a per-channel argument: a Python int or
    float is a "weak" scalar (it does not widen float32 data), anything else its dtype."""
    return value if type(value) in (int, float) else values.dtype


def result_dtype(*dtypes):
    """NumPy's promotion of the operands' dtypes, as the legacy expressions compute it.

    The first dtype is always a float one (x's float dtype), and integers promote to
    float64 with any float (NumPy's rule for arrays), so the result is float16, float32
    or float64, in native byte order.
    """
    return np.result_type(*dtypes).newbyteorder("=")


def check_eps(eps, func, name="eps"):
    """eps >= 0 and finite (0 is accepted: the legacy formula is defined unless a
    variance is 0, which the callers check after computing it)."""
    if type(eps) is not float:
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"{func}: {name} must be a real number, got {type(eps).__name__}")
        eps = float(eps)
    if not 0 <= eps < float("inf"):
        raise ValueError(f"{func}: {name} must be finite and >= 0, got {eps}")
    return eps


def check_momentum(momentum, func, name="momentum"):
    if type(momentum) is not float:
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            raise TypeError(f"{func}: {name} must be a real number, "
                            f"got {type(momentum).__name__}")
        momentum = float(momentum)
    if momentum - momentum != 0:
        raise ValueError(f"{func}: {name} must be finite, got {momentum}")
    return momentum


def narrow(a, dtype, name, func):
    """``a`` in ``dtype`` (the dtype the legacy code would have written), refusing values
    that overflow it (float16 running variances: the legacy result would be inf)."""
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):
        r = a.astype(dtype)
    if not np.isfinite(r).all() and np.isfinite(a).all():
        raise ValueError(
            f"{func}: the updated {name} overflows {dtype} (largest {np.abs(a).max():.4g}): "
            "the convention's result would be inf; nothing was updated")
    return r


def zero_variance(stats, eps, func):
    """Raise when eps is 0 and a channel has zero batch variance (1/sqrt(0))."""
    if eps == 0:
        bad = np.flatnonzero(np.isinf(stats[1]))
        if bad.size:
            raise ValueError(
                f"{func}: feature(s) {bad.tolist()} of x are constant over the batch and "
                "eps is 0: the convention's formula divides 0 by 0 there (NaN); use eps > 0")


def n_threads():
    """Threads for a legacy call: the package default when the user set one
    (:func:`cybn.set_num_threads`), else 1.

    Legacy NumPy networks interleave batch norm with matrix products, and a multi-threaded
    BLAS (OpenBLAS) keeps its threads spinning for a while after each product. An OpenMP
    team started then waits for a core: measured here (2 CPUs, OpenBLAS with 2 threads),
    a (100, 1024) test-mode forward right after a matmul took 4.3 ms with 2 threads and
    0.13 ms with 1, a (256, 1024) training forward+backward 2.1-11 ms against 1.0 ms (the
    NumPy reference: 4.1 ms). One thread is never slower than the legacy code it replaces.
    """
    default = _threads._default
    return 1 if default is None else default


def forward(x2, cdt, weight, bias, running_mean, running_var, training, factor, eps, func,
            rv_name):
    """Run cybn's validated forward on an (N, C, ...) array ``x2``; return (out, stats, saved).

    The legacy statistics are the batch mean and the *biased* variance; the running
    statistics, when given in training, are updated in place with weight ``factor`` on
    the batch. Where the legacy formula gives NaN or inf, ValueError is raised before
    anything is updated: an empty training batch, non-finite batch statistics (NaN or
    Inf in x, or overflow: NaN over the whole feature), eps = 0 with a constant feature,
    and in test mode ``running_var + eps <= 0`` (``rv_name`` names that argument).
    """
    if training:
        if x2.size == 0 and x2.shape[1]:
            raise ValueError(f"{func}: x has no rows (shape {x2.shape}): the batch mean of "
                             "an empty batch is NaN")
    elif running_var.size and not running_var.min() + eps > 0:
        raise ValueError(
            f"{func}: {rv_name} + eps must be > 0 for every feature, got minimum "
            f"{running_var.min()} with eps {eps}: sqrt({rv_name} + eps) would be NaN or 0")
    x = x2 if x2.dtype == cdt else x2.astype(cdt)
    try:
        out, stats, saved, _, _ = F._forward(
            x, weight, bias, running_mean, running_var, training, factor, eps,
            n_threads=n_threads(), unbiased=False, check_finite=training, legacy=True)
    except ValueError as exc:
        channels = getattr(exc, "channels", None)  # set only for non-finite batches
        if channels is None:
            raise
        raise ValueError(
            f"{func}: x holds NaN or Inf (or values whose square overflows) in "
            f"feature(s) {channels}: the convention's batch statistics would be NaN there; "
            "nothing was updated") from None
    if training:
        zero_variance(stats, eps, func)
    return out, stats, saved


def backward(dout, saved, weight, stats, training, cdt):
    """cybn's validated backward; returns (dx, dweight, dbias), all in ``cdt``."""
    return F._backward(dout, saved, weight, stats, training, True, True, cdt, n_threads())


_SWITCH_HINT = (
    "forward and backward must be switched together: cybn.compat.patch(<your package>) "
    "replaces every batch-norm function of the convention at once")


class Cache:
    """A cache made by a :mod:`cybn.compat` forward: opaque, read only by its backward.

    It holds the forward's input by reference (no copy of x or x-hat) and per-feature
    statistics. Unpacking or indexing it, as a legacy backward would, raises
    TypeError saying that forward and backward must be switched together.
    """

    __slots__ = ("cdt", "gamma", "kind", "saved", "shapes", "stats", "training")

    def __init__(self, kind, saved, gamma, stats, training, cdt, shapes):
        self.kind = kind          # the forward that made it
        self.saved = saved        # functional._SavedInput
        self.gamma = gamma        # (C,) weight as the kernel read it
        self.stats = stats        # float64 rows (center, invstd, ...) of shape (k, C)
        self.training = training
        self.cdt = cdt            # the forward's compute dtype
        self.shapes = shapes      # (gamma's shape, beta's shape) for the gradients

    def _refuse(self, *args):
        raise TypeError(
            f"this cache was made by cybn.compat.{self.kind} and is read only by cybn.compat's "
            f"backward: a legacy backward function received it. {_SWITCH_HINT}")

    __iter__ = _refuse
    __getitem__ = _refuse

    def __repr__(self):
        C = self.stats[0].shape[0]
        return (f"<cybn.compat cache from {self.kind}: input shape {self.saved.input.shape}, "
                f"{C} features, {'train' if self.training else 'test'} mode>")


def check_cache(cache, kinds, func):
    if type(cache) is not Cache:
        raise TypeError(
            f"{func}: cache must come from cybn.compat.{kinds[0]}, got "
            f"{type(cache).__module__}.{type(cache).__qualname__} (made by another "
            f"implementation of the forward?): {_SWITCH_HINT}")
    if cache.kind not in kinds:
        raise TypeError(f"{func}: cache was made by cybn.compat.{cache.kind}; {func} reads "
                        f"caches of {' or '.join(kinds)}")
    return cache


def check_dout(dout, shape, func):
    check_x(dout, func, (len(shape),), "dout")
    if dout.shape != shape:
        raise ValueError(f"{func}: dout must have the shape of x {shape}, got {dout.shape}")
