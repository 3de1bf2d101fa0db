"""Thread-count policy shared by every public entry point.

Rules (scikit-learn's, adapted):

* an explicit ``n_threads`` wins; negative values count back from the usable CPUs
  (-1 = all, -2 = all but one), 0 is an error;
* else the package default set by :func:`set_num_threads`;
* else ``omp_get_max_threads()`` of the calling thread, which honours ``OMP_NUM_THREADS``
  and threadpoolctl limits, capped by the CPUs this process may use unless
  ``OMP_NUM_THREADS`` is set (then the user's value is taken as is);
* a serial build always uses 1;
* a process created by ``fork()`` always uses 1: libgomp's thread pool does not survive a
  fork, and a child that enters a parallel region after the parent had one hangs forever
  (threads can be used again in processes started with ``spawn`` or ``forkserver``).
"""

from __future__ import annotations

import operator
import os

from ._openmp import omp_max_threads, openmp_enabled

_OPENMP = openmp_enabled()
# A sanity bound on explicit requests (the kernels use at most one thread per tile anyway).
_MAX_THREADS = 4096
# libgomp reads OMP_NUM_THREADS once, at load time, so a later change would not count anyway.
_OMP_ENV = "OMP_NUM_THREADS" in os.environ
_default: int | None = None
_forked_child = False


def _count_usable_cpus() -> int:
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        n = count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count()
    return max(1, n or 1)


_cpus = _count_usable_cpus()


def _usable_cpus() -> int:
    """CPUs this process may use, as counted at import (or at fork, in a child)."""
    return _cpus


def _check_count(n_threads, name="n_threads") -> int:
    if isinstance(n_threads, bool):
        raise TypeError(f"{name} must be an int or None, got bool")
    try:
        n = operator.index(n_threads)
    except TypeError:
        raise TypeError(
            f"{name} must be an int or None, got {type(n_threads).__name__}") from None
    if n == 0:
        raise ValueError(f"{name} must be a positive or negative int, got 0")
    if abs(n) > _MAX_THREADS:
        raise ValueError(f"{name} must be between -{_MAX_THREADS} and {_MAX_THREADS}, got {n}")
    return n


def effective_n_threads(n_threads=None) -> int:
    """Resolve ``n_threads`` to the number of OpenMP threads a kernel call will use.

    Parameters
    ----------
    n_threads : int or None
        Requested count; see the module docstring for the rules.

    Returns
    -------
    int
        A count >= 1.

    Raises
    ------
    TypeError
        If ``n_threads`` is not an int or None.
    ValueError
        If ``n_threads`` is 0 or its magnitude exceeds 4096.
    """
    if n_threads is None:
        n_threads = _default
    elif (not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads == 0
          or abs(n_threads) > _MAX_THREADS):
        n_threads = _check_count(n_threads)
    if not _OPENMP or _forked_child:
        return 1
    if n_threads is None:
        n = omp_max_threads()  # >= 1, as _cpus
        return n if _OMP_ENV or n <= _cpus else _cpus
    if n_threads < 0:
        return max(1, _usable_cpus() + 1 + n_threads)
    return n_threads


def set_num_threads(n_threads) -> None:
    """Set the package-wide default thread count (None restores the automatic default).

    Parameters
    ----------
    n_threads : int or None
        As for ``n_threads`` of any cybn function. It has no effect in a process created
        by ``fork()``, which stays serial (see the module notes).

    Raises
    ------
    TypeError
        If ``n_threads`` is not an int or None.
    ValueError
        If ``n_threads`` is 0 or its magnitude exceeds 4096.
    """
    global _default
    if n_threads is not None:
        n_threads = _check_count(n_threads)
    _default = n_threads


def get_num_threads() -> int:
    """The thread count a call with ``n_threads=None`` would use now, in this thread."""
    return effective_n_threads(None)


def _after_fork_in_child() -> None:
    global _forked_child, _cpus
    _forked_child = True
    _cpus = _count_usable_cpus()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
