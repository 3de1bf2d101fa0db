"""Drop-in replacements for the cs231n-style batch-norm layer functions.

Hand-written NumPy networks (the Stanford CS231n assignments and the many projects derived
from them) call ``batchnorm_forward(x, gamma, beta, bn_param)`` and
``batchnorm_backward(dout, cache)``. Replacing ``from layers import ...`` by
``from cybn.compat import ...`` keeps their behaviour and conventions exactly:

* ``bn_param['mode']`` is ``'train'`` or ``'test'``; ``eps`` defaults to 1e-5;
* ``momentum`` defaults to 0.9 and weights the **old** value
  (``running = momentum * running + (1 - momentum) * batch``; Keras uses the same
  convention, PyTorch the opposite: torch's 0.1 is cs231n's 0.9);
* the running variance is the **biased** batch variance (PyTorch uses the unbiased one);
* ``running_mean``/``running_var`` are created as zeros (of x's dtype) when absent, and the
  updated arrays are written back into ``bn_param`` as new arrays.

The cache holds x by reference plus per-channel statistics, never a copy of x-hat.
"""

from __future__ import annotations

import numpy as np

from . import functional as F

__all__ = [
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "batchnorm_forward",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]


def _forward(x, gamma, beta, bn_param, ndim):
    if not isinstance(bn_param, dict):
        raise TypeError(f"bn_param must be a dict, got {type(bn_param).__name__}")
    mode = bn_param.get("mode")
    if mode not in ("train", "test"):
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    xdt = F._check_input(x, "x")
    F._check_ndim(x, (ndim,), "x")
    C = x.shape[1]
    F._check_channels(gamma, "gamma", C)
    F._check_channels(beta, "beta", C)
    eps = F._check_eps(bn_param.get("eps", 1e-5), mode == "train")
    momentum = F._check_momentum(bn_param.get("momentum", 0.9))
    running_mean = bn_param.get("running_mean")
    running_var = bn_param.get("running_var")
    running_mean = np.zeros(C, x.dtype) if running_mean is None else running_mean
    running_var = np.zeros(C, x.dtype) if running_var is None else running_var
    F._check_channels(running_mean, "bn_param['running_mean']", C)
    F._check_channels(running_var, "bn_param['running_var']", C)
    training = mode == "train"
    if training:
        F._check_batch_size(x.shape)
        # new arrays, as the reference implementation assigns rather than updates
        running_mean = running_mean.copy()
        running_var = running_var.copy()
    out, stats, saved, _ = F._forward(
        x, xdt, gamma, beta, running_mean, running_var, training, training,
        1.0 - momentum, eps, None, unbiased=False)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    cache = (saved, gamma, (stats[0], stats[1]), training)
    return out, cache


def _backward(dout, cache):
    saved, gamma, stats, training = cache
    F._check_input(dout, "dout")
    shape = saved.input.shape
    if dout.shape != shape:
        raise ValueError(f"dout must have the shape of x {shape}, got {dout.shape}")
    gdt = gamma.dtype if gamma is not None else saved.input.dtype
    return F._backward(dout, saved, gamma, stats, training, True, True, gdt, None)


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch-norm forward for fully connected layers, cs231n convention.

    Parameters
    ----------
    x : ndarray of shape (N, D), float16/32/64
    gamma, beta : ndarray of shape (D,)
        Scale and shift.
    bn_param : dict
        ``mode`` ('train' or 'test', required), ``eps`` (1e-5), ``momentum`` (0.9, weight
        of the old running value), ``running_mean``/``running_var`` (shape (D,); zeros
        when absent). Updated running statistics are written back.

    Returns
    -------
    out : ndarray of shape (N, D), x's dtype
    cache : tuple
        For :func:`batchnorm_backward`; holds x by reference and (D,)-sized statistics.

    Raises
    ------
    TypeError, ValueError
        For a bad mode, dtype, shape, eps or momentum (nothing in bn_param changes).
    """
    return _forward(x, gamma, beta, bn_param, 2)


def batchnorm_backward(dout, cache):
    """Gradients of :func:`batchnorm_forward`.

    Parameters
    ----------
    dout : ndarray of shape (N, D)
        Upstream gradient.
    cache : tuple
        From :func:`batchnorm_forward`.

    Returns
    -------
    dx : ndarray of shape (N, D)
    dgamma, dbeta : ndarray of shape (D,), gamma's dtype
    """
    return _backward(dout, cache)


def batchnorm_backward_alt(dout, cache):
    """Same as :func:`batchnorm_backward` (the assignment's simplified-formula variant).

    cybn always uses the simplified closed form, so both names give identical results.
    """
    return _backward(dout, cache)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Spatial batch norm for convolutional layers, cs231n convention.

    Parameters
    ----------
    x : ndarray of shape (N, C, H, W)
    gamma, beta : ndarray of shape (C,)
    bn_param : dict
        As :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray of shape (N, C, H, W)
    cache : tuple
        For :func:`spatial_batchnorm_backward`.

    Notes
    -----
    Statistics per channel over N, H and W, computed on an (N, C, H*W) view: no transpose
    copy as in the reference implementation.
    """
    return _forward(x, gamma, beta, bn_param, 4)


def spatial_batchnorm_backward(dout, cache):
    """Gradients of :func:`spatial_batchnorm_forward`: ``(dx, dgamma, dbeta)``."""
    return _backward(dout, cache)
