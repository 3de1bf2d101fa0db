"""The ``BatchNormalization`` layer of "Deep Learning from Scratch", on cybn's kernels.

Koki Saito, 『ゼロから作るDeep Learning』 (O'Reilly Japan, 2016; translated as
《深度学习入门：基于Python的理论与实现》 and into Korean), ``common/layers.py``: a layer
class with ``forward(x, train_flg=True)`` and ``backward(dout)`` whose gradients are read
from its ``dgamma`` / ``dbeta`` attributes. :class:`BatchNormalization` keeps that
contract, including what the book's networks rely on without saying so:

* ``gamma`` and ``beta`` are held **by reference**: the book's ``MultiLayerNetExtend``
  passes its ``params['gammaN']`` arrays, its optimisers update them in place and its
  ``numerical_gradient`` perturbs them in place, and the layer reads their current values
  at every forward and backward;
* epsilon is the book's literal ``10e-7`` (= 1e-6), in training and test mode;
* running statistics start as ``None`` and are created at the first forward as float64
  zeros (both mean and variance), then replaced by new arrays
  ``momentum * running + (1 - momentum) * batch`` (biased variance) at every training
  forward;
* an input of more than 2 dimensions is reshaped to ``(N, -1)``: a (N, C, H, W) batch is
  normalised **per activation** (C*H*W features, gamma of C*H*W elements), not per
  channel; the output and dx come back in the input's shape.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from . import _common as _c

__all__ = ["BatchNormalization"]

_EPS = 10e-7  # the book's literal (= 1e-6)
_NDIMS = range(2, 64)  # the book reshapes any batch to (N, -1)


class BatchNormalization:
    """Batch normalization layer with the book's constructor, methods and attributes.

    Parameters
    ----------
    gamma, beta : ndarray of shape (D,) (or (1, D), or a scalar)
        Scale and shift, kept by reference (``self.gamma is gamma``); D is the number of
        features of the input reshaped to (N, -1).
    momentum : float, default 0.9
        Weight of the old running value (read at every forward).
    running_mean, running_var : ndarray of shape (D,) or None
        None: created at the first forward as float64 zeros.

    Attributes
    ----------
    gamma, beta, momentum, running_mean, running_var
        As given; the running statistics are replaced by new arrays in training.
    dgamma, dbeta : ndarray of shape (D,) or None
        Set by :meth:`backward`.
    input_shape : tuple or None
        The shape of the last forward's input.
    batch_size : int or None
        N of the last training forward.
    xc, xn, std
        The book's intermediates of the last training forward (x - mean, x-hat,
        sqrt(var + eps)), computed on access from x and the saved statistics (cybn does
        not keep them).

    Notes
    -----
    Ioffe & Szegedy (2015), Algorithm 1: ``out = gamma * (x - mean) / sqrt(var + 1e-6) +
    beta`` with the batch mean and biased variance in training, the running statistics
    otherwise. The backward is the book's computational-graph derivation, evaluated in its
    closed form ``dx = gamma / std / N * (N * dout - dbeta - xn * dgamma)``.
    Output, dx, dgamma and dbeta have NumPy's promotion of the operands the book's
    expressions combine (x, gamma and beta in training; also the running statistics in
    test mode; and dout for the gradients), so float32 data with the book's float64
    ``np.ones`` gamma gives float64 results, as the book's code does.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.input_shape = None  # 4-D for convolution, 2-D for affine layers
        self.running_mean = running_mean
        self.running_var = running_var
        self.batch_size = None
        self.dgamma = None
        self.dbeta = None
        self._cache = None

    def __repr__(self):
        D = None if self.running_mean is None else np.size(self.running_mean)
        return f"cybn.compat.BatchNormalization(features={D}, momentum={self.momentum!r})"

    # -- the book's methods ----------------------------------------------------------------

    def forward(self, x, train_flg=True):
        """Normalise a batch; in training also update the running statistics.

        Parameters
        ----------
        x : ndarray of shape (N, D) or (N, ...) with D = prod(...)
            float16/32/64 or integers.
        train_flg : bool, default True
            Batch statistics (True) or the running statistics (False).

        Returns
        -------
        out : ndarray of x's shape

        Raises
        ------
        TypeError
            If x, gamma, beta or the running statistics are not real arrays, or momentum
            is not a real number.
        ValueError
            If x has fewer than 2 dimensions or no rows (training), gamma/beta/the running
            statistics do not have D elements, momentum is not finite, the batch holds
            NaN or Inf, or ``running_var + 1e-6 <= 0`` in test mode. Nothing changes then.
        """
        func = "BatchNormalization.forward"
        xf = _c.check_x(x, func, _NDIMS)
        N = x.shape[0]
        x2 = x if x.ndim == 2 else x.reshape(N, -1)
        D = x2.shape[1]
        gamma, beta = self.gamma, self.beta
        rm_in, rv_in = self.running_mean, self.running_var
        if rm_in is None:  # the book's lazy creation (it tests running_mean only)
            rm_in = rv_in = np.zeros(D)
        simple = _c.plain(xf, D, gamma, beta, rm_in, rv_in)  # no conversion needed
        if simple:
            g, b, rm, rv = gamma, beta, rm_in, rv_in
            rshapes = ((D,), (D,))
        else:
            shapes = ((D,), (1, D))
            what = f"x reshaped to (N, -1) has {D} features"
            g, _ = _c.per_channel(gamma, "gamma", func, D, shapes, what)
            b, _ = _c.per_channel(beta, "beta", func, D, shapes, what)
            rm, rm_shape = _c.per_channel(rm_in, "running_mean", func, D, shapes, what)
            rv, rv_shape = _c.per_channel(rv_in, "running_var", func, D, shapes, what)
            rshapes = (rm_shape, rv_shape)  # the book's update keeps a (1, D) statistic (1, D)
        if train_flg:
            momentum = self.momentum
            if type(momentum) is not float or momentum - momentum != 0:
                momentum = _c.check_momentum(momentum, func, "momentum")
            if simple:
                cdt, written = xf, (xf, xf)
                rm, rv = rm.astype(F._COMPUTE[cdt]), rv.astype(F._COMPUTE[cdt])  # new arrays
            else:
                cdt = _c.result_dtype(xf, _c.promoted(gamma, g), _c.promoted(beta, b))
                g = g.astype(cdt, copy=False)
                b = b.astype(cdt, copy=False)
                written = (_c.result_dtype(rm.dtype, xf), _c.result_dtype(rv.dtype, xf))
                # new arrays in the kernels' dtype (float32 for float16: no silent overflow
                # when the kernel's update is copied back; narrow() checks it instead)
                rm = np.array(rm, dtype=F._COMPUTE[cdt])
                rv = np.array(rv, dtype=F._COMPUTE[cdt])
            out, stats, saved = _c.forward(x2, cdt, g, b, rm, rv, True, 1.0 - momentum, _EPS,
                                           func, "running_var")
            rm = _c.narrow(rm, written[0], "running_mean", func).reshape(rshapes[0])
            rv = _c.narrow(rv, written[1], "running_var", func).reshape(rshapes[1])
            self.running_mean, self.running_var = rm, rv
            self.batch_size = N
            self._cache = (saved, stats, cdt)
        else:
            cdt = xf if simple else _c.result_dtype(xf, rm.dtype, rv.dtype,
                                                    _c.promoted(gamma, g),
                                                    _c.promoted(beta, b))
            out, _, _ = _c.forward(x2, cdt, g.astype(cdt, copy=False),
                                   b.astype(cdt, copy=False), rm.astype(cdt, copy=False),
                                   rv.astype(cdt, copy=False), False, 0.0, _EPS, func,
                                   "running_var")
            self.running_mean, self.running_var = rm_in, rv_in
            self._cache = None
        self.input_shape = x.shape
        return out if out.shape == x.shape else out.reshape(x.shape)

    def backward(self, dout):
        """Gradients of the last training forward; sets ``dgamma`` and ``dbeta``.

        Parameters
        ----------
        dout : ndarray of the last forward input's shape

        Returns
        -------
        dx : ndarray of the input's shape

        Raises
        ------
        RuntimeError
            If the last forward was not a training forward (the book's backward would
            silently use an older batch's intermediates, or fail on None).
        TypeError, ValueError
            If dout is not a real ndarray of the input's shape, or gamma no longer has D
            elements. dgamma and dbeta are unchanged then.
        """
        func = "BatchNormalization.backward"
        if self._cache is None:
            raise RuntimeError(
                f"{func}: no training forward to differentiate: the last forward "
                f"{'was in test mode (train_flg=False)' if self.input_shape else 'never ran'}"
                "; call forward(x, train_flg=True) before backward")
        saved, stats, cdt = self._cache
        _c.check_x(dout, func, (len(self.input_shape),), "dout")
        if dout.shape != self.input_shape:
            raise ValueError(f"{func}: dout must have the shape of the forward's input "
                             f"{self.input_shape}, got {dout.shape}")
        N = dout.shape[0]
        d2 = dout if dout.ndim == 2 else dout.reshape(N, -1)
        D = d2.shape[1]
        gamma = self.gamma
        if _c.plain(cdt, D, gamma) and dout.dtype == cdt:
            g, gdt = gamma, cdt
        else:
            g, _ = _c.per_channel(gamma, "gamma", func, D, ((D,), (1, D)),
                                  f"the forward had {D} features")
            gdt = _c.result_dtype(cdt, dout.dtype, _c.promoted(gamma, g))
            g = g.astype(cdt, copy=False)
        if d2.dtype != gdt:
            d2 = d2.astype(gdt)
        dx, dgamma, dbeta = _c.backward(d2, saved, g, stats, True, gdt)
        if dx.dtype != gdt:  # the forward's dtype was narrower than dout's
            dx = dx.astype(gdt)
        self.dgamma = dgamma
        self.dbeta = dbeta
        return dx if dx.shape == dout.shape else dx.reshape(dout.shape)

    # -- the book's intermediates, on demand ---------------------------------------------------

    def _intermediate(self, which):
        if self._cache is None:
            return None
        saved, stats, cdt = self._cache
        x2 = saved.input
        x2 = x2.reshape(x2.shape[0], -1).astype(cdt, copy=False)
        std = (1.0 / stats[1]).astype(cdt)
        if which == "std":
            return std
        xc = x2 - stats[0].astype(cdt)
        return xc if which == "xc" else xc / std

    @property
    def xc(self):
        """x - batch mean of the last training forward, (N, D); None before one."""
        return self._intermediate("xc")

    @property
    def xn(self):
        """x-hat of the last training forward, (N, D); None before one."""
        return self._intermediate("xn")

    @property
    def std(self):
        """sqrt(var + 1e-6) of the last training forward, (D,); None before one."""
        return self._intermediate("std")
