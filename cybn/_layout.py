"""Viewing an n-d array as the (A, C, B) C-contiguous block the kernels expect.

Statistics are taken over every axis but the channel axis, so any array whose memory is
contiguous in *some* axis order can be viewed without a copy: order the axes by stride,
then the axes before the channel axis (in memory order) fold into A and those after it
into B. C order with the channel on axis 1 gives (N, C, L); channels-last gives
(N*H*W, C, 1); Fortran order gives (L, C, N). Only arrays that are not contiguous in any
order (slices with steps, negative strides, broadcasts) are copied.
"""

from __future__ import annotations

import math

import numpy as np


class NCLView:
    """An (A, C, B) C-contiguous view of an array plus what is needed to map back.

    Attributes
    ----------
    data : ndarray of shape (A, C, B), C-contiguous
        The input, a view when possible, else a C-order copy.
    shape : tuple of int
        The original shape.
    perm : tuple of int or None
        Axis order of the original array in memory (None: already C order).
    copied : bool
        Whether ``data`` is a copy (the input was not contiguous in any axis order).
    """

    __slots__ = ("copied", "data", "perm", "shape")

    def __init__(self, data, shape, perm, copied=False):
        self.data = data
        self.shape = shape
        self.perm = perm
        self.copied = copied

    def empty_like(self, dtype=None):
        """A new (A, C, B) buffer and the array of the original shape that views it.

        The returned array has the same memory layout as the input (when the input was
        viewed without a copy), so outputs keep the input's layout.
        """
        buf = np.empty(self.data.shape, dtype=self.data.dtype if dtype is None else dtype)
        return buf, self.restore(buf)

    def restore(self, buf):
        """View an (A, C, B) buffer with the original shape and axis order."""
        if self.perm is None:
            return buf.reshape(self.shape)
        permuted = tuple(self.shape[i] for i in self.perm)
        return buf.reshape(permuted).transpose(np.argsort(self.perm))

    def adopt(self, other):
        """View `other` (same shape as the original) as (A, C, B) in this layout.

        Copies only when `other` is not laid out like the original.
        """
        t = other if self.perm is None else other.transpose(self.perm)
        t = np.ascontiguousarray(t)
        return t.reshape(self.data.shape)


def _split(shape, axis):
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    return (outer, shape[axis], inner)


def as_ncl(x, axis=1):
    """Return an NCLView of `x` with channel axis `axis` (non-negative, validated by caller)."""
    shape = x.shape
    if x.ndim == 2 and axis == 1 and x.flags.c_contiguous:  # the hot (N, C) case
        return NCLView(x.reshape(shape[0], shape[1], 1), shape, None)
    if x.flags.c_contiguous:
        return NCLView(x.reshape(_split(shape, axis)), shape, None)
    perm = tuple(sorted(range(x.ndim), key=lambda i: -abs(x.strides[i])))
    t = x.transpose(perm)
    if t.flags.c_contiguous and all(s >= 0 for s in x.strides):
        pos = perm.index(axis)
        return NCLView(t.reshape(_split(t.shape, pos)), shape, perm)
    c = np.ascontiguousarray(x)
    return NCLView(c.reshape(_split(shape, axis)), shape, None, copied=True)
