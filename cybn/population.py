"""Exact population statistics for batch-norm modules: :func:`population_stats`.

The running statistics of a trained network are a momentum average of per-batch
statistics computed while the weights were still changing. After training (or after
averaging weights, as in SWA) they are usually recomputed with one pass over the training
data in training mode: torch's ``swa_utils.update_bn`` sets ``momentum=None`` (the
cumulative average of the batches' means and unbiased variances) and fvcore's PreciseBN
averages per-batch statistics as well. Averaging per-batch variances is not the variance
of the data: it misses the spread of the batch means, and weighs batches of different
sizes equally. Here each training forward's batch is merged into exact per-channel
(count, mean, M2) records with Chan's formula (Chan, Golub & LeVeque 1979, the same merge
the kernels use between tiles and SyncBatchNorm between ranks), so the result is the mean
and unbiased variance of all rows seen, whatever the batch sizes.
"""

from __future__ import annotations

import warnings

import numpy as np

from .batchnorm import _BatchNorm
from .sync import _merge_into

__all__ = ["population_stats"]


class _Population:
    """One module's exact statistics so far: per-channel (count, mean, M2), float64."""

    __slots__ = ("batches", "records")

    def __init__(self):
        self.records = None   # (C, 3) rows (count, mean, M2) once a batch was merged
        self.batches = 0      # training forwards merged

    def merge(self, count, mean, var):
        """Merge one batch (or virtual batch): ``count`` values per channel, their mean and
        biased variance (float64 (C,), as the forward computed them; under SyncBatchNorm,
        global). The module counts its forwards in ``batches`` itself."""
        if count == 0:
            return
        batch = np.empty((mean.shape[0], 3))
        batch[:, 0] = count
        batch[:, 1] = mean
        batch[:, 2] = var * count
        if self.records is not None:
            _merge_into(self.records, batch)
        self.records = batch


