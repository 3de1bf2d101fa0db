# Batch-normalization kernels: arithmetic only, no validation. Included by _kernels.pyx
# (baseline instruction set) and _kernels_avx2.pyx (built with AVX2 on x86-64); see there.
# docs/architecture.md maps this file; the callers in cybn.functional own shapes, dtypes,
# allocation and the thread count, and calling these with unchecked arguments is undefined
# behaviour.
#
# Layout. Every array arrives as a C-contiguous (N, C, L) view; statistics are taken over N
# and L for each channel c. 2-D (N, C) input and channels-last data arrive with L == 1.
#
# Organisation (schedule separate from arithmetic):
#   1. Schedules: _schedule() picks one of three ways to walk the array, from the table of
#      thresholds below (each with the measurement that set it); _Plan cuts it into tiles.
#   2. Arithmetic helpers, one per pass and kind of sum (_v4/_v1: the four kinds of
#      per-element sum; _finish_stats/_finish_dot: a tile's results; _needs_exact and
#      _channel_exact, the numerical fallbacks, together).
#   3. Walkers, each written once: _walk_columns and _walk_runs reduce a tile (any pass),
#      _map_tile writes an elementwise result over a tile (normalize or grad_input), and
#      _for_items runs a job over tiles or channels, serially or with an OpenMP team.
#   4. Drivers (whole array, nogil) and the Python-visible kernels.
#   Adding an operation means one element helper per pass and a job kind, not a walker.
#
# Numerics (why the code looks the way it does):
# - Sums are accumulated in double for float and double input (like ATen's accscalar_t).
# - Statistics use a corrected two-pass per tile (tile mean, then sum of deviations and of
#   squared deviations; Chan, Golub & LeVeque 1983) while the tile is in cache, and tiles
#   are merged with Chan's parallel formula. Never E[x^2] - E[x]^2.
# - A constant channel therefore has a mean exactly equal to its value, and the output is
#   computed as (x - mean) * (invstd * weight) + bias, so it is exactly `bias`.
# - Tiles depend only on (N, C, L), never on the thread count, and partial results are
#   combined in tile order: results are bitwise identical for every n_threads.
# - Inputs smaller than one tile run serially: no thread team for work that cannot pay.

cimport cython
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport fabs, frexp, ldexp, sqrt
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)

ctypedef fused floating:
    float
    double

# Parameters and running statistics have the module's dtype, which may differ from the
# input's (a float32 module accepts float64 input), hence a second, independent fused type.
ctypedef fused param_t:
    float
    double

# Per-channel constants of the normalisation, in the input's type (fast) or in double
# (when they do not fit a float: e.g. a tiny variance with a tiny eps).
ctypedef fused prm_t:
    float
    double


# ---------------------------------------------------------------------------------------
# 1. Schedules
#
# | schedule | walks                                              | chosen when (_schedule)   |
# |----------|----------------------------------------------------|---------------------------|
# | COLUMNS  | tiles as rows of contiguous "columns" (a tile row:  | L < COLUMNS_MAX_L (2-D    |
# |          | its channels x all L positions), per-column sums   | input and channels-last   |
# |          | folded into channels at the end of the tile        | included)                 |
# | RUNS     | tiles run by run (one channel's L positions), with | L >= COLUMNS_MAX_L        |
# |          | LANES accumulators kept across a channel's runs    |                           |
# | SLAB     | one whole channel (all N x L) per item: statistics | a fused op (training      |
# |          | then output (or backward sums then grad_input)     | forward without           |
# |          | while the channel is in L2                         | check_finite, backward),  |
# |          |                                                    | C >= SLAB_MIN_CHANNELS,   |
# |          |                                                    | L * size >= 32 KiB,       |
# |          |                                                    | N * L * size <= 1 MiB     |
#
# Thresholds and the measurements that set them (2-vCPU KVM x86-64, the benchmark in
# benchmarks/; same-process or alternating-process ratios, new / previous time):
# - COLUMNS_MAX_L = 64 (commit e7870fa): below one 64-element block every element of a run
#   went through the scalar tail; (16384, 64, 4) float32 normalize took 6.2 ms. Columns:
#   training forward 0.17-0.82x for L = 3..32, backward 0.24-0.89x. Columns for L = 100-250
#   were measured and rejected (evaluation and backward 4-24 % slower).
# - LANES = 16, GROUP = 4 (commit 601cf54): gcc vectorises a reduction without -ffast-math
#   only as one accumulator array per loop; four values are combined in the input's type
#   (four float32 per SSE vector) before each double add. (8, 64, 16384) float32
#   statistics 7.1 -> 2.7-4.6 ms.
# - CHANNEL_GROUP = 16 (commit 40ce1b8): lanes kept across a channel's runs cut the
#   per-run totals, which cost as much as the sums for runs of a few hundred elements:
#   (1024, 3, 224) training forward 0.86-0.95x, (32, 16, 250) 0.67-0.90x. 16 channels x
#   16 lanes x 2 sums of doubles is 4 KiB of accumulators, inside L1; other group sizes
#   were not measured.
# - SLAB_MIN_RUN_BYTES = 32 KiB (commit aae173f): (64, 256, 1024) float32, runs of 4 KiB
#   strided by C * L, measured slower as slabs than as tiles.
# - SLAB_BYTES = 1 MiB and SLAB_MIN_CHANNELS = 8 (commit a7b4e30): set from traffic, not
#   measured: a slab must fit a core's L2 (1-2 MiB on the targets) for its second pass to
#   come from cache (1 read + 1 write from memory instead of 2 + 1 in the forward), and
#   with fewer than 8 channels two threads would not be kept busy by whole channels.
# - TILE_ELEMS = 64 Ki elements (256 KiB float32, 512 KiB float64) so that a tile's second
#   pass is served from L2; TILE_CHANNELS = 1024 bounds the per-tile stack accumulators.
#   Not measured against other sizes.
# - Serial loops when one thread would run (commit ca797cf): entering an OpenMP region,
#   even with if(false), cost ~0.5 us per kernel call; (32, 64) float32 evaluation 7.98 ->
#   4.15 us. Teams never exceed the number of items (commit 9571ec9: n_threads=100000
#   crashed libgomp).

cdef enum:
    TILE_ELEMS = 65536
    TILE_CHANNELS = 1024
    SLAB_BYTES = 1048576
    SLAB_MIN_CHANNELS = 8
    SLAB_MIN_RUN_BYTES = 32768
    LANES = 16
    GROUP = 4
    CHANNEL_GROUP = 16
    COLUMNS_MAX_L = 64

cdef enum Schedule:
    COLUMNS = 0
    RUNS = 1
    SLAB = 2


cdef Schedule _schedule(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, size_t itemsize,
                        bint fused) noexcept nogil:
    """The one choice of schedule (see the table above). `fused`: the operation has a
    second pass that can run on a channel while it is cached (training forward without
    check_finite, which must stop between the passes; backward)."""
    if (fused and C >= SLAB_MIN_CHANNELS
            and <size_t>L * itemsize >= <size_t>SLAB_MIN_RUN_BYTES
            and <size_t>(N * L) * itemsize <= <size_t>SLAB_BYTES):
        return SLAB
    return COLUMNS if L < COLUMNS_MAX_L else RUNS


cdef struct _Plan:
    Py_ssize_t N, C, L
    Py_ssize_t tn, tc, tl        # tile extent along N, C, L
    Py_ssize_t bn, bc, bl        # number of tiles along N, C, L
    Py_ssize_t n_tiles
    Py_ssize_t n_slots           # bn * bl: tiles that hold partial sums for one channel
    Schedule schedule


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef _Plan _make_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, size_t itemsize,
                      bint fused) noexcept nogil:
    """Tiles of rows x channels x positions for an (N, C, L) array (N, C, L >= 1)."""
    cdef _Plan p
    p.N = N
    p.C = C
    p.L = L
    p.schedule = _schedule(N, C, L, itemsize, fused)
    p.tl = L if L < TILE_ELEMS else TILE_ELEMS
    if L < COLUMNS_MAX_L:
        p.tc = TILE_CHANNELS // L  # the columns of a tile row fit the accumulators
    else:
        p.tc = TILE_ELEMS // p.tl
        if p.tc > TILE_CHANNELS:
            p.tc = TILE_CHANNELS
    if p.tc > C:
        p.tc = C
    if p.tc < 1:
        p.tc = 1
    p.tn = TILE_ELEMS // (p.tc * p.tl)
    if p.tn > N:
        p.tn = N
    if p.tn < 1:
        p.tn = 1
    p.bn = _cdiv(N, p.tn)
    p.bc = _cdiv(C, p.tc)
    p.bl = _cdiv(L, p.tl)
    p.n_tiles = p.bn * p.bc * p.bl
    p.n_slots = p.bn * p.bl
    return p


def plan_info(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, size_t itemsize, bint fused):
    """The schedule and tiling the kernels use for an (N, C, L) array (N, C, L >= 1).

    Returns a dict: ``schedule`` ('columns', 'runs' or 'slab'), the tile extents ``tn``,
    ``tc``, ``tl`` along N, C, L and the tile counts ``bn``, ``bc``, ``bl``. For the
    accuracy oracle (tests/_accuracy.py) and the schedule tests, so that neither copies
    the thresholds. ``fused``: as for a training forward without check_finite, or a
    backward (the operations that may take the slab schedule).
    """
    cdef _Plan p = _make_plan(N, C, L, itemsize, fused)
    return {"schedule": ("columns", "runs", "slab")[<int>p.schedule],
            "tn": p.tn, "tc": p.tc, "tl": p.tl, "bn": p.bn, "bc": p.bc, "bl": p.bl}


cdef struct _Tile:
    Py_ssize_t n0, n1, c0, c1, l0, l1
    Py_ssize_t slot


