# "Speed of light" for the benchmark (benchmarks/compare.py): plain streaming loops that move
# the same memory traffic as a two-pass batch norm and do (almost) no arithmetic.
#
#   stream_fwd_train   2 reads + 1 write : read x (sum), then read x again and write out
#   stream_bwd         4 reads + 1 write : read dy and x (one sum), then read both and write out
#   stream_eval        1 read  + 1 write : read x and write out
#
# A batch-norm kernel cannot do less than this without a cache-blocked schedule (see
# docs/benchmarks.md), so "cybn / SoL" says how close a kernel is to the machine's streaming
# bandwidth. Arrays are flat C-contiguous views (the benchmark passes x.reshape(-1)); the
# caller allocates `out` (a fresh np.empty_like per call in the benchmark, like the real
# ops). Built as the top-level module _sol in benchmarks/.build/ by benchmarks/build_sol.py
# with the installed cybn's flags and directives (from its build record: -O3,
# -ffp-contract=off, OpenMP; no -ffast-math, no -march=native), so the loops get the same
# code generation chances as cybn._kernels.
#
# The work is cut into fixed blocks of BLOCK_ELEMS elements, distributed with a static
# schedule (each thread streams one contiguous stretch); inputs of a single block run
# serially, like the kernels' sub-tile inputs. Sums use LANES independent accumulators of
# the element type, so a read pass is not one serial dependency chain; their values are
# returned so that no pass can be optimised away, and are meaningless otherwise (float32
# sums lose precision: that is fine here).

from cython.parallel cimport prange

ctypedef fused floating:
    float
    double

cdef enum:
    # 16 Ki elements: 64 KiB of float32, 128 KiB of float64 per block.
    BLOCK_ELEMS = 16384
    # Independent accumulators per sum: 4 (float) or 8 (double) SSE vectors, enough to
    # hide the add latency, so a read pass is limited by loads, not by a dependency chain.
    LANES = 16


cdef inline Py_ssize_t _n_blocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK_ELEMS - 1) // BLOCK_ELEMS


cdef inline bint _use_threads(Py_ssize_t n_blocks, int n_threads) noexcept nogil:
    return n_threads > 1 and n_blocks > 1


# ---------------------------------------------------------------------------------------
# Per-block loops

cdef inline double _block_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum(x[0:n]) with LANES accumulators."""
    cdef floating acc[LANES]
    cdef floating total = 0
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += x[i + j]
        i += LANES
    while i < n:
        total += x[i]
        i += 1
    for j in range(LANES):
        total += acc[j]
    return <double>total


cdef inline double _block_dot(const floating* dy, const floating* x,
                              Py_ssize_t n) noexcept nogil:
    """sum(dy[0:n] * (x[0:n] + 1)) = sum(dy) + sum(dy * x), with LANES accumulators."""
    # One accumulator array: with two (sum(dy) and sum(dy * x) apart), gcc 12 vectorises
    # the outer loop with shuffles and runs 8x slower than the loads allow.
    # `one`, not a literal: Cython writes 1 as 1.0, which would make the float32 loop
    # scalar double arithmetic.
    cdef floating acc[LANES]
    cdef floating total = 0, one = 1
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += dy[i + j] * (x[i + j] + one)
        i += LANES
    while i < n:
        total += dy[i] * (x[i] + one)
        i += 1
    for j in range(LANES):
        total += acc[j]
    return <double>total


cdef inline void _block_scale(const floating* x, floating* out, Py_ssize_t n,
                              floating a, floating b) noexcept nogil:
    """out = x * a + b over n elements."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = x[i] * a + b


cdef inline void _block_triad(const floating* dy, const floating* x, floating* out,
                              Py_ssize_t n, floating a, floating b) noexcept nogil:
    """out = (dy - a) - x * b over n elements."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = (dy[i] - a) - x[i] * b


# ---------------------------------------------------------------------------------------
# Whole-array passes (nogil)

cdef double _sum(const floating* x, Py_ssize_t n, int n_threads) noexcept nogil:
    cdef Py_ssize_t nb = _n_blocks(n), k, lo
    cdef double total = 0
    for k in prange(nb, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(nb, n_threads)):
        lo = k * BLOCK_ELEMS
        total += _block_sum(x + lo, min(BLOCK_ELEMS, n - lo))
    return total


cdef double _dot(const floating* dy, const floating* x, Py_ssize_t n,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t nb = _n_blocks(n), k, lo
    cdef double total = 0
    for k in prange(nb, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(nb, n_threads)):
        lo = k * BLOCK_ELEMS
        total += _block_dot(dy + lo, x + lo, min(BLOCK_ELEMS, n - lo))
    return total


cdef void _scale(const floating* x, floating* out, Py_ssize_t n, floating a, floating b,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t nb = _n_blocks(n), k, lo
    for k in prange(nb, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(nb, n_threads)):
        lo = k * BLOCK_ELEMS
        _block_scale(x + lo, out + lo, min(BLOCK_ELEMS, n - lo), a, b)


cdef void _triad(const floating* dy, const floating* x, floating* out, Py_ssize_t n,
                 floating a, floating b, int n_threads) noexcept nogil:
    cdef Py_ssize_t nb = _n_blocks(n), k, lo
    for k in prange(nb, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(nb, n_threads)):
        lo = k * BLOCK_ELEMS
        _block_triad(dy + lo, x + lo, out + lo, min(BLOCK_ELEMS, n - lo), a, b)


# ---------------------------------------------------------------------------------------
# Python-visible loops. Arrays are flat and C-contiguous; `out` must not overlap the inputs
# and must have the inputs' length (unchecked: the benchmark is the only caller).

def stream_fwd_train(const floating[::1] x,   # IN  (n,)
                     floating[::1] out,       # OUT (n,)
                     int n_threads):
    """Training-forward traffic, 2 reads + 1 write: s = sum(x); out = x - s / n. Returns s."""
    cdef Py_ssize_t n = x.shape[0]
    cdef double s
    if n == 0:
        return 0.0
    with nogil:
        s = _sum(&x[0], n, n_threads)
        _scale(&x[0], &out[0], n, <floating>1, <floating>(-s / n), n_threads)
    return s


def stream_bwd(const floating[::1] dy,        # IN  (n,)
               const floating[::1] x,         # IN  (n,)
               floating[::1] out,             # OUT (n,)
               int n_threads):
    """Backward traffic, 4 reads + 1 write: s = sum(dy) + sum(dy * x); out = (dy - s/n) - x * s/n.

    Returns s.
    """
    cdef Py_ssize_t n = x.shape[0]
    cdef double s
    if n == 0:
        return 0.0
    with nogil:
        s = _dot(&dy[0], &x[0], n, n_threads)
        _triad(&dy[0], &x[0], &out[0], n, <floating>(s / n), <floating>(s / n), n_threads)
    return s


def stream_eval(const floating[::1] x,        # IN  (n,)
                floating[::1] out,            # OUT (n,)
                double scale,
                double shift,
                int n_threads):
    """Evaluation-forward traffic, 1 read + 1 write: out = x * scale + shift."""
    cdef Py_ssize_t n = x.shape[0]
    if n == 0:
        return
    with nogil:
        _scale(&x[0], &out[0], n, <floating>scale, <floating>shift, n_threads)
