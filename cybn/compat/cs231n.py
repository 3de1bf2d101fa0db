"""The cs231n assignment-2 batch-norm functions (2016-2025 handouts), on cybn's kernels.

Every batch-norm function name the assignments and their usual solutions call, in matching
forward/backward pairs, with the handouts' contract:

* ``bn_param`` keys exactly as the handouts define them: ``mode`` (``'train'`` or
  ``'test'``, required), ``eps`` (default 1e-5), ``momentum`` (default 0.9, the weight of
  the **old** value: ``running = momentum * running + (1 - momentum) * batch``; PyTorch's
  0.1 is this 0.9), ``running_mean`` / ``running_var`` (created as zeros of x's dtype
  when missing; in training new arrays are written back, updated with the **biased**
  batch variance). Any other key raises ValueError: solutions that add keys (for example
  to reuse ``batchnorm_forward`` for layer norm) change its meaning, and ignoring them
  would return a silently different result. Exceptions, which mean plain batch norm: the
  2016 handout's stray ``'train'``/``'test'`` key, a false ``'layernorm'``, ``'axis'`` 0.
* per-feature arrays (gamma, beta, running statistics) as (D,) or (1, D); spatial: (C,),
  (1, C) or (1, C, 1, 1); a scalar broadcasts. Gradients and running statistics come back
  in the caller's shape (a missing running statistic takes gamma's shape).
* dtypes follow NumPy's promotion in the handout's ``gamma * x_hat + beta``: the output,
  dx, dgamma and dbeta have ``np.result_type(x, gamma, beta)`` (integer x counts as
  float64); a running statistic written back has ``np.result_type(running, mean)``.
* a single row in training gives ``beta`` (zero variance, x - mean = 0), as the handout's
  formula does; where the formula would produce NaN or inf (an empty batch, NaN/Inf in x,
  eps = 0 with a constant feature, a negative running variance) cybn raises ValueError.

The formulas are the handouts' (Ioffe & Szegedy 2015, Algorithm 1 for the forward; the
backward's closed form, which ``batchnorm_backward_alt`` asks for, for both backward
names): statistics accumulate in float64 whatever the input dtype.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from .. import functional as F
from . import _common as _c

__all__ = [
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "batchnorm_forward",
    "batchnorm_forward_alt",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]

_INF = float("inf")
_RV_NAME = "bn_param['running_var']"
_KEYS = frozenset(("mode", "eps", "momentum", "running_mean", "running_var"))
_FC_KINDS = ("batchnorm_forward", "batchnorm_forward_alt")
_SPATIAL_KINDS = ("spatial_batchnorm_forward",)


def _param_shapes(x):
    C = x.shape[1]
    if x.ndim == 2:
        return ((C,), (1, C)), f"x has {C} features along axis 1"
    return ((C,), (1, C), (1, C, 1, 1)), f"x has {C} channels along axis 1"


def _plain_extras(bn_param):
    """Whether every key beyond the handout's is one that leaves plain batch norm.

    * ``'train'`` / ``'test'``: the 2016 handout's ``FullyConnectedNet.loss`` writes
      ``bn_param[mode] = mode`` (a bug: the key is the value of ``mode``), so its
      bn_params carry such a key and its networks always train, as cybn then does too;
    * ``'layernorm'`` with a false value and ``'axis'`` equal to 0: solutions that reuse
      ``batchnorm_forward`` for layer norm pass these for plain batch norm (a true
      ``layernorm`` or another axis still raises).
    """
    for key, value in bn_param.items():
        if key in _KEYS or key == "train" or key == "test":
            continue
        if key == "layernorm" and not value:
            continue
        if (key == "axis" and isinstance(value, numbers.Integral)
                and not isinstance(value, bool) and value == 0):
            continue
        return False
    return True


def _check_bn_param(bn_param, func):
    if type(bn_param) is not dict:
        if not isinstance(bn_param, dict):
            raise TypeError(f"{func}: bn_param must be a dict, got {type(bn_param).__name__}")
    if not _KEYS.issuperset(bn_param) and not _plain_extras(bn_param):
        extra = sorted(map(repr, set(bn_param) - _KEYS))
        raise ValueError(
            f"{func}: bn_param has key(s) {', '.join(extra)} that the cs231n handouts do not "
            "define (cybn knows 'mode', 'eps', 'momentum', 'running_mean', 'running_var'). "
            "Code that adds keys gives batchnorm_forward another meaning (e.g. layer norm), "
            "which cybn would silently ignore: keep your own function for such calls, e.g. "
            "patch the network and helper modules ('cs231n.classifiers.fc_net', "
            "'cs231n.layer_utils') but not the module whose functions reuse batchnorm_forward")
    mode = bn_param.get("mode")
    if mode != "train" and mode != "test":
        raise ValueError(f"{func}: bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    return mode == "train"


def _forward(x, gamma, beta, bn_param, func, ndim, eps_default=1e-5, momentum_default=0.9):
    training = _check_bn_param(bn_param, func)
    xf = _c.check_x(x, func, (ndim,))
    C = x.shape[1]
    if (type(gamma) is np.ndarray and type(beta) is np.ndarray and gamma.shape == (C,)
            and beta.shape == (C,) and gamma.dtype == xf and beta.dtype == xf):
        g, b, shapes, cdt = gamma, beta, ((C,), (C,)), xf  # the common case
    else:
        accepted, what = _param_shapes(x)
        g, gshape = _c.per_channel(gamma, "gamma", func, C, accepted, what)
        b, bshape = _c.per_channel(beta, "beta", func, C, accepted, what)
        shapes = (gshape, bshape)
        cdt = _c.result_dtype(xf, _c.promoted(gamma, g), _c.promoted(beta, b))
        g = g.astype(cdt, copy=False)
        b = b.astype(cdt, copy=False)
    eps = bn_param.get("eps", eps_default)
    if type(eps) is not float or not 0.0 < eps < _INF:
        eps = _c.check_eps(eps, func, "bn_param['eps']")
    momentum = bn_param.get("momentum", momentum_default)
    rm_in = bn_param.get("running_mean")
    rv_in = bn_param.get("running_var")
    default_shape = shapes[0] if len(shapes[0]) else (C,)
    if training:
        if type(momentum) is not float or momentum - momentum != 0:
            momentum = _c.check_momentum(momentum, func, "bn_param['momentum']")
        # New arrays, updated by the kernel (the handout assigns new arrays rather than
        # updating the caller's), in the kernels' dtype: float32 for float16, so that
        # narrowing to the written dtype is checked for overflow instead of a silent inf.
        kdt = F._COMPUTE[cdt]
        rm, rm_shape, rm_dt = _running(rm_in, "running_mean", func, x, xf, C, default_shape, kdt)
        rv, rv_shape, rv_dt = _running(rv_in, "running_var", func, x, xf, C, default_shape, kdt)
        out, stats, saved = _c.forward(x, cdt, g, b, rm, rv, True, 1.0 - momentum, eps, func,
                                       _RV_NAME)
        if rm.dtype != rm_dt or rm.shape != rm_shape:
            rm = _written(rm, rm_dt, rm_shape, "bn_param['running_mean']", func)
        if rv.dtype != rv_dt or rv.shape != rv_shape:
            rv = _written(rv, rv_dt, rv_shape, "bn_param['running_var']", func)
        bn_param["running_mean"], bn_param["running_var"] = rm, rv
    else:
        if type(momentum) is not float:
            _c.check_momentum(momentum, func, "bn_param['momentum']")
        if rm_in is None:
            rm_in = np.zeros(default_shape, dtype=x.dtype)
        if rv_in is None:
            rv_in = np.zeros(default_shape, dtype=x.dtype)
        if _c.plain(cdt, C, rm_in, rv_in):
            rm, rv = rm_in, rv_in
        else:
            accepted, what = _param_shapes(x)
            rm, _ = _c.per_channel(rm_in, "bn_param['running_mean']", func, C, accepted, what)
            rv, _ = _c.per_channel(rv_in, "bn_param['running_var']", func, C, accepted, what)
            rm = rm if rm.dtype == cdt else rm.astype(cdt)
            rv = rv if rv.dtype == cdt else rv.astype(cdt)
        out, stats, saved = _c.forward(x, cdt, g, b, rm, rv, False, 0.0, eps, func, _RV_NAME)
        bn_param["running_mean"] = rm_in
        bn_param["running_var"] = rv_in
    return out, _c.Cache(func, saved, g, stats, training, cdt, shapes)


def with_defaults(name, eps, momentum):
    """The forward ``name`` of this module with other bn_param defaults.

    Some solutions change the handout's ``bn_param.get('eps', 1e-5)`` (for example to
    1e-3) and their networks never set eps; :func:`cybn.compat.patch` reads a legacy
    forward's defaults and binds this in its place, so that the switch keeps them.

    Parameters
    ----------
    name : str
        ``'batchnorm_forward'``, ``'batchnorm_forward_alt'`` or
        ``'spatial_batchnorm_forward'``.
    eps, momentum : float
        The defaults used when bn_param has no such key.

    Returns
    -------
    function
        With the signature, name and documentation of the forward; its attribute
        ``__cybn_defaults__`` is ``(eps, momentum)``.
    """
    ndim = 4 if name.startswith("spatial") else 2

    def forward(x, gamma, beta, bn_param):
        return _forward(x, gamma, beta, bn_param, name, ndim, eps, momentum)

    functools.update_wrapper(forward, globals()[name])
    del forward.__wrapped__  # inspect.signature must see (x, gamma, beta, bn_param) itself
    forward.__cybn_defaults__ = (eps, momentum)
    return forward


def _running(a, name, func, x, xf, C, default_shape, kdt):
    """A new (C,) array of the running statistic's values in ``kdt``, the caller's shape
    and the dtype to write it back in (NumPy's promotion of the handout's update)."""
    if a is None:
        # the handout's np.zeros(D, dtype=x.dtype), in the caller's parameter shape; the
        # update promotes it with the batch mean's dtype, xf
        return np.zeros(C, dtype=kdt), default_shape, xf
    if type(a) is np.ndarray and a.shape == (C,):
        values, shape = a, a.shape
    else:
        accepted, what = _param_shapes(x)
        values, shape = _c.per_channel(a, f"bn_param[{name!r}]", func, C, accepted, what)
    written = xf if values.dtype == xf else _c.result_dtype(values.dtype, xf)
    return np.array(values, dtype=kdt), shape, written


def _written(a, dtype, shape, name, func):
    a = _c.narrow(a, dtype, name, func)
    return a if a.shape == shape else a.reshape(shape)


def _backward(dout, cache, func, kinds):
    cache = _c.check_cache(cache, kinds, func)
    saved = cache.saved
    _c.check_dout(dout, saved.input.shape, func)
    cdt = cache.cdt if dout.dtype == cache.cdt else _c.result_dtype(cache.cdt, dout.dtype)
    if dout.dtype != cdt:
        dout = dout.astype(cdt)
    dx, dgamma, dbeta = _c.backward(dout, saved, cache.gamma, cache.stats, cache.training,
                                    cdt)
    if dx.dtype != cdt:
        dx = dx.astype(cdt)
    gshape, bshape = cache.shapes
    if dgamma.shape != gshape:
        dgamma = dgamma.reshape(gshape)
    if dbeta.shape != bshape:
        dbeta = dbeta.reshape(bshape)
    return dx, dgamma, dbeta


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch-norm forward for fully connected layers (cs231n assignment 2).

    Parameters
    ----------
    x : ndarray of shape (N, D)
        float16/32/64, or integers (computed as float64).
    gamma, beta : array_like of shape (D,) or (1, D), or a scalar
        Scale and shift; lists and integer arrays are accepted, as NumPy arithmetic does.
    bn_param : dict
        ``mode`` ('train' or 'test', required), ``eps`` (1e-5), ``momentum`` (0.9, weight
        of the old running value), ``running_mean`` / ``running_var`` ((D,) or (1, D);
        zeros of x's dtype when absent). In training the updated running statistics are
        written back as new arrays (biased batch variance); in test mode the given (or
        new zero) arrays are written back unchanged.

    Returns
    -------
    out : ndarray of shape (N, D)
        dtype ``np.result_type(x, gamma, beta)``.
    cache : cybn.compat.Cache
        For :func:`batchnorm_backward` / :func:`batchnorm_backward_alt`; holds x by
        reference and (D,)-sized statistics; a legacy backward cannot read it.

    Raises
    ------
    TypeError
        If x is not an ndarray of real numbers, gamma/beta/running statistics are not real,
        bn_param is not a dict, or eps/momentum are not real numbers.
    ValueError
        For an unknown ``mode`` or bn_param key, a shape that is not (N, D), a per-feature
        array of another shape, eps < 0 or not finite, a momentum that is not finite, an
        empty training batch, NaN/Inf in a training batch, eps = 0 with a constant
        feature, or running_var + eps <= 0 in test mode. bn_param is unchanged then.

    Notes
    -----
    Ioffe & Szegedy (2015), Algorithm 1: ``out = gamma * (x - mean) / sqrt(var + eps) +
    beta`` with the batch mean and biased variance in training, the running statistics in
    test mode.
    """
    return _forward(x, gamma, beta, bn_param, "batchnorm_forward", 2)