cdef inline _Tile _tile(const _Plan* p, Py_ssize_t t) noexcept nogil:
    # Tiles are numbered in memory order (n, then c, then l), so a static schedule gives
    # each thread one contiguous stretch of memory.
    cdef _Tile tile
    cdef Py_ssize_t il = t % p.bl
    cdef Py_ssize_t ic = (t // p.bl) % p.bc
    cdef Py_ssize_t i_n = t // (p.bl * p.bc)
    tile.n0 = i_n * p.tn
    tile.n1 = tile.n0 + p.tn if tile.n0 + p.tn < p.N else p.N
    tile.c0 = ic * p.tc
    tile.c1 = tile.c0 + p.tc if tile.c0 + p.tc < p.C else p.C
    tile.l0 = il * p.tl
    tile.l1 = tile.l0 + p.tl if tile.l0 + p.tl < p.L else p.L
    tile.slot = i_n * p.bl + il
    return tile


cdef inline _Tile _slab(const _Plan* p, Py_ssize_t c) noexcept nogil:
    # The SLAB schedule's item: channel c over all N and L, walked as a tile of runs.
    cdef _Tile tl
    tl.n0 = 0
    tl.n1 = p.N
    tl.c0 = c
    tl.c1 = c + 1
    tl.l0 = 0
    tl.l1 = p.L
    tl.slot = 0
    return tl


cdef inline const floating* _run_ptr(const floating* base, const _Plan* p, Py_ssize_t n,
                                     Py_ssize_t c, Py_ssize_t l0) noexcept nogil:
    return base + (n * p.C + c) * p.L + l0


# ---------------------------------------------------------------------------------------
# 2. Arithmetic helpers
#
# The four kinds of per-element sum, in two forms: _v4 combines four values at stride s
# (rows of a columns tile, or lanes of a run) in the input's type, _v1 forms one value in
# the input's type (a run's last lanes) or in double (a run's tail, a columns tile's last
# rows).
# Forming and grouping in the input's type is exact near the centre `m` and runs in float
# vectors for float32; every such value is then accumulated in double, in a fixed order
# (deterministic for every thread count). `g` is grad_output (DOT only).

cdef struct _Sum:    # sum(q)
    char unused
cdef struct _Dev:    # sum(q - m)
    char unused
cdef struct _Sq:     # sum((q - m)^2)
    char unused
cdef struct _Dot:    # sum(g * (q - m))
    char unused

ctypedef fused kind_t:
    _Sum
    _Dev
    _Sq
    _Dot

# the type a single value is formed in: the input's (inside runs) or double (tails)
ctypedef fused acc_t:
    float
    double


cdef inline floating _v4(kind_t* k, const floating* g, const floating* q, Py_ssize_t s,
                         floating m) noexcept nogil:
    cdef floating d0, d1, d2, d3
    if kind_t is _Sum:
        return (q[0] + q[s]) + (q[2 * s] + q[3 * s])
    elif kind_t is _Dev:
        return ((q[0] - m) + (q[s] - m)) + ((q[2 * s] - m) + (q[3 * s] - m))
    elif kind_t is _Sq:
        d0 = q[0] - m
        d1 = q[s] - m
        d2 = q[2 * s] - m
        d3 = q[3 * s] - m
        return (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    else:
        return ((g[0] * (q[0] - m) + g[s] * (q[s] - m))
                + (g[2 * s] * (q[2 * s] - m) + g[3 * s] * (q[3 * s] - m)))


cdef inline acc_t _v1(kind_t* k, const floating* g, const floating* q, floating m,
                      acc_t* in_type) noexcept nogil:
    # in_type: a NULL pointer of the type to form the value in (floating, or double)
    cdef acc_t d
    if kind_t is _Sum:
        return q[0]
    elif kind_t is _Dev:
        return q[0] - <acc_t>m
    elif kind_t is _Sq:
        d = q[0] - <acc_t>m
        return d * d
    else:
        return g[0] * (q[0] - <acc_t>m)


# A pass over a tile computes one or two per-channel sums. _Mean: sum(x) (the statistics'
# first pass); _Var: sum(x - shift), sum((x - shift)^2) (their second pass); _Grad:
# sum(dy), sum(dy * (x - centre)) (the backward's reduction).
cdef struct _Mean:
    char unused
cdef struct _Var:
    char unused
cdef struct _Grad:
    char unused

ctypedef fused pass_t:
    _Mean
    _Var
    _Grad


cdef inline bint _finite(double v) noexcept nogil:
    # v - v is 0 for finite v and NaN for inf and NaN (no isfinite: the build must not
    # depend on the C library's classification macros under every compiler)
    return v - v == 0


cdef double _TINY = 1e-30
# Below this mean square per element, float32 squares and products lose precision to
# underflow (FLT_MIN is 1.2e-38): such channels are summed in double instead.


cdef inline bint _needs_exact(bint is_float, double s1, double s2, double fast_sq,
                              double fast_dot, double count) noexcept nogil:
    """Whether a channel's fast sums must be redone in double (_channel_exact): they are
    not finite (overflow in the input's type, or inf/nan data), or, for float32, the
    squares (statistics: fast_sq) or products (backward: fast_dot, with sum(dy) != 0)
    are so small that they underflowed. Pass fast_dot = -1 for statistics and
    fast_sq = -1 for the backward."""
    if not (_finite(s1) and _finite(s2)):
        return True
    if not is_float:
        return False
    if fast_sq >= 0:
        return fast_sq < _TINY * count
    return s1 != 0 and fast_dot < _TINY * count


cdef void _channel_exact(const floating* base, const floating* dy, const _Plan* p,
                         const _Tile* tl, Py_ssize_t c, double center,
                         double* out1, double* out2) noexcept nogil:
    """One channel of a tile, entirely in double: the fallback when _needs_exact.

    Without dy: out1, out2 = mean, M2 (corrected two-pass on scaled deviations). With dy:
    out1, out2 = sum(dy), sum(dy * (x - center)).
    """
    cdef Py_ssize_t n, i, run = tl.l1 - tl.l0
    cdef double count = <double>((tl.n1 - tl.n0) * run)
    cdef double s1 = 0, s2 = 0, m, d, dmax, sc
    cdef int e
    cdef const floating* r
    cdef const floating* g
    if dy != NULL:
        for n in range(tl.n0, tl.n1):
            r = _run_ptr(base, p, n, c, tl.l0)
            g = _run_ptr(dy, p, n, c, tl.l0)
            for i in range(run):
                s1 += g[i]
                s2 += g[i] * (r[i] - center)
        out1[0] = s1
        out2[0] = s2
        return
    for n in range(tl.n0, tl.n1):
        r = _run_ptr(base, p, n, c, tl.l0)
        for i in range(run):
            s1 += r[i]
    m = s1 / count
    if not _finite(m):
        out1[0] = m  # inf/nan data: the plain mean propagates inf like torch's
        out2[0] = m - m
        return
    # Deviations are scaled by a power of two below their largest magnitude, so that
    # their squares cannot overflow: huge float64 data (|x| ~ 1e200) has deviations
    # from an inexact first-pass mean of ~1e184, whose squares would be inf.
    dmax = 0
    for n in range(tl.n0, tl.n1):
        r = _run_ptr(base, p, n, c, tl.l0)
        for i in range(run):
            d = fabs(r[i] - m)
            if d > dmax:
                dmax = d
    sc = 1.0
    if dmax > 0:
        frexp(dmax, &e)
        sc = ldexp(1.0, -e)
    s1 = 0
    for n in range(tl.n0, tl.n1):
        r = _run_ptr(base, p, n, c, tl.l0)
        for i in range(run):
            d = (r[i] - m) * sc
            s1 += d
            s2 += d * d
    out1[0] = m + (s1 / count) / sc
    out2[0] = ((s2 - s1 * s1 / count) / sc) / sc  # inf only when M2 itself is


cdef inline bint _split_constants(Py_ssize_t C, const double* center, const double* scale,
                                  const double* shift, floating* prm) noexcept nogil:
    """The normalisation's per-channel constants in the input's type: rows hi, lo, scale,
    shift of prm (4 * C), with center = hi + lo and hi = center rounded to the input's
    type, so that x - hi is exact near the centre (Sterbenz) and a constant channel
    (x == center) gives exactly shift. False when a finite scale or shift overflows the
    input's type: the caller then uses _double_constants (the channel in double)."""
    cdef Py_ssize_t c
    cdef bint fits = True
    for c in range(C):
        prm[c] = <floating>center[c]
        prm[C + c] = <floating>(center[c] - <double>prm[c])
        prm[2 * C + c] = <floating>scale[c]
        prm[3 * C + c] = <floating>shift[c]
        if ((_finite(scale[c]) and not _finite(prm[2 * C + c]))
                or (_finite(shift[c]) and not _finite(prm[3 * C + c]))):
            fits = False
    return fits


cdef inline void _double_constants(Py_ssize_t C, const double* center, const double* scale,
                                   const double* shift, double* prm) noexcept nogil:
    # as _split_constants in double, with lo = 0 (x - hi - 0 is x - hi, bit for bit)
    cdef Py_ssize_t c
    for c in range(C):
        prm[c] = center[c]
        prm[C + c] = 0
        prm[2 * C + c] = scale[c]
        prm[3 * C + c] = shift[c]


# ---------------------------------------------------------------------------------------
# 3. Walkers: each way of walking a tile, written once for every pass and operation

cdef inline void _acc(kind_t* k, const floating* g, const floating* q, Py_ssize_t n,
                      floating m, double* total, double* tail) noexcept nogil:
    """Add the kind-k sum over a contiguous run of n elements to the LANES accumulators
    `total` (blocks of GROUP * LANES, then of LANES), its last n % LANES elements to
    `tail`. `total` is copied to a local array, which the compiler keeps in registers."""
    cdef double t[LANES]
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        t[j] = total[j]
    while n - i >= GROUP * LANES:
        for j in range(LANES):
            t[j] += _v4(k, g + i + j, q + i + j, LANES, m)
        i += GROUP * LANES
    while n - i >= LANES:  # short runs (small L) and remainders: still vectorised
        for j in range(LANES):
            t[j] += _v1(k, g + i + j, q + i + j, m, <floating*>NULL)
        i += LANES
    for j in range(LANES):
        total[j] = t[j]
    while i < n:
        tail[0] += _v1(k, g + i, q + i, m, <double*>NULL)
        i += 1


cdef inline double _lanes_total(const double* a) noexcept nogil:
    # a fixed pairwise order over the LANES (= 16) accumulators
    return ((((a[0] + a[8]) + (a[4] + a[12])) + ((a[2] + a[10]) + (a[6] + a[14])))
            + (((a[1] + a[9]) + (a[5] + a[13])) + ((a[3] + a[11]) + (a[7] + a[15]))))


cdef inline void _walk_runs(pass_t* ps, const floating* x, const floating* dy,
                            const _Plan* p, const _Tile* tl, Py_ssize_t c0, Py_ssize_t c1,
                            const floating* m, double* out1, double* out2) noexcept nogil:
    """The pass's sums over channels [c0, c1) of a tile walked run by run (RUNS, SLAB),
    c1 - c0 <= CHANNEL_GROUP: out1[c - c0], out2[c - c0] (m[c - c0]: the centres).

    Each channel keeps its lanes across its runs and totals them once (per-run totals
    cost more than the sums of short runs), while the runs are still visited in memory
    order, row by row, which the hardware prefetcher needs. The two sums of a pass are
    two sweeps of the same run, the second from L1.
    """
    cdef double t1[CHANNEL_GROUP * LANES]
    cdef double t2[CHANNEL_GROUP * LANES]
    cdef double tail1[CHANNEL_GROUP]
    cdef double tail2[CHANNEL_GROUP]
    cdef _Sum k_sum
    cdef _Dev k_dev
    cdef _Sq k_sq
    cdef _Dot k_dot
    cdef const floating* q
    cdef const floating* g
    cdef Py_ssize_t n, c, j, run = tl.l1 - tl.l0
    for c in range(c1 - c0):
        for j in range(LANES):
            t1[c * LANES + j] = 0
            t2[c * LANES + j] = 0
        tail1[c] = 0
        tail2[c] = 0
    for n in range(tl.n0, tl.n1):
        for c in range(c1 - c0):
            q = _run_ptr(x, p, n, c0 + c, tl.l0)
            if pass_t is _Mean:
                _acc(&k_sum, q, q, run, 0, t1 + c * LANES, &tail1[c])
            elif pass_t is _Var:
                _acc(&k_dev, q, q, run, m[c], t1 + c * LANES, &tail1[c])
                _acc(&k_sq, q, q, run, m[c], t2 + c * LANES, &tail2[c])
            else:
                g = _run_ptr(dy, p, n, c0 + c, tl.l0)
                _acc(&k_sum, g, g, run, 0, t1 + c * LANES, &tail1[c])
                _acc(&k_dot, g, q, run, m[c], t2 + c * LANES, &tail2[c])
    for c in range(c1 - c0):
        out1[c] = _lanes_total(t1 + c * LANES) + tail1[c]
        if pass_t is not _Mean:
            out2[c] = _lanes_total(t2 + c * LANES) + tail2[c]


cdef inline void _walk_columns(pass_t* ps, const floating* x, const floating* dy,
                               const _Plan* p, const _Tile* tl, const floating* col,
                               double* acc1, double* acc2) noexcept nogil:
    """The pass's sums over a COLUMNS tile, added per column to acc1, acc2 (ncol =
    channels x positions entries; col: the centres per column). A tile row is ncol
    contiguous values at stride S = C * L; GROUP rows are combined at a time (one
    load/store of an accumulator per GROUP elements), the last rows one by one."""
    cdef _Sum k_sum
    cdef _Dev k_dev
    cdef _Sq k_sq
    cdef _Dot k_dot
    cdef Py_ssize_t S = p.C * p.L, ncol = (tl.c1 - tl.c0) * (tl.l1 - tl.l0)
    cdef Py_ssize_t off = tl.c0 * p.L, n, j
    cdef const floating* q
    cdef const floating* g
    n = tl.n0
    while n + GROUP <= tl.n1:
        q = x + n * S + off
        if pass_t is _Mean:
            for j in range(ncol):
                acc1[j] += _v4(&k_sum, q + j, q + j, S, 0)
        elif pass_t is _Var:
            for j in range(ncol):
                acc1[j] += _v4(&k_dev, q + j, q + j, S, col[j])
                acc2[j] += _v4(&k_sq, q + j, q + j, S, col[j])
        else:
            g = dy + n * S + off
            for j in range(ncol):
                acc1[j] += _v4(&k_sum, g + j, g + j, S, 0)
                acc2[j] += _v4(&k_dot, g + j, q + j, S, col[j])
        n += GROUP
    while n < tl.n1:
        q = x + n * S + off
        if pass_t is _Mean:
            for j in range(ncol):
                acc1[j] += _v1(&k_sum, q + j, q + j, 0, <double*>NULL)
        elif pass_t is _Var:
            for j in range(ncol):
                acc1[j] += _v1(&k_dev, q + j, q + j, col[j], <double*>NULL)
                acc2[j] += _v1(&k_sq, q + j, q + j, col[j], <double*>NULL)
        else:
            g = dy + n * S + off
            for j in range(ncol):
                acc1[j] += _v1(&k_sum, g + j, g + j, 0, <double*>NULL)
                acc2[j] += _v1(&k_dot, g + j, q + j, col[j], <double*>NULL)
        n += 1


cdef inline const prm_t* _to_columns(const prm_t* per_channel, Py_ssize_t nc, Py_ssize_t L,
                                     prm_t* columns) noexcept nogil:
    """Per-channel values of a tile's nc channels as per-column values of a tile row: each
    repeated L times into `columns` (L * nc <= TILE_CHANNELS); for L == 1 the channels are
    the columns, and per_channel is returned without a copy."""
    cdef Py_ssize_t c, l, j = 0
    if L == 1:
        return per_channel
    for c in range(nc):
        for l in range(L):
            columns[j] = per_channel[c]
            j += 1
    return columns


cdef inline void _fold(double* a, Py_ssize_t nc, Py_ssize_t L) noexcept nogil:
    """Sum the L column accumulators of each channel into a[c], in place, in a fixed order
    (a[c] is written after a[c * L:(c + 1) * L] is read, and c <= c * L)."""
    cdef Py_ssize_t c, l
    cdef double total
    if L == 1:
        return
    for c in range(nc):
        total = a[c * L]
        for l in range(1, L):
            total += a[c * L + l]
        a[c] = total


cdef inline void _reduce_tile(pass_t* ps, const floating* x, const floating* dy,
                              const _Plan* p, const _Tile* tl, const floating* m,
                              double* out1, double* out2) noexcept nogil:
    """The pass's per-channel sums over a tile, by the plan's walk: out1/out2[c - c0]
    (sized TILE_CHANNELS; m[c - c0]: the centres, unused by _Mean)."""
    cdef Py_ssize_t nc = tl.c1 - tl.c0, c, j
    cdef floating colbuf[TILE_CHANNELS]
    if p.schedule != COLUMNS:
        for c in range(0, nc, 16):  # CHANNEL_GROUP (Cython needs a literal step)
            _walk_runs(ps, x, dy, p, tl, tl.c0 + c, tl.c0 + min(c + CHANNEL_GROUP, nc),
                       m + c, out1 + c, out2 + c)
        return
    for j in range(nc * p.L):
        out1[j] = 0
        out2[j] = 0
    if pass_t is _Mean:
        _walk_columns(ps, x, dy, p, tl, NULL, out1, out2)
    else:
        _walk_columns(ps, x, dy, p, tl, _to_columns(m, nc, p.L, colbuf), out1, out2)
    _fold(out1, nc, p.L)
    if pass_t is not _Mean:
        _fold(out2, nc, p.L)


# The elementwise operations: out = f(x, dy, the four constants of the channel).
cdef struct _Norm:      # ((x - hi) - lo) * scale + shift
    char unused
cdef struct _GradX:     # ((dy - mean_dy) - (x - center) * k) * scale
    char unused
cdef struct _GradDy:    # dy * scale
    char unused
# Batch norm fused with ReLU (oneDNN's fuse_norm_relu, fuse_norm_add_relu; MXNet's
# BatchNormWithReLU): the _Norm value rounded to the input's type, plus the residual (read
# through the dy pointer) added in the input's type as torch's `bn(x) + r` is, then ReLU.
# The backward recomputes the forward's output with the same element and constants and
# masks grad_output with _ReluGrad, so the mask is the forward's decision bit for bit.
cdef struct _NormRelu:      # relu(norm(x))
    char unused
cdef struct _NormAddRelu:   # relu(norm(x) + r), r through dy
    char unused
cdef struct _ReluGrad:      # 0 where y <= 0 else dy, y (the forward's output) through x
    char unused             # (torch's threshold_backward: NaN output passes dy)
cdef struct _NormReluMask:  # 0 where norm(x) <= 0 else dy: _NormRelu's y <= 0 exactly
    char unused             # when its argument is, so _ReluGrad of it in one pass

ctypedef fused map_t:
    _Norm
    _GradX
    _GradDy
    _NormRelu
    _NormAddRelu
    _ReluGrad
    _NormReluMask


cdef inline floating _relu(floating v) noexcept nogil:
    # torch.relu: 0 for v <= 0, v otherwise (NaN propagates)
    return <floating>0 if v <= 0 else v


cdef inline floating _elem(map_t* op, const floating* x, const floating* dy, prm_t k0,
                           prm_t k1, prm_t k2, prm_t k3) noexcept nogil:
    cdef floating g
    if map_t is _Norm:
        return <floating>(((x[0] - k0) - k1) * k2 + k3)
    elif map_t is _GradX:
        return <floating>(((dy[0] - k1) - (x[0] - k0) * k2) * k3)
    elif map_t is _GradDy:
        return <floating>(dy[0] * k3)
    elif map_t is _NormRelu:
        return _relu(<floating>(((x[0] - k0) - k1) * k2 + k3))
    elif map_t is _NormAddRelu:
        return _relu(<floating>(<floating>(((x[0] - k0) - k1) * k2 + k3) + dy[0]))
    elif map_t is _ReluGrad:
        g = dy[0]  # loaded unconditionally: a load under the condition blocks vectorising
        return <floating>0 if x[0] <= 0 else g
    else:
        g = dy[0]
        return <floating>0 if <floating>(((x[0] - k0) - k1) * k2 + k3) <= 0 else g


cdef void _map_tile(map_t* op, const floating* x, const floating* dy, floating* out,
                    const _Plan* p, const _Tile* tl, const prm_t* k0, const prm_t* k1,
                    const prm_t* k2, const prm_t* k3) noexcept nogil:
    """out = op(x, dy, k0..k3 of the channel) over a tile; k0..k3 point at the constants
    of the tile's first channel (_GradDy reads only k3; the others may be NULL; _ReluGrad
    reads none). COLUMNS tiles spread the constants over a tile row's columns first.
    `out` may be `x` or `dy` (each element is read before it is written)."""
    cdef Py_ssize_t nc = tl.c1 - tl.c0, run = tl.l1 - tl.l0, n, c, i, off, j
    cdef Py_ssize_t S = p.C * p.L, ncol = nc * run
    cdef prm_t col[4 * TILE_CHANNELS]
    cdef prm_t a0, a1, a2, a3
    if map_t is _ReluGrad:  # no constants: a tile row (COLUMNS) or a run at a time
        for n in range(tl.n0, tl.n1):
            for c in range(1 if p.schedule == COLUMNS else nc):
                off = (n * p.C + tl.c0 + c) * p.L + tl.l0
                for i in range(off, off + (ncol if p.schedule == COLUMNS else run)):
                    out[i] = _elem(op, x + i, dy + i, <prm_t>0, <prm_t>0, <prm_t>0,
                                   <prm_t>0)
        return
    if p.schedule == COLUMNS:
        if map_t is not _GradDy:
            k0 = _to_columns(k0, nc, p.L, col)
            k1 = _to_columns(k1, nc, p.L, col + TILE_CHANNELS)
            k2 = _to_columns(k2, nc, p.L, col + 2 * TILE_CHANNELS)
        k3 = _to_columns(k3, nc, p.L, col + 3 * TILE_CHANNELS)
        for n in range(tl.n0, tl.n1):
            off = n * S + tl.c0 * p.L
            if map_t is _GradDy:
                for j in range(ncol):
                    out[off + j] = _elem(op, x + off + j, dy + off + j, k3[j], k3[j], k3[j],
                                         k3[j])
            else:
                for j in range(ncol):
                    out[off + j] = _elem(op, x + off + j, dy + off + j, k0[j], k1[j], k2[j],
                                         k3[j])
        return
    for n in range(tl.n0, tl.n1):
        for c in range(nc):
            off = (n * p.C + tl.c0 + c) * p.L + tl.l0
            a3 = k3[c]
            if map_t is _GradDy:
                a0 = a1 = a2 = a3
            else:
                a0 = k0[c]
                a1 = k1[c]
                a2 = k2[c]
            for i in range(off, off + run):
                out[i] = _elem(op, x + i, dy + i, a0, a1, a2, a3)


# Per-tile (or per-slab) passes: a walk, then the tile's results.

cdef void _tile_stats(const floating* x, const _Plan* p, const _Tile* tl,
                      double* mean_out, double* m2_out) noexcept nogil:
    """Mean and M2 of each channel of a tile: mean_out[c - c0], m2_out[c - c0].

    Pass 1 gives a provisional mean, rounded to the input's type as the shift m; pass 2,
    served from cache, sums d = x - m and d^2, and mean = m + sum(d)/n,
    M2 = sum(d^2) - sum(d)^2/n exactly for any shift (the corrected two-pass of Chan,
    Golub & LeVeque 1983). A channel whose sums are not finite (overflow in float
    arithmetic, or inf/nan data) or underflowed is redone entirely in double, so no other
    channel's result depends on it.
    """
    cdef Py_ssize_t nc = tl.c1 - tl.c0, c
    cdef double count = <double>((tl.n1 - tl.n0) * (tl.l1 - tl.l0))
    cdef double acc[TILE_CHANNELS]
    cdef double dev[TILE_CHANNELS]
    cdef double sq[TILE_CHANNELS]
    cdef floating shift[TILE_CHANNELS]
    cdef _Mean mean_pass
    cdef _Var var_pass
    cdef double m
    _reduce_tile(&mean_pass, x, x, p, tl, shift, acc, acc)
    for c in range(nc):
        shift[c] = <floating>(acc[c] / count)
    _reduce_tile(&var_pass, x, x, p, tl, shift, dev, sq)
    for c in range(nc):
        m = shift[c]
        mean_out[c] = m + dev[c] / count
        m2_out[c] = sq[c] - dev[c] * dev[c] / count
        if _needs_exact(floating is float, mean_out[c], m2_out[c], sq[c], -1, count):
            _channel_exact(x, <const floating*>NULL, p, tl, tl.c0 + c, 0.0, &mean_out[c],
                           &m2_out[c])


cdef void _tile_dot(const floating* dy, const floating* x, const _Plan* p, const _Tile* tl,
                    const double* center, double* dy_out, double* dyx_out) noexcept nogil:
    """sum(dy) and sum(dy * (x - center)) of each channel of a tile: dy_out[c - c0],
    dyx_out[c - c0] (center[c - c0]).

    As in _tile_stats, products are formed and grouped in the input's type against the
    centre rounded to it, m, accumulated in double, and corrected for the rounding:
    sum(dy * (x - center)) = sum(dy * (x - m)) + (m - center) * sum(dy). A channel whose
    sums are not finite or underflowed is redone entirely in double.
    """
    cdef Py_ssize_t nc = tl.c1 - tl.c0, c
    cdef double count = <double>((tl.n1 - tl.n0) * (tl.l1 - tl.l0))
    cdef double sdy[TILE_CHANNELS]
    cdef double sdyx[TILE_CHANNELS]
    cdef floating cen[TILE_CHANNELS]
    cdef _Grad grad_pass
    for c in range(nc):
        cen[c] = <floating>center[c]
    _reduce_tile(&grad_pass, x, dy, p, tl, cen, sdy, sdyx)
    for c in range(nc):
        dy_out[c] = sdy[c]
        dyx_out[c] = sdyx[c] + (<double>cen[c] - center[c]) * sdy[c]
        if _needs_exact(floating is float, dy_out[c], dyx_out[c], -1, fabs(sdyx[c]), count):
            _channel_exact(x, dy, p, tl, tl.c0 + c, center[c], &dy_out[c], &dyx_out[c])


# One job over many items (tiles, or channels for SLAB): the serial/parallel choice is
# made here only. Items are independent and write disjoint outputs, so the results do
# not depend on the team size.

cdef enum JobKind:
    JOB_STATS            # item = tile: mean, M2 into the tile's slot row of part1/part2
    JOB_DOT              # item = tile: sum(dy), sum(dy * (x - center)) into part1/part2
    JOB_NORMALIZE        # item = tile: out = ((x - hi) - lo) * scale + shift (prm)
    JOB_GRAD_INPUT       # item = tile: grad_input from center, mean_dy, k, scale
    JOB_SLAB_FORWARD     # item = channel: statistics, then its output
    JOB_SLAB_BACKWARD    # item = channel: backward sums, then its grad_input
    JOB_RELU_MASK        # item = tile: dz only (a ReLU backward without sums)


cdef enum Activation:    # the activation fused after the normalisation (and residual add)
    ACT_NONE = 0
    ACT_RELU = 1


cdef struct _Job:
    JobKind kind
    const _Plan* p
    const void* x
    const void* dy
    void* out                    # output or grad_input (NULL: none)
    double* part1                # partial sums per slot (tiles), or per channel (slabs)
    double* part2
    double* part3                # JOB_SLAB_FORWARD: invstd
    const double* center
    const double* mean_dy
    const double* k
    const double* scale          # JOB_SLAB_*: invstd * weight (backward), weight (forward)
    const double* shift          # JOB_SLAB_FORWARD: bias
    const double* invstd         # JOB_SLAB_BACKWARD
    const void* prm              # JOB_NORMALIZE: 4 * C constants, input's type or double
    bint prm_double
    bint use_x                   # JOB_GRAD_INPUT, JOB_SLAB_BACKWARD: the training formula
    bint need_sums               # JOB_SLAB_BACKWARD
    double eps
    int act                      # ACT_NONE or ACT_RELU: the forward's activation
    const void* res              # the residual added before it (NULL: none)
    void* dz                     # backward with act: grad_output masked by the ReLU
    #   (grad_residual, or grad_input which is then updated in place); the mask's
    #   constants are prm / prm_double, the forward's own


cdef void _norm_map(const floating* x, const floating* r, floating* out, const _Plan* p,
                    const _Tile* tl, int act, const prm_t* k,
                    Py_ssize_t stride) noexcept nogil:
    """The forward's elementwise pass over a tile: _Norm, or with ACT_RELU _NormRelu, or
    _NormAddRelu with the residual r. k: the constants hi of the tile's first channel;
    lo, scale and shift follow at k + stride, k + 2 * stride, k + 3 * stride."""
    cdef _Norm norm
    cdef _NormRelu norm_relu
    cdef _NormAddRelu norm_add_relu
    if act == ACT_NONE:
        _map_tile(&norm, x, x, out, p, tl, k, k + stride, k + 2 * stride, k + 3 * stride)
    elif r == NULL:
        _map_tile(&norm_relu, x, x, out, p, tl, k, k + stride, k + 2 * stride,
                  k + 3 * stride)
    else:
        _map_tile(&norm_add_relu, x, r, out, p, tl, k, k + stride, k + 2 * stride,
                  k + 3 * stride)


cdef void _norm_job_tile(const floating* x, const _Job* j, const _Tile* tl,
                         floating* out) noexcept nogil:
    # _norm_map with the job's constants (prm: 4 * C, the input's type or double)
    cdef Py_ssize_t C = j.p.C
    if j.prm_double:
        _norm_map(x, <const floating*>j.res, out, j.p, tl, j.act,
                  <const double*>j.prm + tl.c0, C)
    else:
        _norm_map(x, <const floating*>j.res, out, j.p, tl, j.act,
                  <const floating*>j.prm + tl.c0, C)


cdef void _relu_dz(const floating* x, const _Job* j, const _Tile* tl) noexcept nogil:
    """dz = grad_output where the forward's output is > 0, else 0 (torch's relu backward),
    into j.dz over a tile, the forward's output recomputed by the forward's own expression
    and constants, so the mask is the forward's decision bit for bit. Without a residual
    in one pass (_NormReluMask); with one, the output is first written into dz
    (_NormAddRelu, needing x and the residual), then masks grad_output in place while the
    tile is in cache. No array beyond the outputs."""
    cdef floating* dz = <floating*>j.dz
    cdef const floating* dy = <const floating*>j.dy
    cdef _ReluGrad grad
    cdef _NormReluMask mask
    cdef Py_ssize_t C = j.p.C
    cdef const floating* kf = <const floating*>j.prm + tl.c0
    cdef const double* kd = <const double*>j.prm + tl.c0
    if j.res == NULL:
        if j.prm_double:
            _map_tile(&mask, x, dy, dz, j.p, tl, kd, kd + C, kd + 2 * C, kd + 3 * C)
        else:
            _map_tile(&mask, x, dy, dz, j.p, tl, kf, kf + C, kf + 2 * C, kf + 3 * C)
        return
    _norm_job_tile(x, j, tl, dz)
    _map_tile(&grad, dz, dy, dz, j.p, tl, <const double*>NULL, <const double*>NULL,
              <const double*>NULL, <const double*>NULL)


cdef void _slab_forward(const floating* x, const _Job* j, Py_ssize_t c) noexcept nogil:
    """Channel c: statistics (as a tile) then the output while the channel is cached."""
    cdef const _Plan* p = j.p
    cdef _Tile tl = _slab(p, c)
    cdef double count = <double>(p.N * p.L)
    cdef double m, m2, center, scale, shift
    cdef floating prm[4]
    cdef double prmd[4]
    cdef const floating* r = <const floating*>j.res
    _tile_stats(x, p, &tl, &m, &m2)
    j.part1[c] = m
    j.part2[c] = m2 / count
    j.part3[c] = 1.0 / sqrt(j.part2[c] + j.eps)
    center = m
    scale = j.part3[c] * j.scale[c]
    shift = j.shift[c]
    if _split_constants(1, &center, &scale, &shift, prm):
        _norm_map(x, r, <floating*>j.out, p, &tl, j.act, &prm[0], 1)
    else:
        _double_constants(1, &center, &scale, &shift, prmd)
        _norm_map(x, r, <floating*>j.out, p, &tl, j.act, &prmd[0], 1)


cdef void _slab_backward(const floating* x, const _Job* j, Py_ssize_t c) noexcept nogil:
    """Channel c: backward sums (as a tile), then its grad_input while it is cached."""
    cdef const _Plan* p = j.p
    cdef _Tile tl = _slab(p, c)
    cdef double count = <double>(p.N * p.L)
    cdef double sdy = 0, sdyx = 0, mean_dy, k
    cdef _GradX with_x
    cdef _GradDy dy_only
    cdef const floating* g = <const floating*>j.dy
    if j.act != ACT_NONE:  # the ReLU's mask first: dz, from the cached channel
        _relu_dz(x, j, &tl)
        g = <const floating*>j.dz
    if j.need_sums:
        _tile_dot(g, x, p, &tl, j.center + c, &sdy, &sdyx)
    j.part1[c] = sdy
    j.part2[c] = sdyx
    if j.out == NULL:
        return
    mean_dy = sdy / count
    k = sdyx * j.invstd[c] * j.invstd[c] / count
    if j.use_x:
        _map_tile(&with_x, x, g, <floating*>j.out, p, &tl, j.center + c, &mean_dy, &k,
                  j.scale + c)
    else:
        _map_tile(&dy_only, x, g, <floating*>j.out, p, &tl, <const double*>NULL,
                  <const double*>NULL, <const double*>NULL, j.scale + c)


cdef void _job_item(const floating* x, const _Job* j, Py_ssize_t i) noexcept nogil:
    cdef const _Plan* p = j.p
    cdef _Tile tl
    cdef Py_ssize_t C = p.C, off
    cdef _GradX with_x
    cdef _GradDy dy_only
    cdef const floating* g = <const floating*>j.dy
    if j.kind == JOB_SLAB_FORWARD:
        _slab_forward(x, j, i)
        return
    if j.kind == JOB_SLAB_BACKWARD:
        _slab_backward(x, j, i)
        return
    tl = _tile(p, i)
    off = tl.slot * C + tl.c0
    if j.kind == JOB_STATS:
        _tile_stats(x, p, &tl, j.part1 + off, j.part2 + off)
    elif j.kind == JOB_DOT or j.kind == JOB_RELU_MASK:
        if j.act != ACT_NONE:  # the ReLU's mask first, then the sums from the cached tile
            _relu_dz(x, j, &tl)
            g = <const floating*>j.dz
        if j.kind == JOB_DOT:
            _tile_dot(g, x, p, &tl, j.center + tl.c0, j.part1 + off, j.part2 + off)
    elif j.kind == JOB_NORMALIZE:
        _norm_job_tile(x, j, &tl, <floating*>j.out)
    elif j.use_x:
        _map_tile(&with_x, x, <const floating*>j.dy, <floating*>j.out, p, &tl,
                  j.center + tl.c0, j.mean_dy + tl.c0, j.k + tl.c0, j.scale + tl.c0)
    else:
        _map_tile(&dy_only, x, <const floating*>j.dy, <floating*>j.out, p, &tl,
                  <const double*>NULL, <const double*>NULL, <const double*>NULL,
                  j.scale + tl.c0)


cdef void _for_items(const floating* x, const _Job* j, Py_ssize_t n_items,
                     int n_threads) noexcept nogil:
    """Run job j on items 0..n_items-1: serially when one thread would run (entering an
    OpenMP region costs ~0.5 us even with if(false)), else with a static schedule (item
    order is memory order) on a team of at most n_items threads."""
    cdef int team = n_threads if n_threads < n_items else <int>n_items
    cdef Py_ssize_t i
    if team <= 1:
        for i in range(n_items):
            _job_item(x, j, i)
    else:
        for i in prange(n_items, schedule='static', num_threads=team):
            _job_item(x, j, i)


cdef inline void _job_relu(_Job* j, const _Job* src) noexcept nogil:
    # the fields of a fused activation (forward and backward), copied from src
    j.act = src.act
    j.res = src.res
    j.dz = src.dz
    j.prm = src.prm
    j.prm_double = src.prm_double


cdef inline void _job_init(_Job* j, JobKind kind, const _Plan* p) noexcept nogil:
    j.kind = kind
    j.p = p
    j.x = j.dy = j.prm = NULL
    j.out = NULL
    j.part1 = j.part2 = j.part3 = NULL
    j.center = j.mean_dy = j.k = j.scale = j.shift = j.invstd = NULL
    j.prm_double = j.use_x = j.need_sums = False
    j.eps = 0
    j.act = ACT_NONE
    j.res = NULL
    j.dz = NULL


# ---------------------------------------------------------------------------------------
# 4. Whole-array drivers (nogil). Each returns -1 when scratch memory cannot be allocated.

cdef double* _tile_sums(JobKind kind, const floating* x, const floating* dy, const _Plan* p,
                       int n_threads, const double* center,
                       const _Job* relu) noexcept nogil:
    """Run a per-tile reduction (JOB_STATS or JOB_DOT) over every tile; return its partial
    sums, two rows of n_slots x C doubles (slot-major; free() them), or NULL when they
    cannot be allocated. `relu` (JOB_DOT; NULL: none): a job whose act, res, dz, prm and
    prm_double mask dy first (_relu_dz), the sums then being those of dz."""
    cdef double* part = <double*> malloc(2 * p.n_slots * p.C * sizeof(double))
    cdef _Job j
    if part == NULL:
        return NULL
    _job_init(&j, kind, p)
    if relu != NULL:
        _job_relu(&j, relu)
    j.dy = dy
    j.center = center
    j.part1 = part
    j.part2 = part + p.n_slots * p.C
    _for_items(x, &j, p.n_tiles, n_threads)
    return part


cdef int _stats(const floating* x, const _Plan* p, int n_threads,
                double* mean, double* m2) noexcept nogil:
    """Per-channel mean and M2 = sum((x - mean)^2) over N and L (Chan's merge in tile order)."""
    cdef Py_ssize_t S = p.n_slots, C = p.C
    cdef double* part = _tile_sums(JOB_STATS, x, x, p, n_threads, NULL, NULL)
    cdef double* part_mean = part
    cdef double* part_m2 = part + S * C
    cdef Py_ssize_t s, c, l_len, n_len
    cdef double n_a, n_b, n_ab, w_b, w_ab, delta
    if part == NULL:
        return -1
    for c in range(C):
        mean[c] = part_mean[c]
        m2[c] = part_m2[c]
    # Slot s covers rows of block s // bl and positions of block s % bl; its count is the
    # same for every channel, so the merge weights are per slot and the loop over c vectorises.
    n_a = 0
    for s in range(S):
        n_len = min(p.tn, p.N - (s // p.bl) * p.tn)
        l_len = min(p.tl, p.L - (s % p.bl) * p.tl)
        n_b = <double>(n_len * l_len)
        n_ab = n_a + n_b
        if s > 0:
            w_b = n_b / n_ab
            w_ab = n_a * n_b / n_ab
            for c in range(C):
                delta = part_mean[s * C + c] - mean[c]
                if delta - delta != 0:
                    # A non-finite partial mean (inf/nan data): the plain sum propagates it
                    # like torch's sum does (inf stays inf, inf + -inf and nan give nan).
                    mean[c] = mean[c] + part_mean[s * C + c]
                else:
                    mean[c] = mean[c] + delta * w_b
                m2[c] = m2[c] + part_m2[s * C + c] + delta * delta * w_ab
        n_a = n_ab
    free(part)
    return 0


cdef int _normalize(const floating* x, floating* out, const _Plan* p, int n_threads,
                    const double* center, const double* scale, const double* shift,
                    int act, const floating* res) noexcept nogil:
    """out = (x - center) * scale + shift per channel, in the input's precision when the
    constants of every channel fit it (_split_constants), else in double; with act
    (ACT_RELU) relu(out), or relu(out + res) when the residual res is not NULL."""
    cdef Py_ssize_t C = p.C
    cdef floating* prm = <floating*> malloc(4 * C * sizeof(floating))
    cdef double* prmd = NULL
    cdef _Job j
    if prm == NULL:
        return -1
    _job_init(&j, JOB_NORMALIZE, p)
    j.out = out
    j.prm = prm
    j.act = act
    j.res = res
    if not _split_constants(C, center, scale, shift, prm):
        prmd = <double*> malloc(4 * C * sizeof(double))
        if prmd == NULL:
            free(prm)
            return -1
        _double_constants(C, center, scale, shift, prmd)
        j.prm = prmd
        j.prm_double = True
    _for_items(x, &j, p.n_tiles, n_threads)
    free(prm)
    free(prmd)
    return 0


cdef int _dot(const floating* dy, const floating* x, const _Plan* p, int n_threads,
              const double* center, double* sum_dy, double* sum_dyx,
              const _Job* relu) noexcept nogil:
    """Per-channel sum(dy) and sum(dy * (x - center)), partials added in tile order (of
    dz, written first, with a `relu` job: see _tile_sums)."""
    cdef Py_ssize_t S = p.n_slots, C = p.C
    cdef double* part = _tile_sums(JOB_DOT, x, dy, p, n_threads, center, relu)
    cdef double* part_dy = part
    cdef double* part_dyx = part + S * C
    cdef Py_ssize_t s, c
    if part == NULL:
        return -1
    for c in range(C):
        sum_dy[c] = 0
        sum_dyx[c] = 0
    for s in range(S):
        for c in range(C):
            sum_dy[c] += part_dy[s * C + c]
            sum_dyx[c] += part_dyx[s * C + c]
    free(part)
    return 0


cdef void _grad_input(const floating* dy, const floating* x, floating* dx, const _Plan* p,
                      int n_threads, const double* center, const double* mean_dy,
                      const double* k, const double* scale, bint use_x) noexcept nogil:
    """dx = (dy - mean_dy[c] - (x - center[c]) * k[c]) * scale[c]; dx = dy * scale[c] if
    not use_x (then center, mean_dy and k may be NULL)."""
    cdef _Job j
    _job_init(&j, JOB_GRAD_INPUT, p)
    j.dy = dy
    j.out = dx
    j.center = center
    j.mean_dy = mean_dy
    j.k = k
    j.scale = scale
    j.use_x = use_x
    _for_items(x, &j, p.n_tiles, n_threads)


cdef double* _alloc_channels(Py_ssize_t C, int k) except NULL:
    cdef double* buf = <double*> malloc((C * k if C > 0 else 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    return buf


cdef inline bint _empty(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    return N == 0 or C == 0 or L == 0


# ---------------------------------------------------------------------------------------
# Python-visible kernels. Shapes: x, out, grad_* are (N, C, L); per-channel arrays (C,).
# Optional per-channel parameters (weight, bias) may be None.

# The decomposed surface: the passes of a forward and a backward as separate calls, for
# SyncBatchNorm (cybn.functional runs them around its reduction across processes). Typed
# memoryviews: these are called once per step on whole batches, not in small-call loops.

cdef _sums(JobKind kind, const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
           const double[::1] center, double[::1] out1, double[::1] out2, int n_threads):
    # the two reductions: zeros for an empty array, else _stats or _dot over the tiles
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef _Plan p
    cdef int rc
    if _empty(N, C, L):
        for c in range(C):
            out1[c] = 0
            out2[c] = 0
        return
    p = _make_plan(N, C, L, sizeof(floating), False)
    with nogil:
        if kind == JOB_STATS:
            rc = _stats(&x[0, 0, 0], &p, n_threads, &out1[0], &out2[0])
        else:
            rc = _dot(&dy[0, 0, 0], &x[0, 0, 0], &p, n_threads, &center[0], &out1[0],
                      &out2[0], NULL)
    if rc != 0:
        raise MemoryError()


cdef _elementwise(JobKind kind, const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                  const double[::1] center, const double[::1] mean_dy, const double[::1] k,
                  const double[::1] scale, const double[::1] shift, floating[:, :, ::1] out,
                  int n_threads):
    # the two elementwise passes: _normalize (center, scale, shift) or _grad_input (center,
    # mean_dy, k, scale; k None: dy * scale); the arrays a pass does not use are not read
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef bint use_x = k is not None
    cdef _Plan p
    cdef int rc = 0
    if _empty(N, C, L):
        return
    p = _make_plan(N, C, L, sizeof(floating), False)
    with nogil:
        if kind == JOB_NORMALIZE:
            rc = _normalize(&x[0, 0, 0], &out[0, 0, 0], &p, n_threads, &center[0], &scale[0],
                            &shift[0], ACT_NONE, NULL)
        else:
            _grad_input(&dy[0, 0, 0], &x[0, 0, 0], &out[0, 0, 0], &p, n_threads, &center[0],
                        &mean_dy[0] if use_x else NULL, &k[0] if use_x else NULL, &scale[0],
                        use_x)
    if rc != 0:
        raise MemoryError()


def batch_stats(const floating[:, :, ::1] x,   # IN  (N, C, L)
                double[::1] mean,              # OUT (C,) batch mean
                double[::1] m2,                # OUT (C,) sum of squared deviations
                int n_threads):
    """Per-channel mean and M2 = sum((x - mean)^2) over N and L; zeros when N * L == 0."""
    _sums(JOB_STATS, x, x, mean, mean, m2, n_threads)  # (no centre: mean is not read)


def normalize(const floating[:, :, ::1] x,     # IN  (N, C, L)
              const double[::1] center,        # IN  (C,)
              const double[::1] scale,         # IN  (C,)
              const double[::1] shift,         # IN  (C,)
              floating[:, :, ::1] out,         # OUT (N, C, L)
              int n_threads):
    """out = (x - center) * scale + shift, per channel (see _normalize for the precision)."""
    _elementwise(JOB_NORMALIZE, x, x, center, center, center, scale, shift, out, n_threads)


cdef void _affine(Py_ssize_t C, const double* invstd, const param_t* weight,
                  const param_t* bias, double* scale, double* shift) noexcept nogil:
    # scale = invstd * weight, shift = bias (weight 1 and bias 0 when absent: NULL)
    cdef Py_ssize_t c
    for c in range(C):
        scale[c] = invstd[c] * weight[c] if weight != NULL else invstd[c]
        shift[c] = bias[c] if bias != NULL else 0.0


cdef void _update(Py_ssize_t C, param_t* running_mean, param_t* running_var,
                  const double* batch_mean, const double* batch_var, double var_scale,
                  double factor) noexcept nogil:
    # running = (1 - factor) * running + factor * batch, in double
    cdef Py_ssize_t c
    for c in range(C):
        running_mean[c] = <param_t>((1.0 - factor) * running_mean[c] + factor * batch_mean[c])
        running_var[c] = <param_t>((1.0 - factor) * running_var[c]
                                   + factor * (batch_var[c] * var_scale))


# ---------------------------------------------------------------------------------------
# Arguments of the hot entry points (the four that cybn.functional calls on every forward
# and backward). Typed memoryview arguments cost about 0.3 us each to acquire (measured:
# a def with eight of them and an empty body takes 2.5 us per call, the same with plain
# buffer requests 0.5 us), which was most of a small call's kernel time; these take the
# arrays as objects and request C-contiguous buffers directly. The fused types are fixed
# by two scalar markers (`x_type`, `p_type`: pass 0.0), so that each specialisation is
# reached through __signatures__ without run-time dispatch. The checks below are what
# keeps a wrong argument from touching memory it does not own (dtype, dimensions,
# shapes, writability); everything else is cybn.functional's job.

cdef enum:
    MAX_ARGS = 11


cdef struct _Args:
    Py_buffer b[MAX_ARGS]
    bint held[MAX_ARGS]          # b[i] holds an acquired buffer (else: None, or failed)
    int n                        # arguments seen so far


cdef inline void _release(_Args* a) noexcept:
    cdef int i
    for i in range(a.n):
        if a.held[i]:
            PyBuffer_Release(&a.b[i])
            a.held[i] = False
    a.n = 0


cdef void* _arg(_Args* a, object arr, const char* name, int ndim, Py_ssize_t itemsize,
                bint writable, bint optional) except? NULL:
    """Acquire `arr` as the next buffer: C-contiguous, `ndim` dimensions, native float of
    `itemsize` bytes; its data pointer, or NULL for None when `optional`."""
    cdef Py_buffer* b = &a.b[a.n]
    cdef const char* fmt
    a.held[a.n] = False
    a.n += 1
    if arr is None:
        if not optional:
            raise TypeError(f"kernel argument {name.decode()} must be an array, got None")
        return NULL
    PyObject_GetBuffer(arr, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                       | (PyBUF_WRITABLE if writable else 0))
    a.held[a.n - 1] = True
    fmt = b.format
    if fmt[0] == c'@' or fmt[0] == c'=':
        fmt += 1
    if (b.ndim != ndim or b.itemsize != itemsize or fmt[1] != 0
            or fmt[0] != (c'd' if itemsize == 8 else c'f')):
        raise ValueError(f"kernel argument {name.decode()} must be a {ndim}-D native "
                         f"float{itemsize * 8} array, got a {b.ndim}-D buffer of format "
                         f"{b.format.decode()!r}")
    return b.buf


cdef int _shape(const _Args* a, int i, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2,
                const char* name) except -1:
    """Check that buffer i (if acquired) has the given shape (d1, d2 < 0: fewer dims)."""
    cdef const Py_buffer* b = &a.b[i]
    if not a.held[i]:
        return 0
    if (b.shape[0] != d0 or (b.ndim > 1 and b.shape[1] != d1)
            or (b.ndim > 2 and b.shape[2] != d2)):
        raise ValueError(f"kernel argument {name.decode()} has the wrong shape")
    return 0


cdef inline Py_ssize_t _dim(const _Args* a, int i, int k) noexcept:
    return a.b[i].shape[k]


cdef const void* _residual_arg(_Args* a, residual, int activation, Py_ssize_t N,
                               Py_ssize_t C, Py_ssize_t L, Py_ssize_t xsize) except? NULL:
    """Acquire the residual (None: NULL) as the next buffer, shaped like x; it needs an
    activation (the only operation that adds it)."""
    cdef const void* pr
    if activation != ACT_NONE and activation != ACT_RELU:
        raise ValueError(f"kernel argument activation must be 0 or 1, got {activation}")
    pr = _arg(a, residual, b"residual", 3, xsize, False, True)
    if pr != NULL and activation == ACT_NONE:
        raise ValueError("kernel argument residual needs an activation")
    _shape(a, a.n - 1, N, C, L, b"residual")
    return pr


cdef int _forward_args(_Args* a, x, weight, bias, running_mean, running_var, out, stats,
                       Py_ssize_t xsize, Py_ssize_t psize, bint training,
                       void** ptrs) except -1:
    """The arrays both forward kernels take, acquired as buffers 0-6 of `a` into ptrs:
    x, weight, bias, running_mean, running_var, out, stats. In training the running
    statistics are optional (both or neither: running_var is required when running_mean is
    given) and updated, so writable, and stats (3, C) is required; in evaluation the
    running statistics are read and stats (2, C) is optional."""
    cdef int i
    ptrs[0] = _arg(a, x, b"x", 3, xsize, False, False)
    ptrs[1] = _arg(a, weight, b"weight", 1, psize, False, True)
    ptrs[2] = _arg(a, bias, b"bias", 1, psize, False, True)
    ptrs[3] = _arg(a, running_mean, b"running_mean", 1, psize, training, training)
    ptrs[4] = _arg(a, running_var, b"running_var", 1, psize, training,
                   training and running_mean is None)
    ptrs[5] = _arg(a, out, b"out", 3, xsize, True, False)
    ptrs[6] = _arg(a, stats, b"stats", 2, sizeof(double), True, not training)
    for i in range(1, 5):
        _shape(a, i, _dim(a, 0, 1), -1, -1, b"per-channel")
    _shape(a, 5, _dim(a, 0, 0), _dim(a, 0, 1), _dim(a, 0, 2), b"out")
    _shape(a, 6, 3 if training else 2, _dim(a, 0, 1), -1, b"stats")
    return 0


def forward_training(floating x_type, param_t p_type,
                     x,                                # IN  (N, C, L)
                     weight,                           # IN  (C,) or None
                     bias,                             # IN  (C,) or None
                     running_mean,                     # IN/OUT (C,) or None: updated
                     running_var,                      # IN/OUT (C,) or None: updated
                     double eps,
                     double factor,                    # running-stat update weight
                     double var_scale,                 # n/(n-1) (unbiased) or 1 (biased)
                     out,                              # OUT (N, C, L)
                     stats,                            # OUT (3, C): mean, invstd, biased var
                     bint check_finite,
                     int n_threads,
                     int activation=ACT_NONE,          # ACT_RELU (1): relu(y) (+ residual)
                     residual=None):                   # IN  (N, C, L) or None: relu(y + r)
    """Training forward with batch statistics (Ioffe & Szegedy 2015, PyTorch semantics).

    ``x``, ``out``: float arrays of the ``x_type`` specialisation; per-channel arrays of
    the ``p_type`` one; ``stats`` float64. ``stats`` receives the batch mean,
    ``1 / sqrt(var + eps)`` and the biased variance.
    When running statistics are given they are updated last, after everything that can
    fail, as ``(1 - factor) * running + factor * batch`` with ``var * var_scale``.
    With ``check_finite``, a batch whose statistics are not finite in some channel (NaN or
    Inf in the data) stops after the statistics pass: ``out`` and the running statistics
    are left untouched and the number of such channels is returned (0 otherwise).
    With ``activation`` 1 the output is ``relu(y)``, or ``relu(y + residual)`` (y rounded
    to the input's type, the sum formed in it, as torch's ``relu(bn(x) + r)``); the
    constants are those of the input's type for every channel or for none (a slab whose
    channel needs double ones has the whole output redone in double), so that the backward
    can recompute the same output.
    Requires N * L >= 1.
    """
    cdef _Args a
    cdef Py_ssize_t N, C, L, c
    cdef Py_ssize_t bad = 0
    cdef const floating* px
    cdef const floating* pr = NULL
    cdef floating* po
    cdef const param_t* pw
    cdef const param_t* pb
    cdef param_t* prm
    cdef param_t* prv
    cdef double* mean
    cdef double* invstd
    cdef double* var
    cdef double* buf = NULL
    cdef double count
    cdef _Plan p
    cdef _Job job
    cdef void* ptrs[7]
    cdef int rc = 0
    a.n = 0
    try:
        _forward_args(&a, x, weight, bias, running_mean, running_var, out, stats,
                      sizeof(floating), sizeof(param_t), True, ptrs)
        px, po, mean = <const floating*>ptrs[0], <floating*>ptrs[5], <double*>ptrs[6]
        pw, pb = <const param_t*>ptrs[1], <const param_t*>ptrs[2]
        prm, prv = <param_t*>ptrs[3], <param_t*>ptrs[4]
        N, C, L = _dim(&a, 0, 0), _dim(&a, 0, 1), _dim(&a, 0, 2)
        pr = <const floating*>_residual_arg(&a, residual, activation, N, C, L,
                                            sizeof(floating))
        if _empty(N, C, L):
            return 0
        invstd = mean + C
        var = mean + 2 * C
        count = <double>(N * L)
        p = _make_plan(N, C, L, sizeof(floating), not check_finite)
        buf = _alloc_channels(C, 8)  # weight, bias | scale, shift | 4 C constants (relu)
        with nogil:
            if p.schedule == SLAB:
                for c in range(C):
                    buf[c] = pw[c] if pw != NULL else 1.0
                    buf[C + c] = pb[c] if pb != NULL else 0.0
                _job_init(&job, JOB_SLAB_FORWARD, &p)
                job.out = po
                job.part1 = mean
                job.part2 = var
                job.part3 = invstd
                job.scale = buf
                job.shift = buf + C
                job.eps = eps
                job.act = activation
                job.res = pr
                _for_items(px, &job, C, n_threads)
                if activation != ACT_NONE:
                    # slabs choose constants per channel; the fused output uses the input's
                    # type for all channels or for none (see above): redo it in double
                    # when some channel needed double ones (rare: scale or shift overflow)
                    _affine(C, invstd, pw, pb, buf + 2 * C, buf + 3 * C)
                    if not _split_constants(C, mean, buf + 2 * C, buf + 3 * C,
                                            <floating*>(buf + 4 * C)):
                        rc = _normalize(px, po, &p, n_threads, mean, buf + 2 * C,
                                        buf + 3 * C, activation, pr)
                if rc == 0 and prm != NULL:
                    _update(C, prm, prv, mean, var, var_scale, factor)
            else:
                rc = _stats(px, &p, n_threads, mean, var)
                if rc == 0:
                    for c in range(C):
                        var[c] = var[c] / count
                        invstd[c] = 1.0 / sqrt(var[c] + eps)
                        if check_finite and not (_finite(mean[c]) and _finite(var[c])):
                            bad += 1
                    if bad == 0:
                        _affine(C, invstd, pw, pb, buf, buf + C)
                        rc = _normalize(px, po, &p, n_threads, mean, buf, buf + C,
                                        activation, pr)
                        if rc == 0 and prm != NULL:
                            _update(C, prm, prv, mean, var, var_scale, factor)
    finally:
        free(buf)
        _release(&a)
    if rc != 0:
        raise MemoryError()
    return bad


def forward_inference(floating x_type, param_t p_type,
                      x,                               # IN  (N, C, L)
                      weight,                          # IN  (C,) or None
                      bias,                            # IN  (C,) or None
                      running_mean,                    # IN  (C,)
                      running_var,                     # IN  (C,)
                      double eps,
                      out,                             # OUT (N, C, L)
                      stats,                           # OUT (2, C) or None: center, invstd
                      int n_threads,
                      int activation=ACT_NONE,         # as forward_training
                      residual=None):                  # IN  (N, C, L) or None
    """Inference forward: (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    Array types as :func:`forward_training`. ``stats``, when given, receives the running
    mean and ``1 / sqrt(running_var + eps)`` in double, the constants of the inference
    backward. ``activation``, ``residual``: as :func:`forward_training`.
    """
    cdef _Args a
    cdef Py_ssize_t N, C, L, c
    cdef const floating* px
    cdef const floating* pr = NULL
    cdef floating* po
    cdef const param_t* pw
    cdef const param_t* pb
    cdef const param_t* prm
    cdef const param_t* prv
    cdef double* pst
    cdef double* buf = NULL
    cdef _Plan p
    cdef void* ptrs[7]
    cdef int rc = 0
    a.n = 0
    try:
        _forward_args(&a, x, weight, bias, running_mean, running_var, out, stats,
                      sizeof(floating), sizeof(param_t), False, ptrs)
        px, po, pst = <const floating*>ptrs[0], <floating*>ptrs[5], <double*>ptrs[6]
        pw, pb = <const param_t*>ptrs[1], <const param_t*>ptrs[2]
        prm, prv = <const param_t*>ptrs[3], <const param_t*>ptrs[4]
        N, C, L = _dim(&a, 0, 0), _dim(&a, 0, 1), _dim(&a, 0, 2)
        pr = <const floating*>_residual_arg(&a, residual, activation, N, C, L,
                                            sizeof(floating))
        if C == 0:
            return
        buf = _alloc_channels(C, 4)
        with nogil:
            for c in range(C):
                buf[c] = prm[c]
                buf[C + c] = 1.0 / sqrt(<double>prv[c] + eps)
            if pst != NULL:
                for c in range(C):
                    pst[c] = buf[c]
                    pst[C + c] = buf[C + c]
            if not _empty(N, C, L):
                p = _make_plan(N, C, L, sizeof(floating), False)
                _affine(C, buf + C, pw, pb, buf + 2 * C, buf + 3 * C)
                rc = _normalize(px, po, &p, n_threads, buf, buf + 2 * C, buf + 3 * C,
                                activation, pr)
    finally:
        free(buf)
        _release(&a)
    if rc != 0:
        raise MemoryError()


def backward_reduce(const floating[:, :, ::1] grad_output,  # IN  (N, C, L)
                    const floating[:, :, ::1] x,            # IN  (N, C, L)
                    const double[::1] center,               # IN  (C,)
                    double[::1] sum_dy,                     # OUT (C,) sum(dy)
                    double[::1] sum_dy_xmu,                 # OUT (C,) sum(dy * (x - center))
                    int n_threads):
    """Per-channel sum(dy) and sum(dy * (x - center)) over N and L; zeros when empty."""
    _sums(JOB_DOT, x, grad_output, center, sum_dy, sum_dy_xmu, n_threads)


def backward_input(const floating[:, :, ::1] grad_output,  # IN  (N, C, L)
                   const floating[:, :, ::1] x,            # IN  (N, C, L) (unused if k is None)
                   const double[::1] center,               # IN  (C,)
                   const double[::1] mean_dy,              # IN  (C,) or None (with k None)
                   const double[::1] k,                    # IN  (C,) or None
                   const double[::1] scale,                # IN  (C,)
                   floating[:, :, ::1] grad_input,         # OUT (N, C, L)
                   int n_threads):
    """grad_input = (dy - mean_dy - (x - center) * k) * scale; = dy * scale when k is None."""
    _elementwise(JOB_GRAD_INPUT, x, grad_output, center, mean_dy, k, scale, scale, grad_input,
                 n_threads)


cdef int _backward(const floating* grad_output, const floating* x, Py_ssize_t N,
                   Py_ssize_t C, Py_ssize_t L, const param_t* weight, const double* center,
                   const double* invstd, bint training, floating* grad_input,
                   param_t* grad_weight, param_t* grad_bias, int n_threads, int act,
                   const param_t* bias, const floating* res,
                   floating* grad_residual) noexcept nogil:
    """The backward of both entry points; NULL for an absent weight or output.

    With act (ACT_RELU), grad_output is first masked by the forward's ReLU (recomputed
    from x, res and the forward's constants, formed here as the forward formed them from
    center, invstd, weight and bias) into dz = grad_residual, or grad_input when there is
    no residual (one of them is not NULL), tile by tile before the sums that read it;
    the batch-norm backward then runs on dz, writing grad_input in place of it."""
    cdef double count = <double>(N * L)
    cdef bint need_sums = training or grad_weight != NULL or grad_bias != NULL
    cdef double* buf
    cdef _Plan p
    cdef _Job job
    cdef _Job relu
    cdef Py_ssize_t c
    cdef int rc = 0
    cdef const floating* dy = grad_output
    if C == 0:
        return 0
    buf = <double*> malloc(11 * C * sizeof(double))
    if buf == NULL:
        return -1
    # buf: [sum_dy | sum_dy_xmu | scale | mean_dy | k | relu: scale, shift | 4 C constants]
    for c in range(2 * C):
        buf[c] = 0
    _job_init(&relu, JOB_RELU_MASK, &p)
    if act != ACT_NONE:
        relu.act = act
        relu.res = res
        relu.dz = grad_residual if grad_residual != NULL else grad_input
        relu.dy = grad_output
        relu.prm = buf + 7 * C
        _affine(C, invstd, weight, bias, buf + 5 * C, buf + 6 * C)
        if not _split_constants(C, center, buf + 5 * C, buf + 6 * C, <floating*>relu.prm):
            _double_constants(C, center, buf + 5 * C, buf + 6 * C, buf + 7 * C)
            relu.prm_double = True
        dy = <const floating*>relu.dz
    if not _empty(N, C, L):
        p = _make_plan(N, C, L, sizeof(floating), True)
        for c in range(C):
            buf[2 * C + c] = invstd[c] * weight[c] if weight != NULL else invstd[c]
        if p.schedule == SLAB:
            _job_init(&job, JOB_SLAB_BACKWARD, &p)
            _job_relu(&job, &relu)
            job.dy = grad_output
            job.out = grad_input
            job.part1 = buf
            job.part2 = buf + C
            job.center = center
            job.invstd = invstd
            job.scale = buf + 2 * C
            job.use_x = training
            job.need_sums = need_sums
            _for_items(x, &job, C, n_threads)
        else:
            if need_sums:
                rc = _dot(grad_output, x, &p, n_threads, center, buf, buf + C,
                          &relu if act != ACT_NONE else NULL)
            elif act != ACT_NONE:
                _for_items(x, &relu, p.n_tiles, n_threads)
            if rc == 0 and grad_input != NULL:
                for c in range(C):
                    buf[3 * C + c] = buf[c] / count
                    buf[4 * C + c] = buf[C + c] * invstd[c] * invstd[c] / count
                _grad_input(dy, x, grad_input, &p, n_threads, center, buf + 3 * C,
                            buf + 4 * C, buf + 2 * C, training)
    if rc == 0:
        for c in range(C):
            if grad_weight != NULL:
                grad_weight[c] = <param_t>(buf[C + c] * invstd[c])
            if grad_bias != NULL:
                grad_bias[c] = <param_t>buf[c]
    free(buf)
    return rc


def backward_training(floating x_type, param_t p_type,
                      grad_output,                            # IN  (N, C, L)
                      x,                                      # IN  (N, C, L)
                      weight,                                 # IN  (C,) or None
                      save_mean,                              # IN  (C,) float64
                      save_invstd,                            # IN  (C,) float64
                      grad_input,                             # OUT (N, C, L) or None
                      grad_weight,                            # OUT (C,) or None
                      grad_bias,                              # OUT (C,) or None
                      int n_threads,
                      int activation=ACT_NONE,                # the forward's
                      bias=None,                              # IN  (C,) or None (the forward's)
                      residual=None,                          # IN  (N, C, L) or None
                      grad_residual=None):                    # OUT (N, C, L) or None
    """Backward through batch statistics (PyTorch's native_batch_norm_backward, train=True).

    Array types as :func:`forward_training`. With x_hat = (x - mean) * invstd and sums
    over N and L: grad_bias = sum(dy), grad_weight = sum(dy * x_hat),
    grad_input = (dy - sum(dy)/n - (x - mean) * sum(dy * (x - mean)) * invstd^2 / n) * invstd * w.
    With ``activation`` 1 (the forward's ReLU, with its ``bias`` and ``residual``), dy is
    first replaced by dz = dy where the forward's output (recomputed bit for bit) is > 0,
    else 0; dz is written to ``grad_residual`` when a residual was added, and grad_input
    is then required when there is none (it holds dz until it is overwritten).
    """
    _backward_def(x_type, p_type, grad_output, x, weight, save_mean, save_invstd, True,
                  grad_input, grad_weight, grad_bias, n_threads, activation, bias, residual,
                  grad_residual)


def backward_inference(floating x_type, param_t p_type,
                       grad_output,                            # IN  (N, C, L)
                       x,                                      # IN  (N, C, L)
                       weight,                                 # IN  (C,) or None
                       center,                                 # IN  (C,) running mean
                       invstd,                                 # IN  (C,) 1/sqrt(rv + eps)
                       grad_input,                             # OUT (N, C, L) or None
                       grad_weight,                            # OUT (C,) or None
                       grad_bias,                              # OUT (C,) or None
                       int n_threads,
                       int activation=ACT_NONE,                # as backward_training
                       bias=None,                              # IN  (C,) or None
                       residual=None,                          # IN  (N, C, L) or None
                       grad_residual=None):                    # OUT (N, C, L) or None
    """Backward with the running statistics as constants (eval mode with buffers).

    With center = running_mean and invstd = 1 / sqrt(running_var + eps) (as written by
    forward_inference): grad_input = dy * w * invstd,
    grad_weight = sum(dy * (x - center) * invstd), grad_bias = sum(dy).
    ``activation``, ``bias``, ``residual``, ``grad_residual``: as backward_training.
    """
    _backward_def(x_type, p_type, grad_output, x, weight, center, invstd, False, grad_input,
                  grad_weight, grad_bias, n_threads, activation, bias, residual,
                  grad_residual)


cdef _backward_def(floating x_type, param_t p_type, grad_output, x, weight, center, invstd,
                   bint training, grad_input, grad_weight, grad_bias, int n_threads,
                   int activation, bias, residual, grad_residual):
    cdef _Args a
    cdef Py_ssize_t N, C, L, i
    cdef const floating* pdy
    cdef const floating* px
    cdef floating* pgi
    cdef const param_t* pw
    cdef param_t* pgw
    cdef param_t* pgb
    cdef const double* pc
    cdef const double* ps
    cdef const param_t* pb
    cdef const floating* pr
    cdef floating* pgr
    cdef int rc = 0
    a.n = 0
    try:
        px = <const floating*>_arg(&a, x, b"x", 3, sizeof(floating), False, False)
        N, C, L = _dim(&a, 0, 0), _dim(&a, 0, 1), _dim(&a, 0, 2)
        pdy = <const floating*>_arg(&a, grad_output, b"grad_output", 3, sizeof(floating),
                                    False, False)
        pgi = <floating*>_arg(&a, grad_input, b"grad_input", 3, sizeof(floating), True, True)
        pw = <const param_t*>_arg(&a, weight, b"weight", 1, sizeof(param_t), False, True)
        pgw = <param_t*>_arg(&a, grad_weight, b"grad_weight", 1, sizeof(param_t), True, True)
        pgb = <param_t*>_arg(&a, grad_bias, b"grad_bias", 1, sizeof(param_t), True, True)
        pc = <const double*>_arg(&a, center, b"center", 1, sizeof(double), False, False)
        ps = <const double*>_arg(&a, invstd, b"invstd", 1, sizeof(double), False, False)
        _shape(&a, 1, N, C, L, b"grad_output")
        _shape(&a, 2, N, C, L, b"grad_input")
        for i in range(3, 8):
            _shape(&a, i, C, -1, -1, b"per-channel")
        pr = <const floating*>_residual_arg(&a, residual, activation, N, C, L,
                                            sizeof(floating))
        pb = <const param_t*>_arg(&a, bias, b"bias", 1, sizeof(param_t), False, True)
        _shape(&a, 9, C, -1, -1, b"per-channel")
        pgr = <floating*>_arg(&a, grad_residual, b"grad_residual", 3, sizeof(floating), True,
                              True)
        _shape(&a, 10, N, C, L, b"grad_residual")
        if (pr == NULL) != (pgr == NULL):
            raise ValueError("kernel arguments residual and grad_residual go together")
        if activation != ACT_NONE and pgi == NULL and pgr == NULL:
            raise ValueError("kernel argument grad_input is required with an activation "
                             "and no residual")
        if C == 0:
            return
        with nogil:
            rc = _backward(pdy, px, N, C, L, pw, pc, ps, training, pgi, pgw, pgb, n_threads,
                           activation, pb, pr, pgr)
    finally:
        _release(&a)
    if rc != 0:
        raise MemoryError()


def update_running_stats(param_t[::1] running_mean,     # IN/OUT (C,)
                         param_t[::1] running_var,      # IN/OUT (C,)
                         const double[::1] batch_mean,  # IN (C,)
                         const double[::1] batch_var,   # IN (C,) biased variance
                         double var_scale,
                         double factor):
    """running = (1 - factor) * running + factor * batch, evaluated in double.

    The variance entering the update is ``batch_var * var_scale``: n / (n - 1) gives
    PyTorch's unbiased update (Bessel's correction), 1 the biased one of cs231n/Keras.
    """
    if running_mean.shape[0] == 0:
        return
    with nogil:
        _update(running_mean.shape[0], &running_mean[0], &running_var[0], &batch_mean[0],
                &batch_var[0], var_scale, factor)
