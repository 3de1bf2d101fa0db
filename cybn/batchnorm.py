"""Batch-normalization modules with the contract of ``torch.nn.BatchNorm1d``.

State (parameters, running statistics, the backward cache) lives here; validation and the
arithmetic are delegated to :mod:`cybn.functional` and the compiled kernels.
"""

from __future__ import annotations

import collections
import collections.abc
import numbers
import warnings

import numpy as np

from . import functional as F
from ._threads import _check_count

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_MODULE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

_IncompatibleKeys = collections.namedtuple("IncompatibleKeys",
                                           ["missing_keys", "unexpected_keys"])


class _Cache:
    """What backward needs from the last successful forward (C-sized apart from x)."""

    __slots__ = ("count", "ghost", "reduced", "renorm", "saved", "stats", "training")

    def __init__(self, saved, stats, count, reduced, ghost=None):
        self.saved = saved          # the input, by reference (F._SavedInput)
        self.ghost = ghost          # virtual batches (F._Ghost): saved and stats per group
        if ghost is not None:
            self.training = True
            self.stats = self.renorm = None
        else:
            self.training = stats.shape[0] >= 3  # batch statistics: the training formula
            self.stats = (stats[0], stats[1])    # float64 (C,): batch or running mean, invstd
            # batch renormalization's r and d, constants of the backward
            self.renorm = (stats[3], stats[4]) if stats.shape[0] == 5 else None
        self.count = count          # values per channel behind the statistics
        self.reduced = reduced      # statistics reduced across processes (SyncBatchNorm)


def _is_placeholder(value):
    """A torch lazy module's uninitialised parameter or buffer (no values, no shape)."""
    return type(value).__name__ in ("UninitializedParameter", "UninitializedBuffer")


def _as_state_array(value, key):
    """Array-like from a state dict (NumPy, torch tensor, list, scalar) -> ndarray."""
    if _is_placeholder(value):
        raise TypeError(
            f"state_dict[{key!r}] is an uninitialized parameter of a torch lazy module: it "
            "has no values yet (run a forward in torch first, or load the state into a "
            "cybn lazy module, which skips it)")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without torch
        value = value.detach().cpu().numpy()
    try:
        with warnings.catch_warnings():
            # NumPy < 1.24 makes an object array of a ragged list, with a warning
            warnings.simplefilter("error", getattr(np, "VisibleDeprecationWarning", Warning))
            arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"state_dict[{key!r}] is not array-like: {exc}") from exc
    if arr.dtype == object and arr.ndim > 0:
        raise TypeError(f"state_dict[{key!r}] is not array-like: it converts to an object "
                        "array (a ragged or non-numeric sequence)")
    return arr


def _cast_state(value, dtype, key):
    """value cast to a state array's dtype; integer targets (num_batches_tracked) must
    receive finite, in-range whole numbers rather than NumPy's silent wrap-around."""
    if dtype.kind == "i" and value.dtype.kind in "fiub":
        info = np.iinfo(dtype)
        v = value.astype(np.float64) if value.dtype.kind == "f" else value
        if not np.all(np.isfinite(v)) if v.dtype.kind == "f" else False:
            raise ValueError(f"{key} must be finite, got {value}")
        if np.any(v < info.min) or np.any(v > info.max):
            raise ValueError(f"{key} is out of range for {dtype}: {value}")
    try:
        return value.astype(dtype)
    except OverflowError:
        raise ValueError(f"{key} is out of range for {dtype}: {value}") from None


def _check_renorm_options(renorm, rmax, dmax, track_running_stats, attribute=False,
                          constructor=False):
    """Validate batch renormalization's options; return (rmax, dmax) when on, else None.

    ``rmax`` and ``dmax`` are checked whether or not renorm is on (a bad value would
    otherwise surface only once renorm is switched on). ``attribute``: the values are a
    module's attributes (checked at each training forward, since the caller may change
    them between steps, and named ``self.<name>``); then only when renorm is on.
    """
    prefix = "self." if attribute else ""
    if renorm is not True and renorm is not False:
        if not isinstance(renorm, np.bool_):
            raise TypeError(f"{prefix}renorm must be a bool, got {type(renorm).__name__}")
        renorm = bool(renorm)
    if attribute and not renorm:
        return None
    if renorm and not track_running_stats:
        raise ValueError("renorm=True needs the running statistics (r and d compare the "
                         "batch with them): track_running_stats must be True")
    try:
        bounds = F._check_renorm(rmax, dmax)
    except (TypeError, ValueError) as exc:
        if not attribute:
            raise
        raise type(exc)(f"self.{exc}") from None
    if constructor and not renorm and bounds != (1.0, 0.0):
        # a likely slip (renorm forgotten); assigning m.rmax before m.renorm stays possible
        raise ValueError(f"rmax and dmax take effect only with renorm=True, got "
                         f"rmax={rmax!r}, dmax={dmax!r} with renorm=False")
    return bounds if renorm else None