def batchnorm_forward_alt(x, gamma, beta, bn_param):
    """:func:`batchnorm_forward` under the name some solutions give the forward that
    feeds their ``batchnorm_backward_alt``; identical results and cache."""
    return _forward(x, gamma, beta, bn_param, "batchnorm_forward_alt", 2)


def batchnorm_backward(dout, cache):
    """Gradients of :func:`batchnorm_forward` (cs231n assignment 2).

    Parameters
    ----------
    dout : ndarray of shape (N, D)
        Upstream gradient.
    cache : cybn.compat.Cache
        From :func:`batchnorm_forward` or :func:`batchnorm_forward_alt` of this module.

    Returns
    -------
    dx : ndarray of shape (N, D)
    dgamma, dbeta : ndarray in gamma's and beta's shapes ((D,) or (1, D))
        All three in ``np.result_type(forward dtype, dout)``.

    Raises
    ------
    TypeError
        If ``cache`` was not made by a cybn.compat forward of this shape of layer (forward
        and backward must be switched together), or dout is not a real ndarray.
    ValueError
        If dout does not have x's shape.

    Notes
    -----
    In training, with ``x_hat = (x - mean) / sqrt(var + eps)`` and sums over the batch:
    ``dbeta = sum(dout)``, ``dgamma = sum(dout * x_hat)``,
    ``dx = gamma / sqrt(var + eps) / N * (N * dout - dbeta - x_hat * dgamma)``
    (the simplified form the handout asks for in ``batchnorm_backward_alt``; the staged
    computational-graph derivation gives the same values up to rounding). After a
    test-mode forward the statistics are constants: ``dx = gamma * dout /
    sqrt(running_var + eps)``.
    """
    return _backward(dout, cache, "batchnorm_backward", _FC_KINDS)


