"""Functional batch normalization on NumPy arrays, with PyTorch's semantics.

The three functions mirror ``torch.nn.functional.batch_norm``,
``torch.ops.aten.native_batch_norm`` and ``torch.ops.aten.native_batch_norm_backward``.
Statistics are taken over every axis but the channel axis (axis 1): axis 0 of an (N, C)
array, axes 0 and 2 of an (N, C, L) array, ``n = N * L`` values per channel
(Ioffe & Szegedy 2015, "Batch Normalization", Algorithm 1 and section 3.1).

This module validates, resolves dtypes and layouts and allocates; the arithmetic is done by
the compiled kernels (``cybn._kernels``, or its AVX2 or AVX-512 build; see ``cybn._backend``).

dtype policy
------------
* The input may be float16, float32 or float64. float32 and float64 are computed natively;
  float16 is computed in float32 and returned as float16. Sums are accumulated in float64.
* Per-channel arrays (weight, bias, running statistics) may be float16, float32 or float64
  and need not match the input: a float64 batch works with float32 parameters.
* ``save_mean`` and ``save_invstd`` are float64 arrays: cybn keeps the statistics it hands
  to the backward pass at full precision (PyTorch returns them in the input's dtype).
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

from ._backend import AVX512_MIN_ELEMENTS as _BIG
from ._backend import kernels as _kernels
from ._backend import kernels_small as _kernels_small
from ._layout import as_ncl
from ._threads import effective_n_threads

__all__ = ["batch_norm", "batch_norm_backward", "batch_norm_forward"]

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
# input or parameter dtype -> dtype the kernels compute and store in
_COMPUTE = {_F16: _F32, _F32: _F32, _F64: _F64}
_CNAME = {_F32: "float", _F64: "double"}
_UNSET = object()  # batch_norm_backward's "argument not given" (None is a valid value)
_EMPTY = np.empty(0, dtype=np.float64)
_EMPTY.flags.writeable = False


def _specialise(name, n_types):
    # Index the fused-type specialisations once: Cython's runtime dispatch on every call
    # would cost microseconds, which is most of the budget for small batches. The last key
    # says whether the input has at least _BIG elements: the build for large inputs
    # (cybn._backend.kernels) or for small ones (kernels_small; see AVX512_MIN_ELEMENTS).
    table = {}
    for big, module in ((False, _kernels_small), (True, _kernels)):
        sigs = getattr(module, name).__signatures__
        if n_types == 1:
            table.update({(dt, big): sigs[cname] for dt, cname in _CNAME.items()})
        else:
            # the two-type kernels take the arrays as objects and two scalar markers that
            # fix their specialisation (see the kernel source); bind the markers here
            table.update({(dx, dp, big): functools.partial(sigs[f"{nx}|{npar}"], 0.0, 0.0)
                          for dx, nx in _CNAME.items() for dp, npar in _CNAME.items()})
    return table


_FORWARD_TRAINING = _specialise("forward_training", 2)
_FORWARD_INFERENCE = _specialise("forward_inference", 2)
_BACKWARD_TRAINING = _specialise("backward_training", 2)
_BACKWARD_INFERENCE = _specialise("backward_inference", 2)
# the decomposed kernels of a forward/backward whose sums are reduced across processes
# (SyncBatchNorm's `reduce`, see _forward)
_BATCH_STATS = _specialise("batch_stats", 1)
_NORMALIZE = _specialise("normalize", 1)
_BACKWARD_REDUCE = _specialise("backward_reduce", 1)
_BACKWARD_INPUT = _specialise("backward_input", 1)
_UPDATE_RUNNING_STATS = _specialise("update_running_stats", 1)


# ---------------------------------------------------------------------------------------
# validation helpers

def _compute_dtype(dt):
    """float16/32/64 (either byte order) -> the dtype computed and stored in, else None."""
    cdt = _COMPUTE.get(dt)
    if cdt is None and dt.kind == "f" and not dt.isnative:
        cdt = _COMPUTE.get(dt.newbyteorder("="))  # e.g. big-endian data read from a file
    return cdt


def _check_input(x, name="input"):
    """Return the compute dtype of an input array, or raise TypeError."""
    if type(x) is np.ndarray:
        dt = x.dtype
        if dt is _F32 or dt is _F64:  # the common case, without a dtype hash
            return dt
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array of float16, float32 or float64, "
            f"got {type(x).__module__}.{type(x).__qualname__}")
    if type(x) is not np.ndarray and isinstance(x, (np.matrix, np.ma.MaskedArray)):
        # matrix keeps 2 dimensions under reshape, and a mask would be silently ignored
        kind = "numpy.matrix" if isinstance(x, np.matrix) else "numpy.ma.MaskedArray"
        raise TypeError(
            f"{name} must be a plain ndarray, got {kind}: pass np.asarray(x) (or "
            "fill/compress a masked array first)")
    cdt = _compute_dtype(x.dtype)
    if cdt is None:
        raise TypeError(
            f"{name} must have dtype float16, float32 or float64, got {x.dtype}")
    return cdt


def _check_ndim(x, ndims, name="input"):
    if x.ndim not in ndims:
        expected = " or ".join(f"{d}D" for d in ndims)
        raise ValueError(f"expected {expected} {name} (got {x.ndim}D {name})")


def _check_axis(axis, ndim):
    """Normalise a channel axis (negative counts from the end) for an ndim-D input."""
    if type(axis) is int and 0 <= axis < ndim:  # the common case, without ABC checks
        return axis
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for a {ndim}D input")
    return int(axis) % ndim


def _check_channels(a, name, C, axis=1):
    """Check that a per-channel array is 1-D with C elements (None passes)."""
    if a is None or (type(a) is np.ndarray and a.shape == (C,) and a.dtype in _COMPUTE):
        return
    _check_input(a, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape ({C},) (the input has {C} "
                         f"channels along axis {axis}), got shape {a.shape}")
    if a.shape[0] != C:
        raise ValueError(
            f"{name} should contain {C} elements not {a.size} "
            f"(the input has {C} channels along axis {axis}; {name} has shape {a.shape})")


def _check_batch_size(shape, axis=1):
    # torch's _verify_batch_size: the number of values per channel is prod(shape) / C
    n = 1
    for i, s in enumerate(shape):
        if i != axis:
            n *= s
    if n == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {tuple(shape)}")


def _check_eps(eps, training):
    if type(eps) is float and eps > 0:  # the common case, without the slow ABC check
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not training and not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return float(eps)


def _check_momentum(momentum, finite=True):
    # Like torch, values outside [0, 1] are accepted (they extrapolate); unlike torch, a
    # non-finite momentum, which would silently turn the running statistics into NaN, is not.
    # finite=False where momentum is unused (evaluation, no running statistics): a value of
    # the wrong type is still a mistake, which torch's argument parser rejects too.
    if type(momentum) is float and (momentum - momentum == 0 or not finite):
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number, got {type(momentum).__name__}")
    momentum = float(momentum)
    if finite and momentum - momentum != 0:
        raise ValueError(f"momentum must be finite, got {momentum}")
    return momentum


def _update_factor(momentum, module, running_mean, running_var, prefix):
    """The running-statistics update's weight of the batch, after checking what it needs:
    ``momentum`` (a module's None: ``1 / (num_batches_tracked + 1)``, the cumulative
    average) and that both running statistics are writeable."""
    if momentum is None and module is not None:
        factor = 1.0 / float(module.num_batches_tracked + 1)
    else:
        factor = _check_momentum(momentum)
    _check_writeable(running_mean, prefix + "running_mean")
    _check_writeable(running_var, prefix + "running_var")
    return factor


def _check_training(training):
    # torch's argument parser takes a bool (or NumPy bool) only: training="False" is a str,
    # and truthy, so bool() would silently run a training step
    if training is True or training is False:
        return training
    if isinstance(training, np.bool_):
        return bool(training)
    raise TypeError(f"training must be a bool, got {type(training).__name__}")


_ACTIVATIONS = {None: 0, "relu": 1}  # the kernels' codes (ACT_NONE, ACT_RELU)


def _check_activation(activation):
    """None or "relu" -> the kernels' activation code, else TypeError/ValueError."""
    code = _ACTIVATIONS.get(activation) if (activation is None or type(activation) is str) \
        else None
    if code is not None:
        return code
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or 'relu', got "
                        f"{type(activation).__name__}")
    raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def _check_residual(residual, input, act, *others):
    """Check a residual (added before the activation): a NumPy array of the input's
    shape and dtype, with an activation, not overlapping any of ``others`` (``out``)."""
    if residual is None:
        return
    if not isinstance(residual, np.ndarray) or isinstance(residual, (np.matrix,
                                                                     np.ma.MaskedArray)):
        raise TypeError(f"residual must be a NumPy array or None, got "
                        f"{type(residual).__module__}.{type(residual).__qualname__}")
    if residual.dtype != input.dtype:
        raise TypeError(f"residual must have the input's dtype {input.dtype}, got "
                        f"{residual.dtype}")
    if residual.shape != input.shape:
        raise ValueError(f"residual must have the input's shape {input.shape}, got "
                         f"{residual.shape}")
    if not act:
        raise ValueError("residual is added before the activation: it needs "
                         "activation='relu', got activation=None")
    for name, a in others:
        if a is not None and np.may_share_memory(a, residual):
            raise ValueError(f"{name} must not overlap residual (the backward reads the "
                             "residual again)")


