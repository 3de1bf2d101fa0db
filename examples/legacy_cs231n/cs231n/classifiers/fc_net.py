"""A fully connected network in the assignment's style: {affine - [batch norm] - relu} x
(L - 1) - affine - softmax, parameters in ``self.params``, one ``bn_param`` dict per
layer, ``loss(X, y=None)`` returning scores (test) or (loss, grads) (train)."""

import numpy as np

from cs231n.layer_utils import *  # noqa: F403
from cs231n.layers import *  # noqa: F403


class FullyConnectedNet:
    def __init__(self, hidden_dims, input_dim, num_classes, normalization=None, reg=0.0,
                 weight_scale=1e-2, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        self.normalization = normalization
        self.reg = reg
        self.num_layers = len(hidden_dims) + 1
        self.params = {}
        dims = [input_dim, *hidden_dims, num_classes]
        for i in range(self.num_layers):
            self.params[f"W{i + 1}"] = weight_scale * rng.standard_normal((dims[i], dims[i + 1]))
            self.params[f"b{i + 1}"] = np.zeros(dims[i + 1])
            if normalization == "batchnorm" and i < self.num_layers - 1:
                self.params[f"gamma{i + 1}"] = np.ones(dims[i + 1])
                self.params[f"beta{i + 1}"] = np.zeros(dims[i + 1])
        self.bn_params = [{"mode": "train"} for _ in range(self.num_layers - 1)]
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)
        self.dtype = dtype

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        mode = "test" if y is None else "train"
        for bn_param in self.bn_params:
            bn_param["mode"] = mode
        caches = []
        h = X
        for i in range(1, self.num_layers):
            W, b = self.params[f"W{i}"], self.params[f"b{i}"]
            if self.normalization == "batchnorm":
                h, cache = affine_bn_relu_forward(h, W, b, self.params[f"gamma{i}"],  # noqa: F405
                                                  self.params[f"beta{i}"], self.bn_params[i - 1])
            else:
                a, fc = affine_forward(h, W, b)  # noqa: F405
                h, rc = relu_forward(a)  # noqa: F405
                cache = (fc, rc)
            caches.append(cache)
        L = self.num_layers
        scores, last = affine_forward(h, self.params[f"W{L}"], self.params[f"b{L}"])  # noqa: F405
        if mode == "test":
            return scores
        loss, dscores = softmax_loss(scores, y)  # noqa: F405
        grads = {}
        dh, grads[f"W{L}"], grads[f"b{L}"] = affine_backward(dscores, last)  # noqa: F405
        for i in range(L - 1, 0, -1):
            cache = caches[i - 1]
            if self.normalization == "batchnorm":
                dh, grads[f"W{i}"], grads[f"b{i}"], grads[f"gamma{i}"], grads[f"beta{i}"] = \
                    affine_bn_relu_backward(dh, cache)  # noqa: F405
            else:
                fc, rc = cache
                dh, grads[f"W{i}"], grads[f"b{i}"] = affine_backward(  # noqa: F405
                    relu_backward(dh, rc), fc)  # noqa: F405
        for i in range(1, L + 1):
            W = self.params[f"W{i}"]
            loss += 0.5 * self.reg * float(np.sum(W * W))
            grads[f"W{i}"] += self.reg * W
        return loss, grads
