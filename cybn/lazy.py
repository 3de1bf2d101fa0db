"""Lazy batch-norm modules: the channel count comes from the first input.

``LazyBatchNorm1d/2d/3d`` follow ``torch.nn.LazyBatchNorm1d/2d/3d`` (and the size
inference of Keras, Flax, Chainer, MXNet and numpy-ml): constructed without
``num_features``, they take it from the first forward's input along ``axis`` (or from the
shapes of a state dict loaded before that), create their arrays as the sized module's
constructor would, and become that module: afterwards ``type(m) is cybn.BatchNorm1d``, with
the same repr and state dict as ``cybn.BatchNorm1d(C, ...)``.
"""

from __future__ import annotations

import collections.abc

import numpy as np

from . import functional as F
from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    _as_state_array,
    _BatchNorm,
    _is_placeholder,
)

__all__ = ["LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d"]

_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


class _LazyBatchNorm(_BatchNorm):
    """Shared logic of the lazy modules (torch's ``_LazyNormBase``)."""

    cls_to_become: type = _BatchNorm

    def __init__(self, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 **options):
        super().__init__(0, eps, momentum, affine, track_running_stats, **options)
        # uninitialised until the channel count is known (torch: UninitializedParameter)
        self._lazy_bias = options.get("bias", True)
        self.weight = self.bias = self.running_mean = self.running_var = None

    # -- what exists before materialisation ----------------------------------------------

    def _state_keys(self):
        keys = []
        if self.affine:
            keys += ["weight", "bias"] if self._lazy_bias else ["weight"]
        if self.track_running_stats:
            keys += ["running_mean", "running_var", "num_batches_tracked"]
        return keys

    def _state_items(self):
        # only what is initialised: num_batches_tracked (torch also lists placeholders)
        if self.num_batches_tracked is None:
            return []
        return [("num_batches_tracked", self.num_batches_tracked)]

    def _has_bias(self):
        return self._lazy_bias

    def reset_running_stats(self):
        """Zero ``num_batches_tracked`` (the other statistics do not exist yet)."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.fill(0)

    def reset_parameters(self):
        """As :meth:`reset_running_stats`: the parameters do not exist yet."""
        self.reset_running_stats()

    def parameters(self):
        """The learnable arrays: they exist only after the first forward.

        Returns
        -------
        list of ndarray
            ``[]`` for a module without ``affine``.

        Raises
        ------
        RuntimeError
            For an ``affine`` module before its first forward or ``load_state_dict``
            (torch returns placeholders; an optimiser given no arrays would silently
            train nothing).
        """
        if self.affine:
            raise RuntimeError(
                f"{type(self).__name__} has no parameters yet: their size comes from the "
                "first input. Run a forward (or load_state_dict) before collecting them")
        return []

    # -- materialisation -----------------------------------------------------------------

    def _materialize(self, C):
        dt = self.dtype
        self.num_features = int(C)
        if self.affine:
            self.weight = np.ones(C, dtype=dt)
            self.bias = np.zeros(C, dtype=dt) if self._lazy_bias else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dtype=dt)
            self.running_var = np.ones(C, dtype=dt)
        del self._lazy_bias
        self.__class__ = self.cls_to_become

    def _attempt(self, C, call, *args):
        """Materialise with C channels and run ``call``; undo both if it raises."""
        lazy_class = type(self)
        before = dict(self.__dict__)
        self._materialize(C)
        self._loading_as = lazy_class.__name__  # errors name the lazy class
        try:
            result = call(self, *args)
        except BaseException:
            self.__class__ = lazy_class
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        del self._loading_as
        return result

    def _forward(self, input, out=None, reduce=None, residual=None):
        # the sized module's checks of the input, in its order, before anything changes
        F._check_input(input)
        self._check_input_dim(input)
        axis = F._check_axis(self.axis, input.ndim)
        return self._attempt(input.shape[axis], _BatchNorm._forward, input, out, reduce,
                             residual)

    def load_state_dict(self, state_dict, strict=True):
        """Load a state dict, taking the channel count from its per-channel arrays.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            As for :meth:`cybn.BatchNorm1d.load_state_dict`. Its ``weight``, ``bias``,
            ``running_mean`` and ``running_var`` (those this module has) must be 1-D
            arrays of one length C.
        strict : bool
            As for :meth:`cybn.BatchNorm1d.load_state_dict`.

        Returns
        -------
        IncompatibleKeys
            As for :meth:`cybn.BatchNorm1d.load_state_dict`.

        Raises
        ------
        RuntimeError
            If the per-channel arrays are not 1-D of one length, or as the sized module's
            ``load_state_dict`` raises. Nothing changes (the module stays lazy) when it
            raises.

        Notes
        -----
        The module then becomes the sized module with C channels before the values are
        copied (torch materialises the arrays but keeps ``num_features = 0`` and the lazy
        class until the first forward). Without any per-channel key (``strict=False``)
        it stays lazy. The placeholders of a torch lazy module's state dict
        (``UninitializedParameter``/``UninitializedBuffer``) count as present and are not
        loaded, as torch does: such a state leaves the module lazy.
        """
        if not isinstance(state_dict, collections.abc.Mapping):
            return super().load_state_dict(state_dict, strict)
        # a torch lazy module's placeholders: present, without values (torch skips them)
        placeholders = {k for k, v in state_dict.items() if _is_placeholder(v)}
        keys = [k for k in _PER_CHANNEL
                if k in self._state_keys() and k in state_dict and k not in placeholders]
        if not keys:
            return self._load_state_dict(state_dict, strict, placeholders)
        shapes = {k: _as_state_array(state_dict[k], k).shape for k in keys}
        C = shapes[keys[0]][0] if len(shapes[keys[0]]) == 1 else None
        bad = [k for k in keys if shapes[k] != (C,)]
        if C is None or bad:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                "a lazy module takes its channel count from 1-D per-channel arrays of one "
                "length, got " + ", ".join(f"{k} of shape {shapes[k]}" for k in keys))
        return self._attempt(C, _BatchNorm._load_state_dict, state_dict, strict,
                             placeholders)


class LazyBatchNorm1d(_LazyBatchNorm):
    """:class:`cybn.BatchNorm1d` whose ``num_features`` comes from the first input.

    ``torch.nn.LazyBatchNorm1d``'s contract: the first forward reads C from the input's
    ``axis``, creates ``weight`` (ones), ``bias`` (zeros), ``running_mean`` (zeros) and
    ``running_var`` (ones) in the module's dtype, and the module becomes a
    :class:`cybn.BatchNorm1d` (``type(m) is cybn.BatchNorm1d``; repr and state dict as
    ``cybn.BatchNorm1d(C, ...)``). A state dict loaded first does the same with C from its
    arrays (:meth:`LazyBatchNorm1d.load_state_dict`).

    Parameters
    ----------
    eps, momentum, affine, track_running_stats
        As for :class:`cybn.BatchNorm1d`.
    **options
        Keyword-only options of :class:`cybn.BatchNorm1d` (``bias``, ``dtype``, ``axis``,
        ``check_finite``, ``n_threads``, ``renorm``, ``rmax``, ``dmax``,
        ``virtual_batch_size``, ``activation``).

    Attributes
    ----------
    num_features : int
        0 until materialised (as torch).
    weight, bias, running_mean, running_var : None
        Until materialised.
    num_batches_tracked : ndarray of shape (), int64, or None

    Raises
    ------
    TypeError, ValueError
        As :class:`cybn.BatchNorm1d`'s constructor and forward. A first forward that
        raises leaves the module lazy and unchanged (torch materialises it anyway when
        only the batch-size check fails).

    Notes
    -----
    Where cybn differs from torch, before the first forward: ``state_dict()`` holds only
    ``num_batches_tracked`` (torch also lists placeholder parameters, which no NumPy
    array can be); ``parameters()`` raises RuntimeError instead of returning
    placeholders; ``load_state_dict`` sets ``num_features`` and switches the class at
    once (torch leaves ``num_features = 0``, even after the first forward). A module
    without ``affine`` or running statistics gets ``num_features = C`` as well (torch
    keeps 0); it accepts any channel count afterwards, as the sized one does.

    Examples
    --------
    >>> import numpy as np, cybn
    >>> m = cybn.LazyBatchNorm1d()
    >>> m
    LazyBatchNorm1d(0, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> _ = m(np.ones((4, 3), dtype=np.float32))
    >>> type(m).__name__, m.num_features, m.weight.shape
    ('BatchNorm1d', 3, (3,))
    """

    cls_to_become = BatchNorm1d
    _expected_ndims = BatchNorm1d._expected_ndims


class LazyBatchNorm2d(_LazyBatchNorm):
    """:class:`cybn.BatchNorm2d` whose ``num_features`` comes from the first input.

    ``torch.nn.LazyBatchNorm2d``'s contract; everything is as for
    :class:`LazyBatchNorm1d`, except that the input is 4-D and the module becomes a
    :class:`cybn.BatchNorm2d`.

    Parameters
    ----------
    eps, momentum, affine, track_running_stats
        As for :class:`cybn.BatchNorm2d`.
    **options
        Its keyword-only options, as for :class:`LazyBatchNorm1d`.
    """

    cls_to_become = BatchNorm2d
    _expected_ndims = BatchNorm2d._expected_ndims


class LazyBatchNorm3d(_LazyBatchNorm):
    """:class:`cybn.BatchNorm3d` whose ``num_features`` comes from the first input.

    ``torch.nn.LazyBatchNorm3d``'s contract; everything is as for
    :class:`LazyBatchNorm1d`, except that the input is 5-D and the module becomes a
    :class:`cybn.BatchNorm3d`.

    Parameters
    ----------
    eps, momentum, affine, track_running_stats
        As for :class:`cybn.BatchNorm3d`.
    **options
        Its keyword-only options, as for :class:`LazyBatchNorm1d`.
    """

    cls_to_become = BatchNorm3d
    _expected_ndims = BatchNorm3d._expected_ndims
