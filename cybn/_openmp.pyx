"""Build-time OpenMP information for cybn (private; the public API re-exports it)."""

# The declarations come from cybn/_openmp.pxd, which Cython reads automatically.


def openmp_enabled() -> bool:
    """Return True if cybn's compiled modules were built with OpenMP.

    A compile-time constant: False for a serial build (``CYBN_OPENMP=0``, or no working
    OpenMP compiler flags at build time), in which case every kernel runs single-threaded.
    """
    return CYBN_OPENMP_ENABLED == 1


def omp_max_threads() -> int:
    """Return ``omp_get_max_threads()`` for the calling thread (1 in a serial build).

    This reflects ``OMP_NUM_THREADS`` and any threadpoolctl limit set *in the calling thread*
    (OpenMP thread limits are per thread under libgomp).
    """
    return omp_get_max_threads()