def _check_writeable(a, name):
    if not a.flags.writeable:
        raise ValueError(f"{name} is updated in place and must be writeable, "
                         "got a read-only array")


_PER_CHANNEL = ("running_mean", "running_var", "weight", "bias")


def _per_channel(running_mean, running_var, weight, bias, C, axis, xdt, prefix=""):
    """Check the per-channel arrays (None passes) and resolve them for the kernels.

    Returns (weight, bias, running_mean, running_var, pdt): the arrays in one kernel dtype
    ``pdt`` (the first present array's compute dtype, in the order of the arguments; else
    ``xdt``), C-contiguous; only what is not already so is copied. ``prefix`` names a
    module's attributes (``self.``) in the messages.
    """
    cshape = (C,)
    pdt = None
    ready = True
    i = 0
    for a in (running_mean, running_var, weight, bias):
        if a is not None:
            dt = a.dtype if type(a) is np.ndarray else None
            if (dt is not _F32 and dt is not _F64) or a.shape != cshape:
                # not the common case: raises unless a subclass, float16 or a non-native
                # float of the right shape
                _check_channels(a, prefix + _PER_CHANNEL[i], C, axis)
                dt = _compute_dtype(a.dtype)
                ready = False
            if pdt is None:
                pdt = dt
            if dt is not pdt or not a.flags.c_contiguous:
                ready = False
        i += 1
    if pdt is None:
        pdt = xdt
    if ready:  # the common case: nothing to convert
        return weight, bias, running_mean, running_var, pdt
    return (_as_param(weight, pdt), _as_param(bias, pdt), _as_param(running_mean, pdt),
            _as_param(running_var, pdt), pdt)


def _as_param(a, pdt):
    if a is None or (a.dtype == pdt and a.flags.c_contiguous):
        return a
    return np.ascontiguousarray(a, dtype=pdt)


