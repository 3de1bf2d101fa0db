# OpenMP shim for cybn's kernels: compiles with and without OpenMP.
#
# Kernels never `cimport openmp` (Cython's own declarations include <omp.h> unconditionally,
# which breaks serial builds). They cimport from here instead:
#
#     from cybn._openmp cimport omp_get_max_threads, omp_get_thread_num
#
# With OpenMP (_OPENMP defined by -fopenmp or /openmp) these are the real runtime functions.
# Without it they are stubs for a team of one thread, and CYBN_OPENMP_ENABLED is 0. prange
# needs no help: Cython already guards its pragmas with #ifdef _OPENMP.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYBN_OPENMP_ENABLED 1
    #else
    #define CYBN_OPENMP_ENABLED 0
    static CYTHON_INLINE int omp_get_max_threads(void) { return 1; }
    static CYTHON_INLINE int omp_get_num_threads(void) { return 1; }
    static CYTHON_INLINE int omp_get_thread_num(void) { return 0; }
    #endif
    """
    # 1 if this module was compiled with OpenMP, else 0 (a compile-time constant).
    const bint CYBN_OPENMP_ENABLED

    # Upper bound of the team size of the next parallel region started by the calling
    # thread (honours OMP_NUM_THREADS and threadpoolctl limits set in that thread).
    int omp_get_max_threads() noexcept nogil
    # Size of the current team (1 outside a parallel region).
    int omp_get_num_threads() noexcept nogil
    # Index of the calling thread in its team, 0 .. omp_get_num_threads() - 1.
    int omp_get_thread_num() noexcept nogil
