"""Independent reimplementations of the legacy conventions, as oracles for cybn.compat.

Written for these tests from the conventions' published math (not copied from any
solution): plain NumPy in the operand dtypes, so NumPy's promotion decides the result
dtypes exactly as it does in legacy code.

cs231n (assignment 2, every year): ``bn_param`` with ``mode`` (required), ``eps``
(1e-5), ``momentum`` (0.9, weight of the old value), running statistics created as
``np.zeros(D, dtype=x.dtype)``, updated with the biased variance and written back as new
arrays; three styles of solution:

* :func:`cs231n_forward` + :func:`cs231n_backward_graph` -- the staged
  computational-graph backward most solutions write for ``batchnorm_backward``;
* :func:`cs231n_backward_alt` -- the simplified closed form of ``batchnorm_backward_alt``;
* :func:`cs231n_forward_keepdims` -- a solution that keeps statistics as (1, D) with
  ``keepdims=True`` (and so (1, D) gamma/beta and running statistics);
* :func:`cs231n_spatial_forward` / backward -- the handout's transpose to (N*H*W, C).

"Deep Learning from Scratch": :class:`BookBatchNormalization`, the book's layer math
(epsilon 10e-7, lazily created float64 zero running statistics, (N, -1) reshape of
non-2-D input, staged backward).
"""

import numpy as np


def cs231n_forward(x, gamma, beta, bn_param, keepdims=False):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    if mode == "train":
        mu = x.mean(axis=0, keepdims=keepdims)
        xmu = x - mu
        var = (xmu ** 2).mean(axis=0, keepdims=keepdims)
        std = np.sqrt(var + eps)
        xhat = xmu / std
        out = gamma * xhat + beta
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
        cache = (xhat, xmu, std, gamma)
    elif mode == "test":
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
        cache = None
    else:
        raise ValueError(f'Invalid forward batchnorm mode "{mode}"')
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def cs231n_forward_keepdims(x, gamma, beta, bn_param):
    return cs231n_forward(x, gamma, beta, bn_param, keepdims=True)


def _param_grads(dout, cache):
    """dgamma, dbeta (in the statistics' (D,) or (1, D) shape) and N, shared by both styles."""
    xhat, _xmu, std, _gamma = cache
    keep = np.ndim(std) == 2
    return (dout * xhat).sum(axis=0, keepdims=keep), dout.sum(axis=0, keepdims=keep), keep


def cs231n_backward_graph(dout, cache):
    """Node by node through the graph xmu -> var -> std -> xhat -> out."""
    xhat, xmu, std, gamma = cache
    N = dout.shape[0]
    dgamma, dbeta, keep = _param_grads(dout, cache)
    dxhat = dout * gamma
    dinv = (dxhat * xmu).sum(axis=0, keepdims=keep)
    dstd = -dinv / std ** 2
    dvar = 0.5 * dstd / std
    dsq = np.ones_like(dout) * dvar / N
    dxmu = dxhat / std + 2 * xmu * dsq
    dmu = -dxmu.sum(axis=0, keepdims=keep)
    dx = dxmu + dmu / N
    return dx, dgamma, dbeta


def cs231n_backward_alt(dout, cache):
    xhat, _xmu, std, gamma = cache
    N = dout.shape[0]
    dgamma, dbeta, _ = _param_grads(dout, cache)
    dx = gamma / std / N * (N * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def cs231n_spatial_forward(x, gamma, beta, bn_param):
    N, C, H, W = x.shape
    rows = x.transpose(0, 2, 3, 1).reshape(-1, C)
    out, cache = cs231n_forward(rows, gamma, beta, bn_param)
    return out.reshape(N, H, W, C).transpose(0, 3, 1, 2), (cache, x.shape)


def cs231n_spatial_backward(dout, cache):
    inner, (N, C, H, W) = cache
    rows = dout.transpose(0, 2, 3, 1).reshape(-1, C)
    dx, dgamma, dbeta = cs231n_backward_graph(rows, inner)
    return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2), dgamma, dbeta


class BookBatchNormalization:
    """The book's layer: attributes gamma, beta, momentum, running_mean, running_var,
    input_shape, batch_size, xc, xn, std, dgamma, dbeta."""

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.input_shape = None
        self.running_mean = running_mean
        self.running_var = running_var
        self.batch_size = self.xc = self.xn = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        self.input_shape = x.shape
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        if self.running_mean is None:
            D = x.shape[1]
            self.running_mean = np.zeros(D)
            self.running_var = np.zeros(D)
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc ** 2, axis=0)
            std = np.sqrt(var + 10e-7)
            xn = xc / std
            self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + 10e-7)
        out = self.gamma * xn + self.beta
        return out.reshape(self.input_shape)

    def backward(self, dout):
        if dout.ndim != 2:
            dout = dout.reshape(dout.shape[0], -1)
        self.dbeta = dout.sum(axis=0)
        self.dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum(dxn * self.xc / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc = dxc + (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        dx = dxc - dmu / self.batch_size
        return dx.reshape(self.input_shape)
