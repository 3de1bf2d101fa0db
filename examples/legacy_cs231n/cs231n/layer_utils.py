"""Sandwich layers, as students write them: they call the layer functions bound here by the
star import, so switching ``cs231n.layers`` alone would not reach them."""

from cs231n.layers import *  # noqa: F403


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    a, fc_cache = affine_forward(x, w, b)  # noqa: F405
    a_bn, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)  # noqa: F405
    out, relu_cache = relu_forward(a_bn)  # noqa: F405
    return out, (fc_cache, bn_cache, relu_cache)


def affine_bn_relu_backward(dout, cache):
    fc_cache, bn_cache, relu_cache = cache
    da_bn = relu_backward(dout, relu_cache)  # noqa: F405
    da, dgamma, dbeta = batchnorm_backward_alt(da_bn, bn_cache)  # noqa: F405
    dx, dw, db = affine_backward(da, fc_cache)  # noqa: F405
    return dx, dw, db, dgamma, dbeta
