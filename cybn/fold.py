"""Folding an inference-mode batch norm into the layer before it.

In evaluation a batch norm is a per-channel affine map,
``y = (z - running_mean) * s + bias`` with ``s = weight / sqrt(running_var + eps)``, so it
can be merged into the preceding linear or convolution layer once training is over:
one pass over the activations fewer at inference (the convention of PyTorch's
``torch.nn.utils.fusion.fuse_linear_bn_eval`` / ``fuse_conv_bn_eval``).
"""

from __future__ import annotations

import numpy as np

from . import functional as F

__all__ = ["fold_conv", "fold_linear"]


def _bn_scale_shift(bn):
    """Per-channel (s, t) in float64 with bn.eval()(z) == z * s + t."""
    if bn.training:
        raise ValueError("cannot fold a batch norm in training mode: call bn.eval() first "
                         "(training mode normalises with batch statistics)")
    if bn.running_mean is None:
        raise ValueError("cannot fold a batch norm without running statistics "
                         "(track_running_stats=False normalises with batch statistics)")
    if getattr(bn, "activation", None) is not None:
        raise ValueError(f"cannot fold a batch norm with activation={bn.activation!r}: the "
                         "ReLU after it is not affine (fold a module without activation "
                         "and apply the ReLU after the folded layer)")
    rm = bn.running_mean.astype(np.float64)
    s = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + float(bn.eps))
    if bn.weight is not None:
        s = s * bn.weight.astype(np.float64)
    t = -rm * s
    if bn.bias is not None:
        t = t + bn.bias.astype(np.float64)
    return s, t


def _fold(weight, bias, bn, kind):
    F._check_input(weight, "weight")
    if weight.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions for a {kind} layer, "
                         f"got shape {weight.shape}")
    C = weight.shape[0]
    if C != bn.num_features:
        raise ValueError(f"weight has {C} output channels (axis 0) but the batch norm has "
                         f"num_features={bn.num_features}")
    if bias is not None:
        F._check_input(bias, "bias")
        if bias.shape != (C,):
            raise ValueError(f"bias must have shape ({C},), got {bias.shape}")
    s, t = _bn_scale_shift(bn)
    w64 = weight.astype(np.float64) * s.reshape((C,) + (1,) * (weight.ndim - 1))
    b64 = t if bias is None else bias.astype(np.float64) * s + t
    out_dtype = np.float32 if weight.dtype == np.float16 else weight.dtype
    return w64.astype(weight.dtype), b64.astype(bias.dtype if bias is not None else out_dtype)


def fold_linear(weight, bias, bn):
    """Fold ``bn`` (in eval mode) into the linear layer before it.

    ``bn(x @ weight.T + bias)`` equals ``x @ weight'.T + bias'`` for every x.

    Parameters
    ----------
    weight : ndarray of shape (out_features, in_features), float16/32/64
        PyTorch's ``nn.Linear`` convention (out_features first).
    bias : ndarray of shape (out_features,) or None
    bn : BatchNorm1d
        With ``num_features == out_features``, in eval mode, tracking running statistics.

    Returns
    -------
    weight' : ndarray, shape and dtype of ``weight``
    bias' : ndarray of shape (out_features,)
        In ``bias``'s dtype, or ``weight``'s when ``bias`` is None.
        Computed in float64, then rounded once.

    Raises
    ------
    ValueError
        If ``bn`` is training, has no running statistics or has an ``activation``, or the
        shapes disagree.
    TypeError
        If ``weight``/``bias`` are not float NumPy arrays.
    """
    if weight is not None and getattr(weight, "ndim", 2) != 2:
        raise ValueError(f"weight must have shape (out_features, in_features), got "
                         f"{weight.shape}")
    return _fold(weight, bias, bn, "linear")


def fold_conv(weight, bias, bn):
    """Fold ``bn`` (in eval mode) into the convolution before it.

    Parameters
    ----------
    weight : ndarray of shape ``(out_channels, in_channels / groups, *kernel_size)``
        Output channels first (PyTorch's ``nn.ConvNd`` convention), any number of
        kernel dimensions.
    bias : ndarray of shape (out_channels,) or None
    bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
        In eval mode, with ``num_features == out_channels``.

    Returns
    -------
    weight', bias'
        As :func:`fold_linear`: convolving with them equals ``bn(conv(x, weight, bias))``.

    Raises
    ------
    ValueError, TypeError
        As :func:`fold_linear`.
    """
    return _fold(weight, bias, bn, "convolution")