def _check_num_batches_tracked(nbt):
    """num_batches_tracked must take the increment after a running-statistics update."""
    if type(nbt) is np.ndarray and nbt.shape == () and nbt.dtype.kind in "iu" \
            and nbt.flags.writeable:
        return
    raise TypeError(
        "self.num_batches_tracked must be a writeable 0-d integer array (as "
        f"np.array(0, dtype=np.int64)), got {type(nbt).__name__}"
        + (f" of shape {nbt.shape} and dtype {nbt.dtype}" if isinstance(nbt, np.ndarray)
           else ""))


class _BatchNorm:
    """State and logic shared by the batch-norm modules (PyTorch's ``_NormBase``)."""

    _version = 2
    _expected_ndims: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, dtype=np.float32, axis=1,
                 check_finite=False, n_threads=None, renorm=False, rmax=1.0, dmax=0.0,
                 virtual_batch_size=None, activation=None):
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(
                f"num_features must be an int, got {type(num_features).__name__}")
        if num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {num_features}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
        if momentum is not None:
            F._check_momentum(momentum)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float16, float32 or float64, got {dtype!r}") \
                from None
        if dt not in _MODULE_DTYPES:
            raise TypeError(f"dtype must be float16, float32 or float64, got {dt}")
        if n_threads is not None:
            _check_count(n_threads)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an int, got {type(axis).__name__}")
        _check_renorm_options(renorm, rmax, dmax, track_running_stats, constructor=True)
        virtual_batch_size = F._check_virtual_batch_size(virtual_batch_size)
        F._check_activation(activation)
        if renorm and activation is not None:
            raise ValueError("renorm=True and activation cannot be combined: the fused "
                             "ReLU's backward recomputes its mask from the plain batch-norm "
                             "constants")
        if renorm and virtual_batch_size is not None:
            raise ValueError("renorm=True and virtual_batch_size cannot be combined: batch "
                             "renormalization corrects one batch's statistics towards the "
                             "running ones, not each virtual batch's")
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = dt
        self.axis = int(axis)
        self.check_finite = bool(check_finite)
        self.n_threads = n_threads
        self.renorm = renorm
        self.rmax = rmax
        self.dmax = dmax
        self.virtual_batch_size = virtual_batch_size
        self.activation = activation
        self.training = True
        self._population = None  # the cybn.population_stats block collecting this module
        C = self.num_features
        self.weight = np.ones(C, dtype=dt) if self.affine else None
        self.bias = np.zeros(C, dtype=dt) if self.affine and bias else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dtype=dt)
            self.running_var = np.ones(C, dtype=dt)
            self.num_batches_tracked = np.array(0, dtype=np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self.grad_residual = None
        self._cache = None
        self.reset_parameters()

    # -- state ---------------------------------------------------------------------------

    def reset_running_stats(self):
        """Zero ``running_mean`` and ``num_batches_tracked``, fill ``running_var`` with 1.

        In place; does nothing when the module does not track running statistics.
        """
        if self.running_mean is not None:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def reset_parameters(self):
        """Reset the running statistics, then set ``weight`` to 1 and ``bias`` to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.fill(1)
        if self.bias is not None:
            self.bias.fill(0)

    def train(self, mode=True):
        """Set training mode (batch statistics, running-statistics updates).

        Parameters
        ----------
        mode : bool, default True
            True for training, False for evaluation (torch's ``Module.train``).

        Returns
        -------
        self

        Raises
        ------
        TypeError
            ``mode`` is not a bool ("training mode is expected to be boolean, got int").
        """
        if not isinstance(mode, bool):
            raise TypeError(f"training mode is expected to be boolean, got {type(mode).__name__}")
        self.training = mode
        return self

    def eval(self):
        """Set evaluation mode (running statistics are used when tracked): ``train(False)``.

        Returns
        -------
        self
        """
        return self.train(False)

    def parameters(self):
        """The learnable arrays, for an optimiser that updates them in place.

        Returns
        -------
        list of ndarray
            ``[weight, bias]``, those that exist (none without ``affine``), as live
            references of shape (C,) and the module's dtype.
        """
        return [p for p in (self.weight, self.bias) if p is not None]

    _population = None  # class default: modules pickled before the attribute existed

    def __getstate__(self):
        # A copy (pickle, copy.deepcopy) is not part of an open population_stats block
        state = dict(self.__dict__)
        state["_population"] = None
        return state

    def _state_keys(self):
        # the keys of a complete state dict (a lazy module lists them before it has arrays)
        return [k for k, _ in self._state_items()]

    def _state_items(self):
        return [(k, getattr(self, k)) for k in
                ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                if getattr(self, k) is not None]

    def state_dict(self):
        """An ordered dict of live references to the state, with PyTorch's keys and order.

        Keys: ``weight``, ``bias`` (when affine), ``running_mean``, ``running_var``,
        ``num_batches_tracked`` (0-d int64; when tracking). Like PyTorch, the values share
        memory with the module: copy them to keep a snapshot.

        Returns
        -------
        collections.OrderedDict of str to ndarray
            The module's state, in torch's key order; :meth:`load_state_dict` takes it back.
        """
        return collections.OrderedDict(self._state_items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy a state dict into the module's arrays (PyTorch's ``load_state_dict``).

        Parameters
        ----------
        state_dict : mapping of str to array-like
            NumPy arrays, torch tensors, lists or scalars; values are cast to the module's
            dtype (``num_batches_tracked`` to int64). A checkpoint without
            ``num_batches_tracked`` (written before it existed) loads and keeps the
            module's current count.
        strict : bool
            Raise on missing or unexpected keys.

        Returns
        -------
        IncompatibleKeys
            Named tuple ``(missing_keys, unexpected_keys)``.

        Raises
        ------
        RuntimeError
            On size mismatches, and on missing/unexpected keys when ``strict``, with
            PyTorch's wording. Nothing is modified when it raises.
        """
        return self._load_state_dict(state_dict, strict)

    def _load_state_dict(self, state_dict, strict=True, placeholders=()):
        # placeholders: keys present in state_dict without values (a torch lazy module's
        # uninitialised parameters): neither loaded nor missing
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got "
                            f"{type(state_dict).__name__}.")
        own = collections.OrderedDict(self._state_items())
        errors = []
        staged = []
        for key, target in own.items():
            if key not in state_dict or key in placeholders:
                continue
            value = _as_state_array(state_dict[key], key)
            if value.shape != target.shape:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape {value.shape} from "
                    f"checkpoint, the shape in current model is {target.shape}.")
                continue
            try:
                staged.append((target, _cast_state(value, target.dtype, key)))
            except (TypeError, ValueError, OverflowError) as exc:
                errors.append(f"While copying the parameter named \"{key}\": {exc}")
        keys = self._state_keys()
        missing = [k for k in keys if k not in state_dict]
        # A checkpoint without version-2 metadata may predate num_batches_tracked.
        if "num_batches_tracked" in missing:
            version = getattr(state_dict, "_metadata", {}).get("", {}).get("version")
            if version is None or version < 2:
                missing.remove("num_batches_tracked")
        unexpected = [k for k in state_dict if k not in keys]
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in missing) + ". ")
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {self._load_name()}:\n\t"
                + "\n\t".join(errors))
        for target, value in staged:
            target[...] = value
        return _IncompatibleKeys(missing, unexpected)

    def extra_repr(self):
        """The arguments part of the module's repr, torch's ``extra_repr``.

        Returns
        -------
        str
            ``"C, eps=..., momentum=..., affine=..., bias=..., track_running_stats=..."`` as
            torch prints it, then cybn's own ``axis``, ``check_finite`` and
            ``activation`` when not default.
        """
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
             f"affine={self.affine}, bias={self._has_bias()}, "
             f"track_running_stats={self.track_running_stats}")
        # cybn's own options appear only when set, so the default repr is torch's
        if self.axis != 1:
            s += f", axis={self.axis}"
        if self.check_finite:
            s += ", check_finite=True"
        if self.renorm:
            s += f", renorm=True, rmax={self.rmax}, dmax={self.dmax}"
        if self.virtual_batch_size is not None:
            s += f", virtual_batch_size={self.virtual_batch_size}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s

    def _has_bias(self):
        return self.bias is not None

    def _load_name(self):
        # the class named by load_state_dict's errors (a lazy module loading as its sized
        # class names itself)
        return self.__dict__.get("_loading_as", type(self).__name__)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    # -- computation ---------------------------------------------------------------------

    def _check_input_dim(self, input):
        F._check_ndim(input, self._expected_ndims)

    def __call__(self, input, residual=None, *, out=None):
        if residual is None:
            return self.forward(input, out=out)
        return self.forward(input, residual, out=out)

    def forward(self, input, residual=None, *, out=None):
        """Normalize a batch; see the class docstring for shapes, modes and errors.

        Parameters
        ----------
        input : ndarray, float16/32/64
            The batch, of the module's dimensionality, channels on ``axis``.
        residual : ndarray or None
            With ``activation="relu"``: added before the ReLU, ``relu(bn(input) +
            residual)`` (the input's shape and dtype, not overlapping ``out``). Kept by
            reference for :meth:`backward`, like the input: modifying it in place before
            ``backward`` changes the gradients.
        out : ndarray or None, keyword-only
            Where to write the output instead of a new array, e.g. a buffer a training
            loop reuses: the input's shape and dtype, contiguous in the same axis order
            as the input (C order for C-order input), not overlapping it. Checked before
            anything changes.

        Returns
        -------
        output : ndarray, same shape and dtype as ``input`` (``out`` when given)

        Raises
        ------
        TypeError, ValueError
            As described in the class docstring; also for an ``out`` of the wrong type,
            dtype, shape or layout, read-only, or overlapping ``input`` (the messages of
            :func:`cybn.functional.batch_norm_forward`); for a ``residual`` that is not
            an array of the input's dtype and shape, overlaps ``out``, or is given to a
            module without an activation.
        """
        return self._forward(input, out=out, residual=residual)

    def _forward(self, input, out=None, reduce=None, residual=None):
        # The module's part of a forward: its state in, num_batches_tracked and the
        # backward's cache out. Validation, the choice of statistics, the momentum factor
        # and the running-statistics update are cybn.functional's, as in torch's
        # _BatchNorm.forward -> F.batch_norm. `reduce`: SyncBatchNorm's communication.
        # Inside a cybn.population_stats block a training forward merges its batch into
        # the block's exact statistics instead of updating the running ones.
        training = self.training
        if training is not True and training is not False:
            training = F._check_training(training)
        population = self._population if training else None
        renorm = None
        if training:
            if self.track_running_stats and self.running_mean is not None:
                _check_num_batches_tracked(self.num_batches_tracked)
            renorm = _check_renorm_options(self.renorm, self.rmax, self.dmax,
                                           self.track_running_stats, attribute=True)
            if renorm is not None and (self.running_mean is None or self.running_var is None):
                raise ValueError("renorm=True needs the running statistics, but "
                                 f"self.{'running_mean' if self.running_mean is None else 'running_var'}"
                                 " is None")
            if self.virtual_batch_size is not None and not (
                    isinstance(input, np.ndarray) and input.ndim >= 1 and input.shape[0] == 0):
                # (an empty batch takes the ordinary path: there are no groups)
                return self._forward_ghost(input, out, reduce, population, residual)
        output, stats, saved, count, updated = F._forward(
            input, self.weight, self.bias, self.running_mean, self.running_var,
            training, self.momentum, self.eps, self.axis, out=out,
            n_threads=self.n_threads, module=self,
            check_finite=self.check_finite and training, reduce=reduce,
            renorm=renorm, update_running=population is None,
            activation=self.activation, residual=residual)
        if updated:
            nbt = self.num_batches_tracked
            nbt[()] = int(nbt) + 1
        if population is not None and stats.shape[0] >= 3 and count > 0:
            population.merge(count, stats[0], stats[2])
            population.batches += 1
        self._cache = _Cache(saved, stats, count, reduce is not None)
        return output

    def _forward_ghost(self, input, out, reduce, population, residual):
        v = F._check_virtual_batch_size(self.virtual_batch_size)
        if reduce is not None:
            raise ValueError(
                "virtual_batch_size is not supported by SyncBatchNorm (its batch is the "
                "global one); set it to None")
        if self.renorm:
            raise ValueError("renorm=True and virtual_batch_size cannot be combined")
        output, ghost, updated = F._forward_ghost(
            input, self.weight, self.bias, self.running_mean, self.running_var,
            self.momentum, self.eps, self.axis, v, self, out=out,
            n_threads=self.n_threads, check_finite=self.check_finite,
            update_running=population is None, activation=self.activation,
            residual=residual)
        if updated:
            nbt = self.num_batches_tracked
            nbt[()] = int(nbt) + 1
        if population is not None and ghost.groups:
            for g in ghost.groups:
                population.merge(g.count, g.stats[0], g.stats[2])
            population.batches += 1
        self._cache = _Cache(None, None, None, False, ghost=ghost)
        return output

    def backward(self, grad_output, *, out=None):
        """Back-propagate through the last forward.

        Parameters
        ----------
        grad_output : ndarray, shape and layout of the last forward's input, float16/32/64
            Gradient of the loss with respect to the last output.
        out : ndarray or None, keyword-only
            Where to write grad_input instead of a new array: the last input's shape,
            dtype and memory layout, overlapping neither it nor ``grad_output``.

        Returns
        -------
        grad_input : ndarray, same shape and dtype as the last input (``out`` when given)
            Also sets ``grad_weight`` and ``grad_bias`` (module dtype; None when the
            module has no such parameter), overwriting earlier values, and
            ``grad_residual`` (the input's shape and dtype: the gradient reaching the
            residual, ``grad_output`` masked by the ReLU) when the forward had a
            residual, else None. Only grad_input is returned.

        Raises
        ------
        RuntimeError
            If no forward has run yet.
        TypeError, ValueError
            If ``grad_output`` is not a float array of the last input's shape, or ``out``
            is not a suitable array (as for the forward's ``out``).

        Notes
        -----
        After a training forward (or an evaluation forward without running statistics)
        this is the batch-statistics gradient; after an evaluation forward with running
        statistics these are constants: ``grad_input = grad_output * weight * invstd``.
        The input of the forward is kept by reference, not copied: modifying it in place
        before ``backward`` changes the gradients (PyTorch would raise instead).
        With ``activation="relu"`` the ReLU's mask is recomputed from the input (and the
        residual), the saved statistics, ``weight`` and ``bias``, bit for bit as the
        forward decided it; this holds while they are unchanged between the two calls.
        """
        return self._backward(grad_output, out=out)

    def _backward(self, grad_output, out=None, reduce=None):
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                "backward() called before forward(): there is no batch to differentiate")
        if cache.ghost is not None:
            grads = F._backward_ghost(
                grad_output, cache.ghost, self.weight, self.weight is not None,
                self.bias is not None, self.dtype, self.n_threads, out=out,
                weight_name="self.weight",
                shape_of="the shape of the last forward's input", bias=self.bias,
                bias_name="self.bias")
        else:
            grads = F._backward(
                grad_output, cache.saved, self.weight, cache.stats, cache.training,
                self.weight is not None, self.bias is not None, self.dtype, self.n_threads,
                out=out, weight_name="self.weight",
                shape_of="the shape of the last forward's input", reduce=reduce,
                count=cache.count, renorm=cache.renorm, bias=self.bias,
                bias_name="self.bias")
        self.grad_weight = grads[1]
        self.grad_bias = grads[2]
        self.grad_residual = grads[3] if len(grads) > 3 else None
        return grads[0]


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization over a 2-D or 3-D batch, ``torch.nn.BatchNorm1d``'s contract.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w + b

    Statistics per channel over the batch (and length) axes (Ioffe & Szegedy 2015). In
    training the batch mean and biased variance normalise, and the running statistics are
    updated as ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance (``momentum=None``: cumulative average). In evaluation the
    running statistics normalise, unless the module does not track them.

    Parameters
    ----------
    num_features : int
        C, the number of channels (axis 1).
    eps : float, default 1e-5
        Added to the variance; must be > 0 when batch statistics are used.
    momentum : float or None, default 0.1
        Weight of the new batch (PyTorch's convention, the opposite of cs231n/Keras: see
        :mod:`cybn.compat`). None gives the cumulative average ``1 / num_batches_tracked``.
        Values outside [0, 1] extrapolate, as in PyTorch; NaN/Inf are rejected.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
        (0-d int64).
    bias : bool, default True (keyword-only)
        With ``affine``, whether there is a ``bias``.
    dtype : float16, float32 (default) or float64
        dtype of the parameters and running statistics. Inputs of any float dtype are
        accepted; the output has the input's dtype (float16 is computed in float32).
    axis : int, default 1 (keyword-only)
        The channel axis; -1 takes channels-last data ((N, L, C) sequences) without a
        transpose copy, and the output keeps the input's layout.
    check_finite : bool, default False (keyword-only)
        Make a training forward whose batch holds NaN or Inf raise ValueError naming the
        channels, before any state changes, so one bad batch cannot poison the running
        statistics. Off by default: NaN/Inf then propagate exactly as in PyTorch (the
        channel's output and running statistics become NaN/Inf).
    n_threads : int or None
        OpenMP threads for this module's calls; None follows :func:`cybn.set_num_threads`
        and ``OMP_NUM_THREADS``.
    renorm : bool, default False (keyword-only)
        Batch renormalization (Ioffe 2017, "Batch Renormalization", Algorithm 1; Keras'
        ``renorm``, Chainer's ``BatchRenormalization``). In training,
        ``y = w * ((x - mu_B) / sigma_B * r + d) + b`` with
        ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
        ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``, where ``sigma_B = sqrt(var_B +
        eps)`` (biased batch variance) and ``mu``, ``sigma = sqrt(running_var + eps)`` are
        the running statistics before this batch updates them (as Chainer; the paper
        keeps a moving sigma, Keras 2 separate renorm averages). r and d are constants of
        the backward. The running statistics are updated as without renorm; evaluation
        is unchanged. Needs ``track_running_stats``; not combinable with
        ``virtual_batch_size``.
    rmax, dmax : float, default 1.0 and 0.0 (keyword-only)
        The clipping bounds (``rmax >= 1``, ``dmax >= 0``, ``inf``: no clipping). The
        defaults make renorm plain batch norm, the paper's starting point: its schedule
        (e.g. rmax 1 -> 3, dmax 0 -> 5) is the caller's, by assigning ``m.rmax`` and
        ``m.dmax`` between steps (checked at each training forward).
    virtual_batch_size : int or None, default None (keyword-only)
        Ghost batch norm (Hoffer, Hubara & Soudry 2017, section 4; tf.keras 2's
        ``virtual_batch_size``; TabNet's GBN): in training, each group of this many
        consecutive rows (axis 0; the last group holds the remainder, which must have
        more than one value per channel) is normalised with its own statistics, and its
        backward uses them. The running statistics are updated once per forward with the
        mean of the groups' means and of their unbiased variances, weighted by group
        size (tf.keras 2 averages the biased variances with equal weights). Evaluation
        is unaffected. The output has the input's layout when axis 0 is outermost in
        memory (C order, channels-last), else C order.
    activation : None or "relu", default None (keyword-only)
        Fuse a ReLU after the normalisation, ``relu(y)``, or ``relu(y + residual)`` when
        ``forward`` gets a residual (oneDNN's ``fuse_norm_relu`` / ``fuse_norm_add_relu``,
        MXNet's ``BatchNormWithReLU``), in the normalisation's pass and with a backward
        that recomputes the mask instead of storing it; in training and evaluation.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,) or None
    num_batches_tracked : ndarray of shape (), int64, or None
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set by :meth:`backward`.
    grad_residual : ndarray or None
        Set by :meth:`backward` after a forward with a residual.
    training : bool

    Raises
    ------
    ValueError
        From ``forward``: input not 2-D/3-D ("expected 2D or 3D input (got 1D input)"),
        a channel count other than ``num_features``, one value per channel in training,
        ``eps`` out of range. Nothing (parameters, running statistics,
        ``num_batches_tracked``) changes when a call raises.
    TypeError
        From ``forward``: input that is not a float16/32/64 NumPy array.

    Examples
    --------
    >>> import numpy as np, cybn
    >>> m = cybn.BatchNorm1d(3)
    >>> y = m(np.array([[1., 2., 3.], [3., 6., 9.]], dtype=np.float32))
    >>> np.round(y, 4)
    array([[-1., -1., -1.],
           [ 1.,  1.,  1.]], dtype=float32)
    >>> np.round(m.running_mean, 4)
    array([0.2, 0.4, 0.6], dtype=float32)
    """

    _expected_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    r"""Batch normalization over a 4-D batch (N, C, H, W), ``torch.nn.BatchNorm2d``'s contract.

    Statistics per channel over N, H and W ("spatial batch norm", Ioffe & Szegedy 2015,
    section 3.2), computed by the same kernels as :class:`BatchNorm1d` on an (N, C, H*W)
    view; every parameter, attribute, mode and error is as documented there, except that
    the input must be 4-D ("expected 4D input (got 3D input)"). With ``axis=-1`` it takes
    channels-last (N, H, W, C) images without a copy.
    """

    _expected_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    r"""Batch normalization over a 5-D batch (N, C, D, H, W), ``torch.nn.BatchNorm3d``'s contract.

    Statistics per channel over N, D, H and W, by the same kernels as :class:`BatchNorm1d`;
    everything is as documented there, except that the input must be 5-D
    ("expected 5D input (got 4D input)").
    """

    _expected_ndims = (5,)