class population_stats:
    r"""Context manager: recompute modules' running statistics exactly from the batches seen.

    ``with cybn.population_stats(bn1, bn2, ...):`` then run training-mode forwards over the
    data (a full pass, any batch sizes). Inside the block, each training forward of a
    listed module is an ordinary training forward (batch statistics, the same output and
    backward, parameters untouched), except that its running statistics are not updated:
    the batch is merged into exact per-channel (count, mean, M2) records instead (Chan,
    Golub & LeVeque 1979). On a normal exit each module gets

    .. math:: \mathrm{running\_mean} = \frac{1}{n}\sum_i x_i,\qquad
              \mathrm{running\_var} = \frac{1}{n - 1}\sum_i (x_i - \mathrm{running\_mean})^2

    over all :math:`n` values per channel seen in the block (all rows, times the spatial
    positions), equal to the statistics of one batch holding all of them; and
    ``num_batches_tracked`` grows by the number of training forwards in the block.
    Evaluation-mode forwards inside the block are ordinary and are not counted. With
    ghost batches each virtual batch is merged; with SyncBatchNorm the global batch is
    (every rank gets the same statistics). If the block raises, or no value was seen,
    the running statistics and ``num_batches_tracked`` are left exactly as they were;
    a module that saw no value (e.g. left in evaluation mode: the modules' modes are not
    changed) also gets a ``RuntimeWarning``.

    This replaces the momentum average that torch's ``swa_utils.update_bn`` and fvcore's
    PreciseBN approximate with (the mean of per-batch variances is not the variance of the
    data: it misses the spread between batch means).

    Parameters
    ----------
    *modules : cybn batch-norm modules
        ``BatchNorm1d/2d/3d``, lazy ones and ``SyncBatchNorm``, tracking running
        statistics, each at most once and in no other open block.

    Attributes
    ----------
    counts : dict
        After (or during) the block: module -> values per channel merged so far.

    Raises
    ------
    TypeError
        If an argument is not a cybn batch-norm module.
    ValueError
        If no module is given, a module appears twice, or does not track running
        statistics (``track_running_stats=False``).
    RuntimeError
        On entry, if a module is already in an open ``population_stats`` block.

    Notes
    -----
    On entry and again on exit (before anything is written) every module's
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` must be writeable NumPy
    arrays, else TypeError or ValueError is raised and no module changes.

    Examples
    --------
    >>> import numpy as np, cybn
    >>> bn = cybn.BatchNorm1d(2, dtype=np.float64)
    >>> data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 2))
    >>> with cybn.population_stats(bn):
    ...     for batch in np.array_split(data, 7):  # batches of 142 or 143 rows
    ...         _ = bn(batch)
    >>> bool(np.allclose(bn.running_mean, data.mean(axis=0), rtol=1e-12))
    True
    >>> bool(np.allclose(bn.running_var, data.var(axis=0, ddof=1), rtol=1e-12))
    True
    """

    def __init__(self, *modules):
        if not modules:
            raise ValueError("population_stats needs at least one batch-norm module")
        seen = set()
        for m in modules:
            if not isinstance(m, _BatchNorm):
                raise TypeError("population_stats takes cybn batch-norm modules (e.g. "
                                f"cybn.BatchNorm1d), got {type(m).__name__}")
            if id(m) in seen:
                raise ValueError(f"population_stats got the same module twice: {m!r}")
            seen.add(id(m))
            if not m.track_running_stats:
                raise ValueError(
                    f"population_stats: {m!r} does not track running statistics "
                    "(track_running_stats=False), so it has none to compute")
        self.modules = modules

    def __enter__(self):
        busy = [m for m in self.modules if m._population is not None]
        if busy:
            raise RuntimeError(f"population_stats: {busy[0]!r} is already in an open "
                               "population_stats block")
        _check_targets(self.modules)
        self._pops = [_Population() for _ in self.modules]
        for m, pop in zip(self.modules, self._pops):
            m._population = pop
        return self

    @property
    def counts(self):
        """Module -> values per channel merged so far (0 before any batch)."""
        return {m: (0 if p.records is None else int(p.records[0, 0]))
                for m, p in zip(self.modules, getattr(self, "_pops", [_Population()] *
                                                      len(self.modules)))}

    def __exit__(self, exc_type, exc, tb):
        for m in self.modules:
            m._population = None
        if exc_type is not None:
            return False
        done = [(m, pop) for m, pop in zip(self.modules, self._pops)
                if pop.records is not None and m.running_mean is not None]
        for m, pop in zip(self.modules, self._pops):
            if pop.records is None:
                # e.g. the model was put in evaluation mode for the pass (torch's
                # update_bn switches to training mode itself; cybn does not change modes)
                warnings.warn(
                    f"population_stats: {m!r} saw no values in the block (no training-mode "
                    "forward with a non-empty batch: is it in evaluation mode?); its "
                    "running statistics are unchanged", RuntimeWarning, stacklevel=2)
        # every module's arrays are checked before any is written: all change, or none
        _check_targets([m for m, _ in done])
        for m, pop in done:
            n = pop.records[0, 0]
            with np.errstate(divide="ignore", invalid="ignore"):  # n = 1: NaN, as torch
                var = pop.records[:, 2] / (n - 1)
            m.running_mean[...] = pop.records[:, 1]
            m.running_var[...] = var
            m.num_batches_tracked[()] = int(m.num_batches_tracked) + pop.batches
        return False


def _check_targets(modules):
    """The arrays population_stats writes must exist, be writeable and have C entries."""
    for m in modules:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            a = getattr(m, name)
            if a is None and hasattr(m, "cls_to_become"):
                continue  # a lazy module's arrays come with its first forward
            if not isinstance(a, np.ndarray):
                raise TypeError(f"population_stats: {m!r}.{name} must be a NumPy array, "
                                f"got {type(a).__name__}")
            if not a.flags.writeable:
                raise ValueError(f"population_stats: {m!r}.{name} is updated in place and "
                                 "must be writeable, got a read-only array")