def batchnorm_backward_alt(dout, cache):
    """Same as :func:`batchnorm_backward`: cybn always evaluates the simplified closed
    form, so both names give identical results."""
    return _backward(dout, cache, "batchnorm_backward_alt", _FC_KINDS)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Spatial batch norm for convolutional layers (cs231n assignment 2).

    Parameters
    ----------
    x : ndarray of shape (N, C, H, W)
    gamma, beta : array_like of shape (C,), (1, C) or (1, C, 1, 1), or a scalar
    bn_param : dict
        As :func:`batchnorm_forward`; running statistics per channel.

    Returns
    -------
    out : ndarray of shape (N, C, H, W)
    cache : cybn.compat.Cache
        For :func:`spatial_batchnorm_backward`.

    Raises
    ------
    TypeError, ValueError
        As :func:`batchnorm_forward`, for a 4-D x.

    Notes
    -----
    Statistics per channel over N, H and W, as the handout's transpose to (N*H*W, C)
    and call of ``batchnorm_forward`` give; computed on an (N, C, H*W) view, without
    the transpose copies.
    """
    return _forward(x, gamma, beta, bn_param, "spatial_batchnorm_forward", 4)


def spatial_batchnorm_backward(dout, cache):
    """Gradients of :func:`spatial_batchnorm_forward` (cs231n assignment 2).

    Parameters
    ----------
    dout : ndarray of shape (N, C, H, W)
        Upstream gradient.
    cache : cybn.compat.Cache
        From :func:`spatial_batchnorm_forward`.

    Returns
    -------
    dx : ndarray of shape (N, C, H, W)
    dgamma, dbeta : ndarray in gamma's and beta's shapes
        All three in ``np.result_type(forward dtype, dout)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`batchnorm_backward`, for a 4-D dout.

    Notes
    -----
    :func:`batchnorm_backward`'s formulas with sums over N, H and W per channel.
    """
    return _backward(dout, cache, "spatial_batchnorm_backward", _SPATIAL_KINDS)