def _check_out(out, shape, dtype, other):
    """Check an ``out`` array's type, dtype, shape, writeability and overlap with ``other``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    _check_writeable(out, "out")
    if any(np.may_share_memory(out, a) for a in other):
        raise ValueError("out must not overlap the input arrays")


def _prepare_out(out, shape, dtype, view, xdt, other):
    """Validate ``out`` (which must not overlap any array in ``other``); return (buf3, res).

    ``buf3`` is the (A, C, B) array of dtype ``xdt`` the kernel writes; ``res`` views it in
    the input's shape (it is ``out`` itself when ``out`` can be written directly).
    Hand both to :func:`_deliver` after the kernel ran.
    """
    if out is None:
        return view.empty_like()
    _check_out(out, shape, dtype, other)
    if dtype != xdt:
        return view.empty_like()
    t = out if view.perm is None else out.transpose(view.perm)
    if not t.flags.c_contiguous:
        raise ValueError(
            "out must have the same memory layout as the input (contiguous in the same "
            "axis order); pass out=None to get a new array in the input's layout")
    return t.reshape(view.data.shape), out


def _deliver(res, out, dtype):
    """The array to return once the kernel has filled ``res`` (see _prepare_out)."""
    if out is None:
        return res if res.dtype == dtype else res.astype(dtype)
    if res is not out:
        np.copyto(out, res, casting="same_kind")
    return out


# ---------------------------------------------------------------------------------------
# The one validated call path. Every entry point -- the functions below, the modules
# (cybn.batchnorm, cybn.sync) and the legacy adapters (cybn.compat) -- runs its forward
# through _forward and its backward through _backward; they add only their own state
# handling. SyncBatchNorm passes a `reduce` callback that turns this rank's statistics
# (or backward sums) into the global ones: the communication is its only part of the
# arithmetic (as torch's SyncBatchNorm function only adds all_gather to the same ops).

class _SavedInput:
    """The forward's input as backward needs it, without keeping a copy of it alive.

    Holds the (A, C, B) view when it shares the input's memory; when the forward had to
    copy (float16 input, or a layout that is not contiguous in any axis order) it holds
    the input itself and backward makes the copy again, so a cache never pins a second
    input-sized array.
    """

    __slots__ = ("act", "axis", "input", "residual", "view", "xdt")

    def __init__(self, input, view, xdt, axis, act=0, residual=None):
        self.input = input
        self.view = None if (view.copied or input.dtype != xdt) else view
        self.xdt = xdt
        self.axis = axis
        self.act = act                # the fused activation's kernel code (0: none)
        self.residual = residual      # the residual added before it, by reference

    def ncl(self):
        if self.view is not None:
            return self.view
        x = self.input if self.input.dtype == self.xdt else self.input.astype(self.xdt)
        return as_ncl(x, self.axis)


def _check_num_features(module, input, axis, C):
    """A module's channel count against the input's (torch's wording, plus an axis hint)."""
    nf = module.num_features
    if C == nf:
        return
    if module.running_mean is not None:
        name = "running_mean"
    elif module.weight is not None:
        name = "weight"
    else:
        return  # like torch: no per-channel state, any C is accepted
    hint = ""
    if axis != input.ndim - 1 and input.shape[-1] == nf:
        hint = " (if the channels are the last axis, pass axis=-1)"
    raise ValueError(
        f"{name} should contain {C} elements not {nf}: input of shape {input.shape} has "
        f"{C} channels along axis {axis}, but this module has num_features={nf}{hint}")


def _forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
             axis=1, *, out=None, n_threads=None, module=None, unbiased=True,
             check_finite=False, legacy=False, keep=True, reduce=None, renorm=None,
             update_running=True, activation=None, residual=None):
    """Validate a forward call once, run it; return (output, stats, saved, count, updated).

    The checks, in this order (the first failure raises; nothing has changed then):
    the input (type and dtype; dimensions: ``module._check_input_dim`` for a module, at
    least 2-D otherwise), the channel axis, the per-channel arrays against the channel
    count (a module's ``self.<name>`` against its ``num_features``), ``training``, which
    statistics are used, one value per channel, ``momentum``, writeability of updated
    running statistics, ``eps`` (> 0 with batch statistics, >= 0 otherwise).
    ``legacy`` relaxes two checks the legacy conventions (cybn.compat) do not make: eps
    may be 0 and one value per channel is allowed (their formula then gives the bias).

    Which statistics: batch statistics when ``training``; for a ``module`` also when it
    has no running statistics (torch's rule), where the functional form requires them.
    The running statistics are updated when training with them (and, for a module,
    tracking them): in place, last, with weight ``momentum`` on the batch (for a module
    whose momentum is None, ``1 / (num_batches_tracked + 1)``: the cumulative average) and
    the unbiased (``unbiased``) or biased batch variance.

    ``stats`` is float64: (3, C) rows mean, invstd, biased variance with batch statistics;
    (2, C) rows running mean, invstd otherwise (None when ``keep`` is False, as
    ``saved``, the input as backward needs it); its row count tells the backward which
    formula applies. ``count`` is the number of values per channel behind the statistics
    (the global one under ``reduce``); ``updated`` says whether the running statistics
    were updated (an empty batch changes nothing).
    ``check_finite`` raises ValueError, before any state changes, when the batch
    statistics of a channel are not finite (the error's ``channels`` attribute lists
    them, for callers that word their own message).

    ``reduce(count, mean, m2)`` (SyncBatchNorm, training) receives this call's per-channel
    count, mean and M2 = sum((x - mean)^2) and returns the global (count, mean, M2); it
    checks what only it can (one value per channel over all ranks, finiteness).

    ``renorm=(rmax, dmax)`` (validated by the caller, :func:`_check_renorm`) makes a
    batch-statistics forward a batch renormalization (see :func:`_renorm_factors`); the
    running statistics must then be given. ``stats`` gets two more rows, r and d, which
    the backward takes as constants. ``update_running=False`` computes batch statistics
    as usual but leaves the running statistics alone (population statistics, ghost
    batches: their caller updates them).
    ``activation`` ("relu") and ``residual`` (an array like the input, added before it):
    the fused batch norm + ReLU, checked last (:func:`_check_activation`,
    :func:`_check_residual`); not with ``reduce``. ``saved`` then holds both, the residual
    by reference, for the backward's mask.
    """
    # -- validation (cheap checks first; each check's common case costs one comparison)
    xdt = _check_input(input)
    if module is not None:
        module._check_input_dim(input)
    elif input.ndim < 2:
        raise ValueError(
            f"expected at least 2D input (got {input.ndim}D input): "
            "shape (N, C) or (N, C, L) with channels on axis 1")
    ndim = input.ndim
    if type(axis) is not int or not 0 <= axis < ndim:  # (the check's common case inline)
        axis = _check_axis(axis, ndim)
    C = input.shape[axis]
    if module is None:
        prefix = ""
    else:
        _check_num_features(module, input, axis, C)
        prefix = "self."
        C = module.num_features  # the same as the input's when any array is checked
    w, b, rm, rv, pdt = _per_channel(running_mean, running_var, weight, bias, C, axis, xdt,
                                     prefix)
    if training is not True and training is not False:
        training = _check_training(training)
    has_running = running_mean is not None
    if module is not None:
        if has_running != (running_var is not None):
            raise ValueError("self.running_mean and self.running_var must either both be "
                             "None or neither be None")
        batch_stats = training or not has_running
        update = training and has_running and module.track_running_stats and update_running
    elif training:
        if has_running != (running_var is not None):
            raise ValueError("running_mean and running_var must either both be None or "
                             "neither be None")
        batch_stats, update = True, has_running and update_running
    elif not has_running or running_var is None:
        raise ValueError("running_mean and running_var must be defined in evaluation mode "
                         "(training=False)")
    else:
        batch_stats = update = False
    if batch_stats and reduce is None and not legacy:  # under reduce, the global count
        _check_batch_size(input.shape, axis)
    factor = 0.0
    if update:
        factor = _update_factor(momentum, module, running_mean, running_var, prefix)
    elif module is None and type(momentum) is not float:
        _check_momentum(momentum, finite=False)  # unused, but a wrong type is a mistake
    if type(eps) is not float or not eps > 0:
        eps = _check_eps(eps, batch_stats and not legacy)
    act = 0
    if activation is not None or residual is not None:
        act = _check_activation(activation)
        _check_residual(residual, input, act, ("out", out))
        if reduce is not None:
            raise ValueError("activation and residual are not supported with a "
                             "cross-process reduction (SyncBatchNorm)")
        if renorm is not None:
            raise ValueError("activation and residual are not supported with batch "
                             "renormalization (renorm=True)")

    # -- resolution: compute dtype, (A, C, B) view, output buffer, kernel parameters
    x = input if input.dtype is xdt else input.astype(xdt)
    view = as_ncl(x, axis)
    A, C, B = view.data.shape
    count = A * B
    if out is None:
        out3 = np.empty(view.data.shape, xdt)
        res = view.restore(out3)
    else:
        out3, res = _prepare_out(out, input.shape, input.dtype, view, xdt, (input,))
    nt = effective_n_threads(n_threads)
    r3 = None
    if residual is not None:
        r3 = view.adopt(residual if residual.dtype is xdt else residual.astype(xdt))
    if not update:
        rm_k = rv_k = None
    else:
        rm_k, rv_k = rm, rv
    var_scale = 1.0

    # -- the kernels
    if not batch_stats:
        stats = np.empty((2, C)) if keep else None
        _FORWARD_INFERENCE[xdt, pdt, view.data.size >= _BIG](view.data, w, b, rm, rv, eps,
                                                             out3, stats, nt, act, r3)
    elif reduce is not None or renorm is not None:
        # the decomposed kernels: statistics, (the reduction across processes,) then the
        # output with constants that may depend on the global or renormalised statistics
        stats, count = _reduced_stats(view.data, xdt, count, eps, nt, reduce)
        if count > 0:
            var_scale = count / (count - 1) if unbiased else 1.0
        if reduce is None and check_finite and count > 0:
            _check_finite_stats(stats, axis)
        scale = stats[1] * w if w is not None else stats[1].copy()
        shift = b.astype(np.float64) if b is not None else np.zeros(C)
        if renorm is not None:
            r, d = _renorm_factors(stats, count, rm, rv, eps, *renorm)
            scale *= r
            shift += d * w if w is not None else d
            stats = np.vstack((stats, r, d))
        if view.data.size:
            _NORMALIZE[xdt, view.data.size >= _BIG](view.data, stats[0], scale, shift, out3,
                                                    nt)
        if update and count > 0:
            _UPDATE_RUNNING_STATS[pdt, False](rm_k, rv_k, stats[0], stats[2], var_scale,
                                              factor)
    elif count == 0:
        stats = _empty_batch_stats(C, eps)
        update = False  # an empty batch changes nothing
    else:
        stats = np.empty((3, C))
        # count > 1 here: one value per channel is rejected before any work in training
        var_scale = count / (count - 1) if unbiased else 1.0
        kernel = _FORWARD_TRAINING[xdt, pdt, view.data.size >= _BIG]
        bad = kernel(view.data, w, b, rm_k, rv_k, eps, factor, var_scale, out3, stats,
                     check_finite, nt, act, r3)
        if bad:
            _check_finite_stats(stats, axis)
    if update and count > 0:
        # the kernel updated copies when the caller's arrays could not be used as is
        if rm is not running_mean:
            running_mean[...] = rm
        if rv is not running_var:
            running_var[...] = rv
    saved = _SavedInput(input, view, xdt, axis, act, residual) if keep else None
    if out is not None or input.dtype is not xdt:
        res = _deliver(res, out, input.dtype)
    return res, stats, saved, count, update and count > 0


