"""Plain float64 NumPy oracle for the cybn test suite.

Nothing in here imports cybn or torch.  Every formula is written out from
docs/semantics.md (§3-§5) in the most direct way, in float64, with two
passes (mean first, then the squared deviations).

Statistics are taken over every axis except axis 1: axis 0 for (N, C) and
axes (0, 2) for (N, C, L).  ``n`` is the number of elements per channel.

The cs231n-convention reference (``cs231n_*``) mirrors the classic course
assignment: momentum 0.9 weights the OLD running value and the running
variance is the BIASED batch variance.
"""

import math

import numpy as np

F64 = np.float64

# --------------------------------------------------------------------------
# tolerances, per dtype of the result being checked
# --------------------------------------------------------------------------

#: (rtol, atol-per-unit-magnitude) used by :func:`assert_close`.
TOL = {
    np.dtype(np.float64): (1e-12, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float16): (2e-3, 2e-3),
}


def tol_for(dtype):
    return TOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None, scale=None, rtol=None, atol=None, err_msg=""):
    """Compare ``actual`` with a float64 ``expected``.

    ``dtype`` selects the tolerance (defaults to ``actual.dtype``).  The
    absolute tolerance is multiplied by ``scale`` (default: the largest
    magnitude in ``expected``, at least 1), so that the check is relative to
    the size of the quantity.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=F64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    if dtype is None:
        dtype = actual.dtype
    r, a = tol_for(dtype)
    if rtol is not None:
        r = rtol
    if atol is not None:
        a = atol
    if scale is None:
        finite = expected[np.isfinite(expected)]
        scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(
        actual.astype(F64), expected, rtol=r, atol=a * scale, err_msg=err_msg
    )


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------


def channel_matrix(x):
    """float64 C-contiguous (C, n) copy: row c holds every element of channel c."""
    x = np.asarray(x, dtype=F64)
    x3 = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))  # any ndim >= 2
    N, C, L = x3.shape
    return np.ascontiguousarray(x3.transpose(1, 0, 2).reshape(C, N * L))


def bcast(v, ndim):
    """Reshape a (C,) vector so that it broadcasts along axis 1 of an ndim-D array."""
    v = np.asarray(v, dtype=F64)
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def reduce_c(a):
    """Sum of a (N, C) or (N, C, L) array over every axis except 1, in float64."""
    return channel_matrix(a).sum(axis=1)


def n_per_channel(shape):
    n = shape[0]
    for s in shape[2:]:
        n *= s
    return n


# --------------------------------------------------------------------------
# statistics and forward
# --------------------------------------------------------------------------


def batch_stats(x):
    """Two-pass statistics -> (mean, biased var, unbiased var), float64 (C,)."""
    xc = channel_matrix(x)
    C, n = xc.shape
    mean = xc.sum(axis=1) / n
    dev = xc - mean[:, None]
    ssd = (dev * dev).sum(axis=1)
    var_b = ssd / n
    var_u = ssd / (n - 1) if n > 1 else np.full(C, np.nan)
    return mean, var_b, var_u


def fsum_stats(x):
    """Slow, extra-careful statistics using math.fsum (for checking batch_stats)."""
    xc = channel_matrix(x)
    _C, n = xc.shape
    mean = np.array([math.fsum(row) / n for row in xc])
    ssd = np.array([math.fsum((row - m) ** 2) for row, m in zip(xc, mean)])
    return mean, ssd / n, ssd / (n - 1)


def forward_batch(x, weight=None, bias=None, eps=1e-5):
    """Batch-statistics forward -> (y, mean, invstd, var_u)."""
    x = np.asarray(x, dtype=F64)
    C = x.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=F64)
    b = np.zeros(C) if bias is None else np.asarray(bias, dtype=F64)
    mean, var_b, var_u = batch_stats(x)
    invstd = 1.0 / np.sqrt(var_b + eps)
    y = (x - bcast(mean, x.ndim)) * bcast(invstd, x.ndim) * bcast(w, x.ndim) + bcast(b, x.ndim)
    return y, mean, invstd, var_u


def forward_eval(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    """Running-statistics forward: (x - rm) / sqrt(rv + eps) * w + b."""
    x = np.asarray(x, dtype=F64)
    C = x.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=F64)
    b = np.zeros(C) if bias is None else np.asarray(bias, dtype=F64)
    rm = np.asarray(running_mean, dtype=F64)
    rv = np.asarray(running_var, dtype=F64)
    return (x - bcast(rm, x.ndim)) / np.sqrt(bcast(rv, x.ndim) + eps) * bcast(w, x.ndim) + bcast(
        b, x.ndim
    )


def update_running(running_mean, running_var, mean, var_u, factor):
    """(1-f)*old + f*batch, with the UNBIASED batch variance."""
    rm = (1.0 - factor) * np.asarray(running_mean, dtype=F64) + factor * mean
    rv = (1.0 - factor) * np.asarray(running_var, dtype=F64) + factor * var_u
    return rm, rv


# --------------------------------------------------------------------------
# backward (docs/semantics.md §5, the xhat form)
# --------------------------------------------------------------------------


def backward_batch(x, grad_output, weight=None, eps=1e-5):
    """Batch-statistics backward -> (grad_input, grad_weight, grad_bias)."""
    x = np.asarray(x, dtype=F64)
    dy = np.asarray(grad_output, dtype=F64)
    C = x.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=F64)
    n = n_per_channel(x.shape)
    mean, var_b, _ = batch_stats(x)
    invstd = 1.0 / np.sqrt(var_b + eps)
    xhat = (x - bcast(mean, x.ndim)) * bcast(invstd, x.ndim)
    sum_dy = reduce_c(dy)
    sum_dy_xhat = reduce_c(dy * xhat)
    dx = bcast(w * invstd / n, x.ndim) * (
        n * dy - bcast(sum_dy, x.ndim) - xhat * bcast(sum_dy_xhat, x.ndim)
    )
    return dx, sum_dy_xhat, sum_dy


def backward_eval(x, grad_output, running_mean, running_var, weight=None, eps=1e-5):
    """Running-statistics backward (running stats are constants)."""
    x = np.asarray(x, dtype=F64)
    dy = np.asarray(grad_output, dtype=F64)
    C = x.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=F64)
    invstd_r = 1.0 / np.sqrt(np.asarray(running_var, dtype=F64) + eps)
    dx = dy * bcast(w * invstd_r, x.ndim)
    xr = (x - bcast(running_mean, x.ndim)) * bcast(invstd_r, x.ndim)
    return dx, reduce_c(dy * xr), reduce_c(dy)


# --------------------------------------------------------------------------
# stateful reference module (torch.nn.BatchNorm1d semantics, cybn's N=0 rule)
# --------------------------------------------------------------------------


class RefBatchNorm1d:
    """float64 model of BatchNorm1d.

    Running statistics are rounded to the module dtype after every update
    (and held as float64 afterwards) so eval outputs can be compared tightly.
    Weight/bias are float64 copies of what the test puts in the module.
    """

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        bias=True,
        dtype=np.float32,
    ):
        C = num_features
        self.C = C
        self.eps = eps
        self.momentum = momentum
        self.dtype = np.dtype(dtype)
        self.track_running_stats = track_running_stats
        self.training = True
        self.weight = np.ones(C) if affine else None
        self.bias = np.zeros(C) if (affine and bias) else None
        if track_running_stats:
            self.running_mean = np.zeros(C)
            self.running_var = np.ones(C)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._cache = None

    def _round(self, v):
        return np.asarray(v, dtype=self.dtype).astype(F64)

    def set_weight(self, w):
        self.weight = self._round(w)

    def set_bias(self, b):
        self.bias = self._round(b)

    def forward(self, x):
        x = np.asarray(x, dtype=F64)
        n = n_per_channel(x.shape)
        use_batch = self.training or self.running_mean is None
        if n == 0:
            self._cache = ("empty", x)
            return np.zeros(x.shape)
        if use_batch:
            y, mean, _invstd, var_u = forward_batch(x, self.weight, self.bias, self.eps)
            if self.training and self.track_running_stats and self.running_mean is not None:
                self.num_batches_tracked += 1
                f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
                rm, rv = update_running(self.running_mean, self.running_var, mean, var_u, f)
                self.running_mean, self.running_var = self._round(rm), self._round(rv)
            self._cache = ("batch", x)
            return y
        y = forward_eval(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        self._cache = ("eval", x, self.running_mean.copy(), self.running_var.copy())
        return y

    def backward(self, grad_output):
        kind, x = self._cache[0], self._cache[1]
        if kind == "empty":
            return np.zeros(x.shape), np.zeros(self.C), np.zeros(self.C)
        if kind == "batch":
            return backward_batch(x, grad_output, self.weight, self.eps)
        return backward_eval(x, grad_output, self._cache[2], self._cache[3], self.weight, self.eps)


# --------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------


def numerical_grad(loss, arr, h=1e-6):
    """Central differences of the scalar ``loss()`` w.r.t. the float64 array ``arr``.

    ``arr`` is perturbed in place (and restored), so ``loss`` must read it.
    """
    assert arr.dtype == F64
    g = np.zeros(arr.shape)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + h
        fp = loss()
        arr[idx] = old - h
        fm = loss()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


# --------------------------------------------------------------------------
# cs231n convention (momentum weights the OLD value; biased running var)
# --------------------------------------------------------------------------


def cs231n_batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    x = np.asarray(x, dtype=F64)
    N, D = x.shape
    running_mean = np.asarray(bn_param.get("running_mean", np.zeros(D)), dtype=F64)
    running_var = np.asarray(bn_param.get("running_var", np.zeros(D)), dtype=F64)
    gamma = np.asarray(gamma, dtype=F64)
    beta = np.asarray(beta, dtype=F64)
    if mode == "train":
        mu = x.sum(axis=0) / N
        var = ((x - mu) ** 2).sum(axis=0) / N
        xhat = (x - mu) / np.sqrt(var + eps)
        out = gamma * xhat + beta
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
        cache = (x, gamma, mu, var, eps)
    elif mode == "test":
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
        cache = None
    else:
        raise ValueError(mode)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def cs231n_batchnorm_backward(dout, cache):
    """Staged (computational-graph) derivation, deliberately different from backward_batch."""
    x, gamma, mu, var, eps = cache
    N = x.shape[0]
    dout = np.asarray(dout, dtype=F64)
    std = np.sqrt(var + eps)
    xmu = x - mu
    xhat = xmu / std
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dstd = -(dxhat * xmu).sum(axis=0) / std**2
    dvar = dstd / (2 * std)
    dxmu = dxhat / std + 2 * xmu * dvar / N
    dmu = -dxmu.sum(axis=0)
    dx = dxmu + dmu / N
    return dx, dgamma, dbeta


def to_rows(x4):
    """(N, C, H, W) -> (N*H*W, C) float64 copy."""
    x4 = np.asarray(x4, dtype=F64)
    _N, C, _H, _W = x4.shape
    return x4.transpose(0, 2, 3, 1).reshape(-1, C)


def from_rows(rows, shape):
    N, C, H, W = shape
    return rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)


def cs231n_spatial_forward(x, gamma, beta, bn_param):
    out, cache = cs231n_batchnorm_forward(to_rows(x), gamma, beta, bn_param)
    return from_rows(out, x.shape), (cache, x.shape)


def cs231n_spatial_backward(dout, cache):
    inner, shape = cache
    dx, dg, db = cs231n_batchnorm_backward(to_rows(dout), inner)
    return from_rows(dx, shape), dg, db


# --------------------------------------------------------------------------
# cache inspection
# --------------------------------------------------------------------------


def iter_arrays(obj, _seen=None):
    """Yield every ndarray reachable from ``obj`` (tuples, lists, dicts, objects)."""
    if _seen is None:
        _seen = set()
    if id(obj) in _seen:
        return
    _seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
        if obj.dtype == object:
            for item in obj.ravel():
                yield from iter_arrays(item, _seen)
        return
    if isinstance(obj, (str, bytes, int, float, complex, bool, type(None), np.generic)):
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from iter_arrays(v, _seen)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from iter_arrays(v, _seen)
        return
    if isinstance(obj, memoryview):
        yield np.asarray(obj)
        return
    d = getattr(obj, "__dict__", None)
    if d is not None:
        yield from iter_arrays(d, _seen)
    slots = getattr(type(obj), "__slots__", ())
    for s in [slots] if isinstance(slots, str) else slots:
        if hasattr(obj, s):
            yield from iter_arrays(getattr(obj, s), _seen)


# --------------------------------------------------------------------------
# golden vectors (docs/semantics.md §3 and §5; values as printed there, and
# test_reference_sanity.py checks that the doc prints exactly these)
# --------------------------------------------------------------------------

T1_X = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
T1_Y64 = np.array([[-1.224742575, -1.224744297], [-1.1e-16, -1.1e-16], [1.224742575, 1.224744297]])
T1_Y32 = np.array([-1.22474265, -1.22474432, -5.96e-08, 0.0, 1.22474241, 1.22474432]).reshape(3, 2)
T1_RM = np.array([0.3, 0.6])
T1_RV = np.array([1.3, 2.5])
T1_VAR_U = np.array([4.0, 16.0])
T1_EVAL_Y = np.array(
    [[0.6139382522, 0.885435974], [2.368047544, 3.415253042], [4.122156836, 5.945070111]]
)

T2_X = np.arange(12, dtype=F64).reshape(2, 2, 3)
T2_MEAN = np.array([4.0, 7.0])
T2_VAR_B = np.array([9.6667, 9.6667])  # printed to 5 significant digits
T2_VAR_U = np.array([11.6, 11.6])
T2_Y_CH0 = np.array(
    [-1.286534376, -0.9649007823, -0.6432671882, 0.6432671882, 0.9649007823, 1.286534376]
)
T2_RM = np.array([0.4, 0.7])
T2_RV = np.array([2.06, 2.06])
T2_WRONG_MEANS = np.array([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])  # the reduce-over-N-only bug

T3_BATCHES = [np.array([[0.0], [2.0]]), np.array([[4.0], [8.0]]), np.array([[10.0], [10.0]])]
T3_RM = [1.0, 3.5, 5.6667]  # printed to 5 significant digits
T3_RV = [2.0, 5.0, 3.3333]

# T4: the zero-variance channel vector of docs/semantics.md §5.
T4_X = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
T4_DY = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
T4_DX_CH0 = np.array([-316.2277, 0.0, 316.2277])  # printed truncated to 4 decimals
T4_DGAMMA_CH0 = 0.0
T4_DBETA_CH0 = 6.0
T4_RV_CH0 = 0.9

T5_X = T1_X
T5_W = np.array([2.0, -1.0])
T5_B = np.array([0.5, 3.0])
T5_DY = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
T5_Y = np.array([[-1.94948515, 4.224744297], [0.5, 3.0], [2.94948515, 1.775255703]])
T5_DX = np.array(
    [[0.6123689911, 0.1530928936], [-1.224742575, -0.3061860743], [0.6123735839, 0.1530931807]]
)
T5_DGAMMA = np.array([1.224742575, -1.224744297])
T5_DBETA = np.array([3.0, 0.0])

T6_Y = np.array(
    [[1.727876504, 2.114564026], [5.236095089, -0.4152530425], [8.744313673, -2.945070111]]
)
T6_DX = np.array([[1.754109292, -0.0], [0.0, -0.6324542671], [3.508218584, 0.6324542671]])
T6_DGAMMA = np.array([8.858251925, -2.529817069])
T6_DBETA = np.array([3.0, 0.0])

#: tolerance for values printed with ~10 significant digits
GOLD_ATOL = 2e-9
GOLD_RTOL = 1e-9


def gold(actual, expected, dtype=np.float64, f32_tol=1e-6):
    """Compare with a golden vector: torch's float64 values to GOLD_RTOL/GOLD_ATOL; float32
    (and float16-computed) results to ``f32_tol``, relative and absolute."""
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=GOLD_RTOL, atol=GOLD_ATOL)
    else:
        np.testing.assert_allclose(actual, expected, rtol=f32_tol, atol=f32_tol)


# --------------------------------------------------------------------------
# the rest of the batch-norm family (docs/guide.md "Beyond torch's BatchNorm")
# --------------------------------------------------------------------------


def renorm_forward(x, running_mean, running_var, weight, bias, eps, rmax, dmax):
    """Batch renormalization, Ioffe 2017 Algorithm 1 (training), in float64.

    sigma_B = sqrt(eps + biased batch variance); the running sigma is
    sqrt(running_var + eps) (cybn keeps a running variance, as Chainer does, where
    the paper keeps a running sigma). Returns (y, r, d, mean, sigma_B, var_u).
    """
    x = np.asarray(x, dtype=F64)
    mean, var_b, var_u = batch_stats(x)
    sigma_b = np.sqrt(eps + var_b)
    sigma = np.sqrt(np.asarray(running_var, dtype=F64) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, dtype=F64)) / sigma, -dmax, dmax)
    y = renorm_apply(x, mean, sigma_b, r, d, weight, bias)
    return y, r, d, mean, sigma_b, var_u


def renorm_apply(x, mean, sigma_b, r, d, weight, bias):
    """y = weight * ((x - mean) / sigma_B * r + d) + bias (r, d given: constants)."""
    nd = x.ndim
    xhat = (x - bcast(mean, nd)) / bcast(sigma_b, nd) * bcast(r, nd) + bcast(d, nd)
    return xhat * bcast(weight, nd) + bcast(bias, nd)


def renorm_backward(x, grad_output, weight, eps, r, d):
    """Algorithm 1's gradients with r and d held constant (the paper's section 3)."""
    x = np.asarray(x, dtype=F64)
    dy = np.asarray(grad_output, dtype=F64)
    nd = x.ndim
    m = n_per_channel(x.shape)
    mean, var_b, _ = batch_stats(x)
    sigma_b = np.sqrt(eps + var_b)
    xc = x - bcast(mean, nd)
    xhat = xc / bcast(sigma_b, nd) * bcast(r, nd) + bcast(d, nd)
    dxhat = dy * bcast(weight, nd)
    dsigma = reduce_c(dxhat * xc) * (-r / sigma_b ** 2)
    dmean = reduce_c(dxhat) * (-r / sigma_b)
    dx = (dxhat * bcast(r / sigma_b, nd) + bcast(dsigma / (m * sigma_b), nd) * xc
          + bcast(dmean / m, nd))
    return dx, reduce_c(dy * xhat), reduce_c(dy)


def ghost_forward(x, group, weight, bias, eps):
    """Ghost batch norm: consecutive groups of ``group`` rows (the last holds the rest),
    each normalised with its own statistics. Returns (y, [(rows, mean, var_u)])."""
    x = np.asarray(x, dtype=F64)
    y = np.empty(x.shape)
    groups = []
    for a in range(0, x.shape[0], group):
        xg = x[a:a + group]
        y[a:a + group], mean, _, var_u = forward_batch(xg, weight, bias, eps)
        groups.append((xg.shape[0], mean, var_u))
    return y, groups


def ghost_backward(x, grad_output, group, weight, eps):
    """Per-group batch-norm backward; the parameters' gradients summed over groups."""
    x = np.asarray(x, dtype=F64)
    dy = np.asarray(grad_output, dtype=F64)
    dx = np.empty(x.shape)
    gw = gb = 0.0
    for a in range(0, x.shape[0], group):
        dx[a:a + group], gw_g, gb_g = backward_batch(x[a:a + group], dy[a:a + group], weight,
                                                     eps)
        gw = gw + gw_g
        gb = gb + gb_g
    return dx, gw, gb