def _check_finite_stats(stats, axis):
    """Raise check_finite's ValueError when a channel's batch statistics are not finite."""
    channels = np.flatnonzero(~np.isfinite(stats[0]) | ~np.isfinite(stats[2]))
    if channels.size:
        err = ValueError(
            f"input holds NaN or Inf in channel(s) {channels.tolist()} (axis {axis}) "
            "and check_finite is on: nothing was updated")
        err.channels = channels.tolist()
        raise err


def _check_renorm(rmax, dmax):
    """Validate batch renormalization's clipping bounds; return them as floats."""
    for name, value, low in (("rmax", rmax, 1.0), ("dmax", dmax, 0.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not value >= low:  # also rejects NaN; inf (no clipping) is allowed
            raise ValueError(f"{name} must be >= {low:g} (inf: no clipping), got {value}")
    return float(rmax), float(dmax)


def _renorm_factors(stats, count, running_mean, running_var, eps, rmax, dmax):
    """Batch renormalization's r and d per channel (Ioffe 2017, Algorithm 1), float64.

    ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and ``d = clip((mu_B - mu) / sigma, -dmax,
    dmax)`` with the batch's ``sigma_B = sqrt(var_B + eps)`` (biased variance, as the
    normalisation uses) and the running statistics *before* this batch updates them:
    ``mu = running_mean``, ``sigma = sqrt(running_var + eps)`` (as Chainer's
    BatchRenormalization; the paper keeps a moving sigma instead of a moving variance).
    An empty batch gives r = 1, d = 0.
    """
    if count == 0:
        return np.ones(stats.shape[1]), np.zeros(stats.shape[1])
    sigma = np.sqrt(running_var.astype(np.float64) + eps)
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN/Inf propagate, as in torch
        r = np.clip(np.sqrt(stats[2] + eps) / sigma, 1.0 / rmax, rmax)
        d = np.clip((stats[0] - running_mean) / sigma, -dmax, dmax)
    return r, d


def _reduced_stats(x3, xdt, count, eps, nt, reduce):
    """(stats, global count) from this call's statistics and ``reduce`` (see _forward);
    without ``reduce``, this call's own statistics."""
    C = x3.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    _BATCH_STATS[xdt, x3.size >= _BIG](x3, mean, m2, nt)
    n = count
    if reduce is not None:
        n, mean, m2 = reduce(count, mean, m2)
    if n == 0:
        return _empty_batch_stats(C, eps), 0
    stats = np.empty((3, C))
    stats[0] = mean
    np.divide(m2, n, out=stats[2])
    stats[1] = 1.0 / np.sqrt(stats[2] + eps)
    return stats, n


def _empty_batch_stats(C, eps):
    """(3, C) float64 statistics of an empty batch: mean 0, invstd 1/sqrt(eps), var 0."""
    stats = np.zeros((3, C))
    stats[1] = 1.0 / np.sqrt(eps)
    return stats


def _backward(grad_output, saved, weight, stats, training, need_weight, need_bias, gdt,
              n_threads, *, out=None, weight_name="weight", shape_of="the input's shape",
              reduce=None, count=None, renorm=None, bias=None, bias_name="bias"):
    """Validate and run a backward for the forward's input ``saved`` (a _SavedInput).

    Checks ``grad_output`` (type, then the input's shape; ``shape_of`` words the
    expectation) and ``weight`` (named ``weight_name``) against the channel count.
    ``stats`` is (center, invstd): the batch or running mean and 1/sqrt(var + eps),
    C-contiguous float64 arrays of shape (C,).
    Returns (grad_input, grad_weight or None, grad_bias or None); the gradients of the
    parameters are in ``gdt`` (default: weight's compute dtype, else the input's).
    ``reduce(sum_dy, sum_dy_xmu)`` (SyncBatchNorm, after a training forward; ``count``
    is then the global count) returns the global per-channel sums.
    ``renorm=(r, d)`` (float64 (C,), from a batch-renormalization forward): r and d are
    constants of the backward (Ioffe 2017, section 3): the gradient is the batch-norm one
    with weight ``weight * r``, and ``grad_weight = r * sum(dy * x_hat) + d * sum(dy)``.
    After a forward with an activation (``saved.act``), ``bias`` (named ``bias_name``) is
    the forward's, which the ReLU's mask is recomputed with, and with a residual
    (``saved.residual``) grad_residual is returned fourth.
    """
    _check_input(grad_output, "grad_output")
    shape = saved.input.shape
    if grad_output.shape != shape:
        raise ValueError(f"grad_output must have {shape_of} {shape}, got {grad_output.shape}")
    C = stats[0].shape[0]
    _check_channels(weight, weight_name, C, saved.axis)
    act = saved.act
    if act:
        _check_channels(bias, bias_name, C, saved.axis)
    view = saved.ncl()
    xdt = saved.xdt
    dtype = saved.input.dtype
    x3 = view.data
    dy = grad_output if grad_output.dtype == xdt else grad_output.astype(xdt)
    dy3 = view.adopt(dy)
    pdt = _compute_dtype(weight.dtype) if weight is not None else (gdt if gdt in _CNAME else xdt)
    w = _as_param(weight, pdt)
    residual = saved.residual
    others = (grad_output, saved.input) if residual is None else (grad_output, saved.input,
                                                                  residual)
    gi3, res = _prepare_out(out, shape, dtype, view, xdt, others)
    nt = effective_n_threads(n_threads)
    if renorm is not None:
        # weight * r in float64 (the kernels take double parameters with any input);
        # grad_weight needs both sums whatever the module has
        r, d = renorm
        out_pdt = pdt
        w = r * w if w is not None else r
        pdt = _F64
        want_weight, want_bias = need_weight, need_bias
        need_weight = need_bias = True
    if reduce is None:
        gw = np.empty(C, dtype=pdt) if need_weight else None
        gb = np.empty(C, dtype=pdt) if need_bias else None
        kernel = _BACKWARD_TRAINING if training else _BACKWARD_INFERENCE
        if not act:
            kernel[xdt, pdt, x3.size >= _BIG](dy3, x3, w, stats[0], stats[1], gi3, gw, gb, nt)
        else:
            r3 = gr3 = None
            if residual is not None:
                r3 = view.adopt(residual if residual.dtype == xdt else residual.astype(xdt))
                gr3, gres = view.empty_like()
            kernel[xdt, pdt, x3.size >= _BIG](dy3, x3, w, stats[0], stats[1], gi3, gw, gb,
                                              nt, act, _as_param(bias, pdt), r3, gr3)
    else:
        mean, invstd = stats[0], stats[1]
        sums = np.empty((2, C))
        _BACKWARD_REDUCE[xdt, x3.size >= _BIG](dy3, x3, mean, sums[0], sums[1], nt)
        sum_dy, sum_dy_xmu = reduce(sums[0], sums[1])
        if x3.size > 0:
            scale = invstd * w if w is not None else invstd
            _BACKWARD_INPUT[xdt, x3.size >= _BIG](dy3, x3, mean, sum_dy / count,
                                 sum_dy_xmu * (invstd * invstd) / count,
                                 np.ascontiguousarray(scale, np.float64), gi3, nt)
        gw = (sum_dy_xmu * invstd).astype(pdt) if need_weight else None
        gb = sum_dy.astype(pdt) if need_bias else None
    if renorm is not None:
        gw = (r * gw + d * gb).astype(out_pdt) if want_weight else None
        gb = gb.astype(out_pdt) if want_bias else None
        pdt = out_pdt
    if gdt is not None and gdt != pdt:
        gw = None if gw is None else gw.astype(gdt)
        gb = None if gb is None else gb.astype(gdt)
    if act and residual is not None:
        return _deliver(res, out, dtype), gw, gb, _deliver(gres, None, dtype)
    return _deliver(res, out, dtype), gw, gb


# ---------------------------------------------------------------------------------------
# Ghost (virtual) batches: the batch's rows in consecutive groups, each normalised with its
# own statistics (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", section
# 4; tf.keras 2's BatchNormalization(virtual_batch_size=...)). Every group runs the one
# call path above; only the grouping and the running-statistics update are here.

def _check_virtual_batch_size(virtual_batch_size):
    """None, or a positive int (returned as int)."""
    v = virtual_batch_size
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"virtual_batch_size must be an int or None, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"virtual_batch_size must be >= 1, got {v}")
    return int(v)


class _Group:
    """One virtual batch: rows [start, stop) and what its backward needs."""

    __slots__ = ("count", "saved", "start", "stats", "stop")

    def __init__(self, start, stop, stats, saved, count):
        self.start = start
        self.stop = stop
        self.stats = stats      # (3, C) float64: mean, invstd, biased variance
        self.saved = saved      # the group's input (_SavedInput)
        self.count = count      # values per channel in the group


class _Ghost:
    """A ghost-batch forward's record for its backward: the groups and the grouped input."""

    __slots__ = ("groups", "input", "x")

    def __init__(self, input, x, groups):
        self.input = input      # the caller's input (by reference)
        self.x = x              # the input as grouped: ``input``, or a C-order copy when
        self.groups = groups    # its rows were not outermost in memory


def _ghost_ranges(shape, axis, v):
    """The (start, stop) row ranges of the virtual batches of an input of ``shape``."""
    if axis == 0:
        raise ValueError(
            "virtual_batch_size groups the rows of axis 0, which is the channel axis "
            "here (axis=0): put the batch first")
    N = shape[0]
    per_row = 1
    for i, s in enumerate(shape[1:], 1):
        if i != axis:
            per_row *= s
    ranges = [(a, min(a + v, N)) for a in range(0, N, v)]
    for a, b in ranges:
        if (b - a) * per_row == 1:
            raise ValueError(
                f"Expected more than 1 value per channel in each virtual batch when "
                f"training, got input size {tuple(shape)} with virtual_batch_size={v}: "
                f"rows {a}:{b} hold 1 value per channel")
    return ranges


def _rows_outermost(x):
    """Whether every slice of rows of ``x`` is contiguous in x's own axis order (axis 0
    outermost in memory), so the groups are views and their outputs keep x's layout."""
    if x.flags.c_contiguous:
        return True
    if as_ncl(x, 0).copied:
        return False
    s0 = x.strides[0]
    return all(st <= s0 for st, n in zip(x.strides[1:], x.shape[1:]) if n > 1)


def _target(out, x, dtype, other):
    """Where the groups write: ``out`` when it has x's layout, else a new array like x.

    ``out`` is checked first (the forward's rules, without its layout rule: an ``out`` of
    another layout is filled by a copy at the end, see :func:`_finish`).
    """
    if out is not None:
        _check_out(out, x.shape, dtype, other)
        if out.strides == x.strides and x.dtype == dtype:
            return out
    return np.empty_like(x, dtype=dtype)


def _finish(target, out):
    if out is None or target is out:
        return target
    np.copyto(out, target)
    return out


def _forward_ghost(input, weight, bias, running_mean, running_var, momentum, eps, axis,
                   virtual_batch_size, module, *, out=None, n_threads=None,
                   check_finite=False, update_running=True, activation=None,
                   residual=None):
    """A module's training forward over virtual batches; returns (output, ghost, updated).

    Each group of ``virtual_batch_size`` consecutive rows (axis 0; the last group holds
    the remainder) is normalised with its own batch statistics by :func:`_forward`. The
    running statistics are then updated once, as tf.keras 2 does: with the mean of the
    groups' means and the mean of their variances, weighted by the groups' sizes (equal
    weights when the size divides the batch), the variances unbiased per group (torch's
    Bessel correction, ``n_g / (n_g - 1)``; tf.keras uses the biased ones).
    Everything is checked before anything changes. ``update_running=False``: no update
    (population statistics collect the groups instead). ``activation`` and ``residual``:
    the fused ReLU per group (the residual's rows with the group's).
    """
    _check_input(input)
    module._check_input_dim(input)
    axis = _check_axis(axis, input.ndim)
    C = input.shape[axis]
    _check_num_features(module, input, axis, C)
    ranges = _ghost_ranges(input.shape, axis, virtual_batch_size)
    update = (update_running and module.track_running_stats and running_mean is not None
              and len(ranges) > 0)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        _check_channels(a, "self." + name, C, axis)  # before their flags are read
    if update:
        factor = _update_factor(momentum, module, running_mean, running_var, "self.")
    if activation is not None or residual is not None:
        _check_residual(residual, input, _check_activation(activation), ("out", out))
    x = input if _rows_outermost(input) else np.ascontiguousarray(input)
    target = _target(out, x, input.dtype, (input,) if residual is None else (input, residual))
    if check_finite and target is out:
        # a later group may raise: write ``out`` only once every group has passed
        target = np.empty_like(x, dtype=input.dtype)
    groups = []
    for a, b in ranges:
        _, stats, saved, count, _ = _forward(
            x[a:b], weight, bias, running_mean, running_var, True, momentum, eps, axis,
            out=target[a:b], n_threads=n_threads, module=module,
            check_finite=check_finite, update_running=False, activation=activation,
            residual=None if residual is None else residual[a:b])
        groups.append(_Group(a, b, stats, saved, count))
    n = np.array([g.count for g in groups], dtype=np.float64)
    update = update and n.sum() > 0  # no values (a zero-size axis): nothing to learn
    if update:
        w = n / n.sum()
        mean = w @ np.array([g.stats[0] for g in groups])
        var = w @ np.array([g.stats[2] * (g.count / (g.count - 1)) for g in groups])
        # the kernels' update, in double: (1 - factor) * running + factor * batch
        running_mean[...] = (1.0 - factor) * running_mean.astype(np.float64) + factor * mean
        running_var[...] = (1.0 - factor) * running_var.astype(np.float64) + factor * var
    return _finish(target, out), _Ghost(input, x, groups), update


def _backward_ghost(grad_output, ghost, weight, need_weight, need_bias, gdt, n_threads, *,
                    out=None, weight_name="weight", shape_of="the input's shape", bias=None,
                    bias_name="bias"):
    """The backward of :func:`_forward_ghost` (its ``ghost`` record): per group, with the
    parameters' gradients summed over the groups.

    Returns (grad_input, grad_weight or None, grad_bias or None), and grad_residual fourth
    after a forward with a residual; grad_input has the grouped input's layout (``out`` of
    another layout is filled by a copy).
    """
    _check_input(grad_output, "grad_output")
    x, groups = ghost.x, ghost.groups
    if grad_output.shape != x.shape:
        raise ValueError(f"grad_output must have {shape_of} {x.shape}, "
                         f"got {grad_output.shape}")
    first = groups[0].saved
    C = groups[0].stats.shape[1]
    _check_channels(weight, weight_name, C, first.axis)
    dtype = first.input.dtype
    target = _target(out, x, dtype, (grad_output, x, ghost.input))
    gw = np.zeros(C) if need_weight else None
    gb = np.zeros(C) if need_bias else None
    gres = None if first.residual is None else np.empty(x.shape, dtype)
    for g in groups:
        grads = _backward(
            grad_output[g.start:g.stop], g.saved, weight, (g.stats[0], g.stats[1]), True,
            need_weight, need_bias, _F64, n_threads, out=target[g.start:g.stop],
            weight_name=weight_name, shape_of=shape_of, bias=bias, bias_name=bias_name)
        if need_weight:
            gw += grads[1]
        if need_bias:
            gb += grads[2]
        if gres is not None:
            gres[g.start:g.stop] = grads[3]
    pdt = gdt if gdt is not None else (_COMPUTE[weight.dtype] if weight is not None else
                                       first.xdt)
    result = (_finish(target, out), None if gw is None else gw.astype(pdt),
              None if gb is None else gb.astype(pdt))
    return result if gres is None else (*result, gres)


# ---------------------------------------------------------------------------------------
# public functions

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, n_threads=None, activation=None,
               residual=None):
    r"""Batch normalization over axis 1, ``torch.nn.functional.batch_norm``'s contract.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w + b

    In training (or when no running statistics are given) the mean and the biased variance
    of the batch are used; when ``training`` and running statistics are given, these are
    updated in place: ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance. In evaluation the running statistics are used.

    Parameters
    ----------
    input : ndarray of shape (N, C) or (N, C, L) (any ndim >= 2), float16/32/64
        The batch; channels on axis 1. Any memory layout; never modified.
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics, float16/32/64, updated in place when ``training``.
        Required when ``training`` is False.
    weight, bias : ndarray of shape (C,) or None
        Affine parameters (1 and 0 when None).
    training : bool
        Use batch statistics (and update the running ones).
    momentum : float
        Weight of the new batch in the running-statistics update (PyTorch convention);
        usually in [0, 1], values outside extrapolate as in PyTorch; must be finite.
    eps : float
        Added to the variance; must be > 0 in training, >= 0 in evaluation.
    axis : int, default 1
        The channel axis (negative counts from the end): -1 normalises channels-last
        (N, ..., C) data in place of a transpose, without a copy.
    n_threads : int or None
        OpenMP threads; see :func:`cybn.set_num_threads`.
    activation : None or "relu", keyword-only
        Fuse a ReLU after the normalisation: ``relu(y)`` in the same pass, with no
        intermediate array (oneDNN's ``fuse_norm_relu``, MXNet's ``BatchNormWithReLU``).
    residual : ndarray or None, keyword-only
        With ``activation="relu"``: ``relu(y + residual)`` (oneDNN's
        ``fuse_norm_add_relu``), ``y`` rounded to the input's dtype and the sum formed in
        it, as ``F.relu(F.batch_norm(x, ...) + residual)`` computes. The input's shape and
        dtype; never modified.

    Returns
    -------
    output : ndarray, same shape and dtype as ``input``
        In the input's memory layout when the input is contiguous in some axis order.

    Raises
    ------
    TypeError
        If ``input`` or a per-channel array is not a float16/32/64 NumPy array,
        ``momentum``/``eps`` is not a real number, or ``training`` is not a bool (Python or
        NumPy; torch's parser rejects other types the same way).
    ValueError
        If ``input`` has fewer than 2 dimensions, a per-channel array does not have C
        elements, only one running statistic is given in training, running statistics are
        missing in evaluation, there is one value per channel in training, ``eps`` is out
        of range, or ``momentum`` is not finite.
        For ``activation`` other than None/"relu" (TypeError for a non-str), or a
        ``residual`` that is not a NumPy array of the input's dtype (TypeError) and shape,
        is given without ``activation="relu"``, or overlaps ``out`` (ValueError).
    """
    return _forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                    axis, n_threads=n_threads, keep=False, activation=activation,
                    residual=residual)[0]


def batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum,
                       eps, *, out=None, axis=1, n_threads=None, activation=None,
                       residual=None):
    """Batch-norm forward returning the statistics backward needs (``native_batch_norm``).

    Parameters
    ----------
    input, weight, bias, running_mean, running_var, training, momentum, eps, axis, n_threads
        As in :func:`batch_norm`.
    activation, residual
        As in :func:`batch_norm`; pass the same ``activation``, ``residual`` and ``bias``
        to :func:`batch_norm_backward`.
    out : ndarray or None
        Where to write the output: same shape, dtype and memory layout as ``input``, not
        overlapping it.

    Returns
    -------
    output : ndarray, same shape and dtype as ``input``
    save_mean : ndarray of shape (C,), float64
        Batch mean in training; shape (0,) in evaluation (as PyTorch).
    save_invstd : ndarray of shape (C,), float64
        ``1 / sqrt(biased batch variance + eps)`` in training; shape (0,) in evaluation.

    Raises
    ------
    TypeError, ValueError
        As :func:`batch_norm`; also when ``out`` has the wrong type, dtype, shape or
        layout, is read-only, or overlaps ``input``.
    """
    output, stats, _, _, _ = _forward(
        input, weight, bias, running_mean, running_var, training, momentum, eps, axis,
        out=out, n_threads=n_threads, keep=False, activation=activation, residual=residual)
    if stats is None or stats.shape[0] != 3:  # evaluation: nothing for the backward
        return output, _EMPTY, _EMPTY
    return output, stats[0], stats[1]


def batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, *, training=True,
                        running_mean=None, running_var=None, eps=1e-5, out=None, axis=1,
                        n_threads=None, activation=None, residual=_UNSET, bias=_UNSET):
    r"""Gradients of batch norm (``native_batch_norm_backward``).

    With :math:`\hat x = (x - \mu)\,\sigma^{-1}` and sums over every axis but axis 1
    (:math:`n` values per channel), in training:

    .. math::
        \partial b = \sum dy,\quad \partial w = \sum dy\,\hat x,\quad
        dx = \frac{w\,\sigma^{-1}}{n}\Big(n\,dy - \sum dy - \hat x \sum dy\,\hat x\Big)

    In evaluation the running statistics are constants: ``dx = dy * w / sqrt(rv + eps)``,
    ``grad_weight = sum(dy * (x - rm) / sqrt(rv + eps))``, ``grad_bias = sum(dy)``.

    Parameters
    ----------
    grad_output : ndarray, same shape as ``input``, float16/32/64
        Gradient of the loss with respect to the output.
    input : ndarray of shape (N, C) or (N, C, L), float16/32/64
        The forward's input.
    weight : ndarray of shape (C,) or None
        Affine weight (1 when None).
    save_mean, save_invstd : ndarray of shape (C,)
        From :func:`batch_norm_forward` in training; ignored in evaluation.
    training : bool
        Which formula to use.
    running_mean, running_var : ndarray of shape (C,) or None
        Required when ``training`` is False.
    eps : float
        As in the forward (evaluation only).
    out : ndarray or None
        Where to write grad_input (same rules as the forward's ``out``).
    axis : int, default 1
        The channel axis, as in the forward.
    n_threads : int or None
        OpenMP threads.
    activation : None or "relu", keyword-only
        The forward's activation. With "relu", ``grad_output`` is first masked by the
        forward's ReLU, ``dz = grad_output`` where the forward's output is > 0, else 0
        (``torch.relu``'s backward; a NaN output passes the gradient, as torch's
        ``threshold_backward``), and the batch-norm gradients are those of ``dz``. The mask
        is recomputed from ``input``, the statistics, ``weight``, ``bias`` and
        ``residual`` with the forward's own arithmetic (the same decision bit for bit,
        nothing stored), so they must be the forward's, unchanged: modifying any of them
        in between changes the gradient.
    residual : ndarray or None, keyword-only
        The forward's residual (input's shape and dtype); needs ``activation="relu"``.
        Required with an activation (None when the forward had none).
    bias : ndarray of shape (C,) or None, keyword-only
        The forward's bias (0 when None); read only with an activation, and then
        required (None when the forward had none): TypeError if ``bias`` or
        ``residual`` is not passed, since a forgotten one would change the mask. With per-channel
        arrays of mixed dtypes pass them as the forward resolved them (the first given of
        running_mean, running_var, weight, bias sets the dtype), else a value at the
        threshold may be decided differently.

    Returns
    -------
    grad_input : ndarray, same shape and dtype as ``input``
    grad_weight, grad_bias : ndarray of shape (C,)
        In ``weight``'s dtype, or the input's compute dtype when ``weight`` is None.
    grad_residual : ndarray, same shape and dtype as ``input``
        Only when ``residual`` is given (then four arrays are returned): ``dz``, the
        gradient reaching the residual through the add.

    Raises
    ------
    TypeError
        If an array is not a float16/32/64 NumPy array, ``training`` is not a bool,
        ``activation`` is not None or a str, or ``residual`` has another dtype than
        ``input``.
    ValueError
        If shapes disagree, statistics needed by the chosen formula are missing,
        ``activation`` is not None/"relu", ``residual`` is given without an activation
        or overlaps ``out``.
    """
    xdt = _check_input(input)
    if input.ndim < 2:
        raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")
    axis = _check_axis(axis, input.ndim)
    C = input.shape[axis]
    training = _check_training(training)
    if training:
        _check_channels(save_mean, "save_mean", C, axis)
        _check_channels(save_invstd, "save_invstd", C, axis)
        if save_mean is None or save_invstd is None:
            raise ValueError("save_mean and save_invstd are required when training=True")
        stats = (np.ascontiguousarray(save_mean, dtype=np.float64),
                 np.ascontiguousarray(save_invstd, dtype=np.float64))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when "
                             "training=False")
        _check_channels(running_mean, "running_mean", C, axis)
        _check_channels(running_var, "running_var", C, axis)
        eps = _check_eps(eps, False)
        stats = (running_mean.astype(np.float64),
                 1.0 / np.sqrt(running_var.astype(np.float64) + eps))
    act = 0
    if activation is not None:
        act = _check_activation(activation)
        # the mask is recomputed from the forward's bias and residual: a forgotten one
        # would silently give other gradients, so with an activation both are required
        missing = [n for n, v in (("bias", bias), ("residual", residual)) if v is _UNSET]
        if missing:
            raise TypeError(
                f"with activation={activation!r}, pass the forward's "
                + " and ".join(f"{n}=" for n in missing)
                + " (None if the forward had none): the ReLU's mask is recomputed from them")
    bias = None if bias is _UNSET else bias
    residual = None if residual is _UNSET else residual
    if act or residual is not None:
        _check_residual(residual, input, act, ("out", out))
    x = input if input.dtype == xdt else input.astype(xdt)
    saved = _SavedInput(input, as_ncl(x, axis), xdt, axis, act, residual)
    gdt = weight.dtype if weight is not None else xdt
    return _backward(grad_output, saved, weight, stats, training, True, True, gdt, n_threads,
                     out=out, bias=bias)
