# Batch-normalization kernels: arithmetic only, no validation. Included by _kernels.pyx
# (baseline instruction set) and _kernels_avx2.pyx (built with AVX2 on x86-64); see there.
#
# Every array arrives as a C-contiguous (N, C, L) view; statistics are taken over N and L
# for each channel c. 2-D (N, C) input and channels-last data arrive with L == 1, so the
# channel axis is the contiguous one; (N, C, L) input with L > 1 has contiguous runs of one
# channel. One tiling serves both: the array is cut into tiles of rows x channels x
# positions (`_Plan`), and a tile is walked either as rows of "columns" vectorised across
# its channels and positions (L < COLUMNS_MAX_L, 2-D input included; per-column sums are
# folded into channels at the end of the tile) or as per-channel contiguous runs (longer
# L). The callers in cybn.functional own shapes, dtypes, allocation and the thread count;
# calling these with unchecked arguments is undefined behaviour.
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

# Elements per tile: 64 Ki elements is 256 KiB of float32 or 512 KiB of float64, small
# enough for a tile's second pass to be served from L2.
cdef enum:
    TILE_ELEMS = 65536
    # Channels per tile; also the size of the per-tile stack accumulators.
    TILE_CHANNELS = 1024
    # (N, C, L) input whose channel slab (N * L elements) is at most this many bytes, with
    # at least SLAB_MIN_CHANNELS channels, is processed one channel at a time: statistics
    # and the output pass (or the backward sums and grad_input) run while the slab is in
    # L2, so the input is read from memory once instead of twice.
    SLAB_BYTES = 1048576
    SLAB_MIN_CHANNELS = 8
    # ... and only when its runs are long: a slab of short runs strided by C * L touches a
    # new page per run, which measured slower than the tiles' contiguous blocks.
    SLAB_MIN_RUN_BYTES = 32768
    # Accumulators per contiguous-run reduction (_lanes_total sums exactly this many), and
    # how many values are combined in the input's type before they are added in double.
    LANES = 16
    GROUP = 4
    # Channels of a tile of runs whose lane accumulators are kept at once (_group_sum).
    CHANNEL_GROUP = 16
    # Runs shorter than this (L < COLUMNS_MAX_L, 2-D input included) are not walked run by
    # run: a tile row (its channels x all L positions, contiguous) is one vector of
    # "columns" with per-column accumulators, folded into channels at the end of the
    # tile. Such tiles hold at most TILE_CHANNELS columns (tc * L <= TILE_CHANNELS).
    COLUMNS_MAX_L = 64


cdef struct _Plan:
    Py_ssize_t N, C, L
    Py_ssize_t tn, tc, tl        # tile extent along N, C, L
    Py_ssize_t bn, bc, bl        # number of tiles along N, C, L
    Py_ssize_t n_tiles
    Py_ssize_t n_slots           # bn * bl: tiles that hold partial sums for one channel
    bint cols                    # L < COLUMNS_MAX_L: tiles are walked as rows of columns


# Below this mean square per element, float32 squares and products lose precision to
# underflow (FLT_MIN is 1.2e-38): such channels are summed in double instead.
cdef double _TINY = 1e-30


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef _Plan _make_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    cdef _Plan p
    p.N = N
    p.C = C
    p.L = L
    p.tl = L if L < TILE_ELEMS else TILE_ELEMS
    p.cols = L < COLUMNS_MAX_L
    if p.cols:
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


cdef inline int _slab_team(const _Plan* p, int n_threads) noexcept nogil:
    return n_threads if n_threads < p.C else <int>p.C


cdef inline int _team(const _Plan* p, int n_threads) noexcept nogil:
    # never more threads than tiles: a thread without a tile only costs a wake-up, and an
    # absurd request (n_threads=100000) must not ask the OpenMP runtime for that many
    return n_threads if n_threads < p.n_tiles else <int>p.n_tiles


# ---------------------------------------------------------------------------------------
# Contiguous runs (L > 1). LANES independent double accumulators, updated by an
# elementwise loop over the lanes, let the compiler vectorise a reduction without
# -ffast-math (gcc does so only for one accumulator array per loop, hence one sweep per
# sum). Deviations, squares and products are formed, and combined GROUP at a time, in the
# input's type (four float32 per SSE vector instead of two doubles); every such group is
# then accumulated in double, in a fixed order (deterministic for every thread count).
# A channel's lanes live across all its runs in a tile and are totalled once per tile
# (_group_sum and friends): with runs of a few hundred elements, totalling per run cost
# as much as the sums. The rows path of _tile_stats/_tile_dot combines GROUP rows the same
# way.

cdef inline double _lanes_total(const double* a) noexcept nogil:
    # a fixed pairwise order over the LANES (= 16) accumulators
    return ((((a[0] + a[8]) + (a[4] + a[12])) + ((a[2] + a[10]) + (a[6] + a[14])))
            + (((a[1] + a[9]) + (a[5] + a[13])) + ((a[3] + a[11]) + (a[7] + a[15]))))


cdef inline void _lanes_zero(double* a) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(LANES):
        a[j] = 0


cdef inline void _acc_dev(const floating* x, Py_ssize_t n, floating m, bint square,
                          double* total, double* tail) noexcept nogil:
    """Add sum(x - m), or sum((x - m)^2) when `square`, over a contiguous run of n elements
    to the LANES accumulators `total`, the last n % LANES elements to `tail`."""
    cdef double t[LANES]  # a local copy the compiler keeps in registers
    cdef const floating* q
    cdef floating d0, d1, d2, d3
    cdef double d
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        t[j] = total[j]
    # Blocks of GROUP * LANES elements: lane j pairs its GROUP values in the input's type,
    # then adds the result to its double accumulator.
    if square:
        while n - i >= GROUP * LANES:
            q = x + i
            for j in range(LANES):
                d0 = q[j] - m
                d1 = q[j + LANES] - m
                d2 = q[j + 2 * LANES] - m
                d3 = q[j + 3 * LANES] - m
                t[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            i += GROUP * LANES
        while n - i >= LANES:  # short runs (small L) and remainders: still vectorised
            q = x + i
            for j in range(LANES):
                d0 = q[j] - m
                t[j] += d0 * d0
            i += LANES
    else:
        while n - i >= GROUP * LANES:
            q = x + i
            for j in range(LANES):
                t[j] += (((q[j] - m) + (q[j + LANES] - m))
                             + ((q[j + 2 * LANES] - m) + (q[j + 3 * LANES] - m)))
            i += GROUP * LANES
        while n - i >= LANES:
            q = x + i
            for j in range(LANES):
                t[j] += q[j] - m
            i += LANES
    for j in range(LANES):
        total[j] = t[j]
    while i < n:
        d = x[i] - <double>m
        tail[0] += d * d if square else d
        i += 1


cdef inline void _acc_dot(const floating* dy, const floating* x, Py_ssize_t n, floating m,
                          double* total, double* tail) noexcept nogil:
    """Add sum(dy * (x - m)) over a contiguous run, in the blocks of _acc_dev."""
    cdef double t[LANES]
    cdef const floating* g
    cdef const floating* q
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        t[j] = total[j]
    while n - i >= GROUP * LANES:
        g = dy + i
        q = x + i
        for j in range(LANES):
            t[j] += ((g[j] * (q[j] - m) + g[j + LANES] * (q[j + LANES] - m))
                         + (g[j + 2 * LANES] * (q[j + 2 * LANES] - m)
                            + g[j + 3 * LANES] * (q[j + 3 * LANES] - m)))
        i += GROUP * LANES
    while n - i >= LANES:
        g = dy + i
        q = x + i
        for j in range(LANES):
            t[j] += g[j] * (q[j] - m)
        i += LANES
    for j in range(LANES):
        total[j] = t[j]
    while i < n:
        tail[0] += dy[i] * (x[i] - <double>m)
        i += 1


# ---------------------------------------------------------------------------------------
# Per-tile work. `base` points at element (0, 0, 0); `stride_n` = C * L.

cdef inline const floating* _run_ptr(const floating* base, const _Plan* p, Py_ssize_t n,
                                     Py_ssize_t c, Py_ssize_t l0) noexcept nogil:
    return base + (n * p.C + c) * p.L + l0


cdef void _group_sum(const floating* base, const _Plan* p, const _Tile* tl, Py_ssize_t c0,
                     Py_ssize_t c1, double* out) noexcept nogil:
    """out[c - c0] = sum(x) over channel c of a tile of runs (L > 1), for c in [c0, c1),
    c1 - c0 <= CHANNEL_GROUP. Each channel keeps its lanes across its runs and totals them
    once (per-run totals cost more than the sums of short runs), while the runs are still
    visited in memory order (row by row), which the hardware prefetcher needs."""
    cdef double total[CHANNEL_GROUP * LANES]
    cdef double tail[CHANNEL_GROUP]
    cdef floating zero = 0
    cdef Py_ssize_t n, c, run = tl.l1 - tl.l0
    for c in range(c1 - c0):
        _lanes_zero(total + c * LANES)
        tail[c] = 0
    for n in range(tl.n0, tl.n1):
        for c in range(c1 - c0):
            _acc_dev(_run_ptr(base, p, n, c0 + c, tl.l0), run, zero, False,
                     total + c * LANES, &tail[c])
    for c in range(c1 - c0):
        out[c] = _lanes_total(total + c * LANES) + tail[c]


cdef void _group_dev(const floating* base, const _Plan* p, const _Tile* tl, Py_ssize_t c0,
                     Py_ssize_t c1, const floating* shift, double* dev,
                     double* sq) noexcept nogil:
    """dev, sq[c - c0] = sum(x - shift), sum((x - shift)^2) over channel c, as _group_sum;
    both sweeps run back to back on a run, so the second reads it from L1."""
    cdef double t1[CHANNEL_GROUP * LANES]
    cdef double t2[CHANNEL_GROUP * LANES]
    cdef double tail1[CHANNEL_GROUP]
    cdef double tail2[CHANNEL_GROUP]
    cdef const floating* r
    cdef Py_ssize_t n, c, run = tl.l1 - tl.l0
    for c in range(c1 - c0):
        _lanes_zero(t1 + c * LANES)
        _lanes_zero(t2 + c * LANES)
        tail1[c] = 0
        tail2[c] = 0
    for n in range(tl.n0, tl.n1):
        for c in range(c1 - c0):
            r = _run_ptr(base, p, n, c0 + c, tl.l0)
            _acc_dev(r, run, shift[c], False, t1 + c * LANES, &tail1[c])
            _acc_dev(r, run, shift[c], True, t2 + c * LANES, &tail2[c])
    for c in range(c1 - c0):
        dev[c] = _lanes_total(t1 + c * LANES) + tail1[c]
        sq[c] = _lanes_total(t2 + c * LANES) + tail2[c]


cdef void _group_dot(const floating* dy, const floating* x, const _Plan* p, const _Tile* tl,
                     Py_ssize_t c0, Py_ssize_t c1, const floating* cen, double* sdy,
                     double* sdyx) noexcept nogil:
    """sdy, sdyx[c - c0] = sum(dy), sum(dy * (x - cen)) over channel c, as _group_dev."""
    cdef double t1[CHANNEL_GROUP * LANES]
    cdef double t2[CHANNEL_GROUP * LANES]
    cdef double tail1[CHANNEL_GROUP]
    cdef double tail2[CHANNEL_GROUP]
    cdef floating zero = 0
    cdef const floating* g
    cdef Py_ssize_t n, c, run = tl.l1 - tl.l0
    for c in range(c1 - c0):
        _lanes_zero(t1 + c * LANES)
        _lanes_zero(t2 + c * LANES)
        tail1[c] = 0
        tail2[c] = 0
    for n in range(tl.n0, tl.n1):
        for c in range(c1 - c0):
            g = _run_ptr(dy, p, n, c0 + c, tl.l0)
            _acc_dev(g, run, zero, False, t1 + c * LANES, &tail1[c])
            _acc_dot(g, _run_ptr(x, p, n, c0 + c, tl.l0), run, cen[c], t2 + c * LANES,
                     &tail2[c])
    for c in range(c1 - c0):
        sdy[c] = _lanes_total(t1 + c * LANES) + tail1[c]
        sdyx[c] = _lanes_total(t2 + c * LANES) + tail2[c]


cdef void _channel_exact(const floating* base, const floating* dy, const _Plan* p,
                         const _Tile* tl, Py_ssize_t c, double center,
                         double* out1, double* out2) noexcept nogil:
    """One channel of a tile, entirely in double: the fallback for non-finite fast sums.

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
    if not (m - m == 0):
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


cdef inline const prm_t* _to_columns(const prm_t* per_channel, Py_ssize_t c0, Py_ssize_t c1,
                                     Py_ssize_t L, prm_t* columns) noexcept nogil:
    """Per-channel values of channels [c0, c1) as per-column values of a tile row: each
    repeated L times into `columns` (L * (c1 - c0) <= TILE_CHANNELS); for L == 1 the
    channels are the columns, and per_channel + c0 is returned without a copy."""
    cdef Py_ssize_t c, l, j = 0
    if L == 1:
        return per_channel + c0
    for c in range(c0, c1):
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


cdef void _tile_stats(const floating* base, const _Plan* p, Py_ssize_t t,
                      double* part_mean, double* part_m2) noexcept nogil:
    """Mean and M2 of each channel of tile t, written to slot row t.slot of the partials.

    Pass 1 gives a provisional mean, rounded to the input's type as the shift m; pass 2,
    served from cache, sums d = x - m and d^2, and mean = m + sum(d)/n,
    M2 = sum(d^2) - sum(d)^2/n exactly for any shift (the corrected two-pass of Chan,
    Golub & LeVeque 1983). Deviations are formed, squared and grouped in the input's type
    (exact near the mean; fast float vectors) and accumulated in double. A channel whose
    sums are not finite (overflow in float arithmetic, or inf/nan data) is redone
    entirely in double, so no other channel's result depends on it.
    """
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t nc = tl.c1 - tl.c0
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t C = p.C
    cdef double count = <double>((tl.n1 - tl.n0) * run)
    cdef double acc[TILE_CHANNELS]
    cdef double dev[TILE_CHANNELS]
    cdef double sq[TILE_CHANNELS]
    cdef floating shift[TILE_CHANNELS]
    cdef floating colbuf[TILE_CHANNELS]
    cdef const floating* colshift
    cdef double* mean_out = part_mean + tl.slot * C + tl.c0
    cdef double* m2_out = part_m2 + tl.slot * C + tl.c0
    # columns: row n of the tile starts at xt + n * S and holds ncol contiguous values
    cdef Py_ssize_t S = C * p.L, ncol = nc * run
    cdef const floating* xt = base + tl.c0 * p.L
    cdef const floating* row
    cdef floating d0, d1, d2, d3
    cdef double m
    cdef Py_ssize_t n, c, j
    for j in range(ncol if p.cols else nc):
        acc[j] = 0
        dev[j] = 0
        sq[j] = 0
    # pass 1: provisional mean
    if p.cols:
        n = tl.n0
        # four rows at a time: one load/store of an accumulator per four elements
        while n + GROUP <= tl.n1:
            row = xt + n * S
            for j in range(ncol):
                acc[j] += (row[j] + row[j + S]) + (row[j + 2 * S] + row[j + 3 * S])
            n += GROUP
        while n < tl.n1:
            row = xt + n * S
            for j in range(ncol):
                acc[j] += row[j]
            n += 1
        _fold(acc, nc, p.L)
    else:
        for c in range(0, nc, 16):  # CHANNEL_GROUP (Cython needs a literal step)
            _group_sum(base, p, &tl, tl.c0 + c, tl.c0 + min(c + CHANNEL_GROUP, nc), &acc[c])
    for c in range(nc):
        shift[c] = <floating>(acc[c] / count)
    # pass 2: deviations from the shift
    if p.cols:
        colshift = _to_columns(shift, 0, nc, p.L, colbuf)
        n = tl.n0
        while n + GROUP <= tl.n1:
            row = xt + n * S
            for j in range(ncol):
                d0 = row[j] - colshift[j]
                d1 = row[j + S] - colshift[j]
                d2 = row[j + 2 * S] - colshift[j]
                d3 = row[j + 3 * S] - colshift[j]
                dev[j] += (d0 + d1) + (d2 + d3)
                sq[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            n += GROUP
        while n < tl.n1:
            row = xt + n * S
            for j in range(ncol):
                m = row[j] - <double>colshift[j]
                dev[j] += m
                sq[j] += m * m
            n += 1
        _fold(dev, nc, p.L)
        _fold(sq, nc, p.L)
    else:
        for c in range(0, nc, 16):  # CHANNEL_GROUP
            _group_dev(base, p, &tl, tl.c0 + c, tl.c0 + min(c + CHANNEL_GROUP, nc), &shift[c],
                       &dev[c], &sq[c])
    for c in range(nc):
        m = shift[c]
        mean_out[c] = m + dev[c] / count
        m2_out[c] = sq[c] - dev[c] * dev[c] / count
        if (not (mean_out[c] - mean_out[c] == 0 and m2_out[c] - m2_out[c] == 0)
                or (floating is float and sq[c] < _TINY * count)):
            _channel_exact(base, NULL, p, &tl, tl.c0 + c, 0.0, &mean_out[c], &m2_out[c])


cdef void _tile_normalize(const floating* base, floating* out, const _Plan* p, Py_ssize_t t,
                          const prm_t* prm) noexcept nogil:
    """out = ((x - hi[c]) - lo[c]) * scale[c] + shift[c] over tile t, in prm's precision.

    prm holds four per-channel rows: hi, lo, scale, shift (see _normalize).
    """
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t n, c, i, off, j
    cdef const prm_t* hi = prm
    cdef const prm_t* lo = prm + p.C
    cdef const prm_t* sc = prm + 2 * p.C
    cdef const prm_t* sh = prm + 3 * p.C
    cdef prm_t mh, ml, a, b
    cdef prm_t col[4 * TILE_CHANNELS]  # per-column constants when L > 1
    cdef Py_ssize_t S = p.C * p.L, ncol = (tl.c1 - tl.c0) * run
    cdef const floating* row
    cdef floating* o
    if p.cols:
        hi = _to_columns(hi, tl.c0, tl.c1, p.L, col)
        lo = _to_columns(lo, tl.c0, tl.c1, p.L, col + TILE_CHANNELS)
        sc = _to_columns(sc, tl.c0, tl.c1, p.L, col + 2 * TILE_CHANNELS)
        sh = _to_columns(sh, tl.c0, tl.c1, p.L, col + 3 * TILE_CHANNELS)
        for n in range(tl.n0, tl.n1):
            row = base + n * S + tl.c0 * p.L
            o = out + n * S + tl.c0 * p.L
            for j in range(ncol):
                o[j] = <floating>(((row[j] - hi[j]) - lo[j]) * sc[j] + sh[j])
    else:
        for n in range(tl.n0, tl.n1):
            for c in range(tl.c0, tl.c1):
                off = (n * p.C + c) * p.L + tl.l0
                mh = hi[c]
                ml = lo[c]
                a = sc[c]
                b = sh[c]
                for i in range(off, off + run):
                    out[i] = <floating>(((base[i] - mh) - ml) * a + b)


cdef void _tile_dot(const floating* dy, const floating* x, const _Plan* p, Py_ssize_t t,
                    const double* center, double* part_dy, double* part_dyx) noexcept nogil:
    """Per-channel sum(dy) and sum(dy * (x - center)) of tile t, written to its slot row.

    As in _tile_stats, products are formed and grouped in the input's type against the
    centre rounded to it, m, accumulated in double, and corrected for the rounding:
    sum(dy * (x - center)) = sum(dy * (x - m)) + (m - center) * sum(dy). A channel whose
    sums are not finite is redone entirely in double.
    """
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t nc = tl.c1 - tl.c0
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t C = p.C
    cdef double sdy[TILE_CHANNELS]
    cdef double sdyx[TILE_CHANNELS]
    cdef floating cen[TILE_CHANNELS]
    cdef double count = <double>((tl.n1 - tl.n0) * run)
    cdef double* dy_out = part_dy + tl.slot * C + tl.c0
    cdef double* dyx_out = part_dyx + tl.slot * C + tl.c0
    cdef const double* center_t = center + tl.c0
    cdef floating colbuf[TILE_CHANNELS]
    cdef const floating* colcen
    # columns, as in _tile_stats
    cdef Py_ssize_t S = C * p.L, ncol = nc * run, off0 = tl.c0 * p.L
    cdef const floating* g
    cdef const floating* v
    cdef Py_ssize_t n, c, j
    for c in range(nc):
        cen[c] = <floating>center_t[c]
    for j in range(ncol if p.cols else nc):
        sdy[j] = 0
        sdyx[j] = 0
    if p.cols:
        colcen = _to_columns(cen, 0, nc, p.L, colbuf)
        n = tl.n0
        while n + GROUP <= tl.n1:
            g = dy + n * S + off0
            v = x + n * S + off0
            for j in range(ncol):
                sdy[j] += (g[j] + g[j + S]) + (g[j + 2 * S] + g[j + 3 * S])
                sdyx[j] += ((g[j] * (v[j] - colcen[j]) + g[j + S] * (v[j + S] - colcen[j]))
                            + (g[j + 2 * S] * (v[j + 2 * S] - colcen[j])
                               + g[j + 3 * S] * (v[j + 3 * S] - colcen[j])))
            n += GROUP
        while n < tl.n1:
            g = dy + n * S + off0
            v = x + n * S + off0
            for j in range(ncol):
                sdy[j] += g[j]
                sdyx[j] += g[j] * (v[j] - <double>colcen[j])
            n += 1
        _fold(sdy, nc, p.L)
        _fold(sdyx, nc, p.L)
    else:
        for c in range(0, nc, 16):  # CHANNEL_GROUP
            _group_dot(dy, x, p, &tl, tl.c0 + c, tl.c0 + min(c + CHANNEL_GROUP, nc), &cen[c],
                       &sdy[c], &sdyx[c])
    for c in range(nc):
        dy_out[c] = sdy[c]
        dyx_out[c] = sdyx[c] + (<double>cen[c] - center_t[c]) * sdy[c]
        if (not (dy_out[c] - dy_out[c] == 0 and dyx_out[c] - dyx_out[c] == 0)
                or (floating is float and sdy[c] != 0 and fabs(sdyx[c]) < _TINY * count)):
            _channel_exact(x, dy, p, &tl, tl.c0 + c, center_t[c], &dy_out[c], &dyx_out[c])


cdef void _tile_grad_input(const floating* dy, const floating* x, floating* dx,
                           const _Plan* p, Py_ssize_t t, const double* center,
                           const double* mean_dy, const double* k,
                           const double* scale, bint use_x) noexcept nogil:
    """dx = (dy - mean_dy[c] - (x - center[c]) * k[c]) * scale[c]; dx = dy * scale[c] if not use_x."""
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t n, c, i, off, j
    cdef double m, a, kk, s
    cdef double col[4 * TILE_CHANNELS]  # per-column constants when L > 1
    cdef Py_ssize_t S = p.C * p.L, ncol = (tl.c1 - tl.c0) * run, off0 = tl.c0 * p.L
    cdef const double* cm = center
    cdef const double* ca = mean_dy
    cdef const double* ck = k
    cdef const double* cs = scale
    if p.cols:
        if use_x:  # (center, mean_dy and k may be NULL otherwise)
            cm = _to_columns(center, tl.c0, tl.c1, p.L, col)
            ca = _to_columns(mean_dy, tl.c0, tl.c1, p.L, col + TILE_CHANNELS)
            ck = _to_columns(k, tl.c0, tl.c1, p.L, col + 2 * TILE_CHANNELS)
        cs = _to_columns(scale, tl.c0, tl.c1, p.L, col + 3 * TILE_CHANNELS)
        for n in range(tl.n0, tl.n1):
            off = n * S + off0
            if use_x:
                for j in range(ncol):
                    dx[off + j] = <floating>(
                        ((dy[off + j] - ca[j]) - (x[off + j] - cm[j]) * ck[j]) * cs[j])
            else:
                for j in range(ncol):
                    dx[off + j] = <floating>(dy[off + j] * cs[j])
        return
    if not use_x:
        for n in range(tl.n0, tl.n1):
            for c in range(tl.c0, tl.c1):
                off = (n * p.C + c) * p.L + tl.l0
                s = scale[c]
                for i in range(off, off + run):
                    dx[i] = <floating>(dy[i] * s)
    else:
        for n in range(tl.n0, tl.n1):
            for c in range(tl.c0, tl.c1):
                off = (n * p.C + c) * p.L + tl.l0
                m = center[c]
                a = mean_dy[c]
                kk = k[c]
                s = scale[c]
                for i in range(off, off + run):
                    dx[i] = <floating>(((dy[i] - a) - (x[i] - m) * kk) * s)


# ---------------------------------------------------------------------------------------
# Channel slabs: one channel over all N and L (shape-dependent choice, so results stay
# identical for every thread count).

cdef inline bint _slab_mode(const _Plan* p, size_t itemsize) noexcept nogil:
    return (p.C >= SLAB_MIN_CHANNELS
            and <size_t>p.L * itemsize >= <size_t>SLAB_MIN_RUN_BYTES
            and <size_t>(p.N * p.L) * itemsize <= <size_t>SLAB_BYTES)


cdef inline _Tile _slab(const _Plan* p, Py_ssize_t c) noexcept nogil:
    cdef _Tile tl
    tl.n0 = 0
    tl.n1 = p.N
    tl.c0 = c
    tl.c1 = c + 1
    tl.l0 = 0
    tl.l1 = p.L
    tl.slot = 0
    return tl


cdef void _slab_forward(const floating* x, floating* out, const _Plan* p, Py_ssize_t c,
                        double eps, double w, double b, double* mean, double* var,
                        double* invstd) noexcept nogil:
    """Statistics of channel c (as _tile_stats, over the whole slab), then its output."""
    cdef _Tile tl = _slab(p, c)
    cdef Py_ssize_t n, i, L = p.L
    cdef double count = <double>(p.N * L)
    cdef double acc = 0, dev = 0, sq = 0, m, m2, scale
    cdef floating zero = 0, shift, hi, lo, sc, sh
    cdef const floating* r
    cdef floating* o
    _group_sum(x, p, &tl, c, c + 1, &acc)
    shift = <floating>(acc / count)
    _group_dev(x, p, &tl, c, c + 1, &shift, &dev, &sq)
    m = shift + dev / count
    m2 = sq - dev * dev / count
    if not (m - m == 0 and m2 - m2 == 0) or (floating is float and sq < _TINY * count):
        _channel_exact(x, NULL, p, &tl, c, 0.0, &m, &m2)
    mean[0] = m
    var[0] = m2 / count
    invstd[0] = 1.0 / sqrt(var[0] + eps)
    scale = invstd[0] * w
    hi = <floating>m
    lo = <floating>(m - <double>hi)
    sc = <floating>scale
    sh = <floating>b
    if (scale - scale == 0 and sc - sc != 0) or (b - b == 0 and sh - sh != 0):
        # constants that overflow the input's type: this channel in double
        for n in range(p.N):
            r = _run_ptr(x, p, n, c, 0)
            o = out + (r - x)
            for i in range(L):
                o[i] = <floating>((r[i] - m) * scale + b)
        return
    for n in range(p.N):
        r = _run_ptr(x, p, n, c, 0)
        o = out + (r - x)
        for i in range(L):
            o[i] = ((r[i] - hi) - lo) * sc + sh


cdef void _slab_backward(const floating* dy, const floating* x, floating* dx,
                         const _Plan* p, Py_ssize_t c, double center, double invstd,
                         double scale, bint training, bint need_sums,
                         double* sum_dy, double* sum_dyx) noexcept nogil:
    """Backward sums of channel c (as _tile_dot, over the whole slab), then its grad_input
    (when dx is not NULL) while the slab is in cache."""
    cdef _Tile tl = _slab(p, c)
    cdef Py_ssize_t n, i, L = p.L
    cdef double count = <double>(p.N * L)
    cdef double sdy = 0, sdyx = 0, md, k
    cdef floating zero = 0, cen = <floating>center
    cdef const floating* g
    cdef const floating* r
    cdef floating* o
    if need_sums:
        _group_dot(dy, x, p, &tl, c, c + 1, &cen, &sdy, &sdyx)
        sdyx += (<double>cen - center) * sdy
        if (not (sdy - sdy == 0 and sdyx - sdyx == 0)
                or (floating is float and sdy != 0 and fabs(sdyx) < _TINY * count)):
            _channel_exact(x, dy, p, &tl, c, center, &sdy, &sdyx)
    sum_dy[0] = sdy
    sum_dyx[0] = sdyx
    if dx == NULL:
        return
    md = sdy / count
    k = sdyx * invstd * invstd / count
    for n in range(p.N):
        g = _run_ptr(dy, p, n, c, 0)
        o = dx + (g - dy)
        if training:
            r = _run_ptr(x, p, n, c, 0)
            for i in range(L):
                o[i] = <floating>(((g[i] - md) - (r[i] - center) * k) * scale)
        else:
            for i in range(L):
                o[i] = <floating>(g[i] * scale)


# ---------------------------------------------------------------------------------------
# Whole-array drivers (nogil). Each returns -1 when scratch memory cannot be allocated.

cdef int _stats(const floating* x, const _Plan* p, int n_threads,
                double* mean, double* m2) noexcept nogil:
    """Per-channel mean and M2 = sum((x - mean)^2) over N and L (Chan's merge in tile order)."""
    cdef Py_ssize_t S = p.n_slots, C = p.C
    cdef double* part = <double*> malloc(2 * S * C * sizeof(double))
    cdef double* part_mean = part
    cdef double* part_m2 = part + S * C
    cdef Py_ssize_t t, s, c, l_len, n_len
    cdef double n_a, n_b, n_ab, w_b, w_ab, delta
    if part == NULL:
        return -1
    if _team(p, n_threads) == 1:  # no OpenMP region: entering one costs ~0.5 us
        for t in range(p.n_tiles):
            _tile_stats(x, p, t, part_mean, part_m2)
    else:
        for t in prange(p.n_tiles, schedule='static', num_threads=_team(p, n_threads)):
            _tile_stats(x, p, t, part_mean, part_m2)
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
                    const double* center, const double* scale,
                    const double* shift) noexcept nogil:
    """out = (x - center) * scale + shift per channel, computed in the input's precision.

    The centre is split into hi + lo with hi = center rounded to the input's precision:
    x - hi is exact when x is near the centre (Sterbenz), which is where |mean| >> std
    would otherwise cancel digits, and a constant channel (x == center) gives exactly
    shift. Float input thus runs in float vectors, twice as wide as double ones.
    Returns -1 when the parameter buffer cannot be allocated.
    """
    cdef Py_ssize_t C = p.C, t, c
    cdef floating* prm = <floating*> malloc(4 * C * sizeof(floating))
    cdef double* prmd
    cdef bint fits = True
    if prm == NULL:
        return -1
    for c in range(C):
        prm[c] = <floating>center[c]
        prm[C + c] = <floating>(center[c] - <double>prm[c])
        prm[2 * C + c] = <floating>scale[c]
        prm[3 * C + c] = <floating>shift[c]
        # a finite double constant that overflows the input's type
        if ((scale[c] - scale[c] == 0 and prm[2 * C + c] - prm[2 * C + c] != 0)
                or (shift[c] - shift[c] == 0 and prm[3 * C + c] - prm[3 * C + c] != 0)):
            fits = False
    if fits:
        if _team(p, n_threads) == 1:  # no OpenMP region: entering one costs ~0.5 us
            for t in range(p.n_tiles):
                _tile_normalize(x, out, p, t, prm)
        else:
            for t in prange(p.n_tiles, schedule='static', num_threads=_team(p, n_threads)):
                _tile_normalize(x, out, p, t, prm)
        free(prm)
        return 0
    free(prm)
    prmd = <double*> malloc(4 * C * sizeof(double))
    if prmd == NULL:
        return -1
    for c in range(C):
        prmd[c] = center[c]
        prmd[C + c] = 0
        prmd[2 * C + c] = scale[c]
        prmd[3 * C + c] = shift[c]
    if _team(p, n_threads) == 1:  # no OpenMP region: entering one costs ~0.5 us
        for t in range(p.n_tiles):
            _tile_normalize(x, out, p, t, prmd)
    else:
        for t in prange(p.n_tiles, schedule='static', num_threads=_team(p, n_threads)):
            _tile_normalize(x, out, p, t, prmd)
    free(prmd)
    return 0


cdef int _dot(const floating* dy, const floating* x, const _Plan* p, int n_threads,
              const double* center, double* sum_dy, double* sum_dyx) noexcept nogil:
    """Per-channel sum(dy) and sum(dy * (x - center)), partials added in tile order."""
    cdef Py_ssize_t S = p.n_slots, C = p.C
    cdef double* part = <double*> malloc(2 * S * C * sizeof(double))
    cdef double* part_dy = part
    cdef double* part_dyx = part + S * C
    cdef Py_ssize_t t, s, c
    if part == NULL:
        return -1
    if _team(p, n_threads) == 1:  # no OpenMP region: entering one costs ~0.5 us
        for t in range(p.n_tiles):
            _tile_dot(dy, x, p, t, center, part_dy, part_dyx)
    else:
        for t in prange(p.n_tiles, schedule='static', num_threads=_team(p, n_threads)):
            _tile_dot(dy, x, p, t, center, part_dy, part_dyx)
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
    cdef Py_ssize_t t
    if _team(p, n_threads) == 1:  # no OpenMP region: entering one costs ~0.5 us
        for t in range(p.n_tiles):
            _tile_grad_input(dy, x, dx, p, t, center, mean_dy, k, scale, use_x)
    else:
        for t in prange(p.n_tiles, schedule='static', num_threads=_team(p, n_threads)):
            _tile_grad_input(dy, x, dx, p, t, center, mean_dy, k, scale, use_x)


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

def batch_stats(const floating[:, :, ::1] x,   # IN  (N, C, L)
                double[::1] mean,              # OUT (C,) batch mean
                double[::1] m2,                # OUT (C,) sum of squared deviations
                int n_threads):
    """Per-channel mean and M2 = sum((x - mean)^2) over N and L; zeros when N * L == 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef _Plan p
    cdef int rc = 0
    if _empty(N, C, L):
        for c in range(C):
            mean[c] = 0
            m2[c] = 0
        return
    p = _make_plan(N, C, L)
    with nogil:
        rc = _stats(&x[0, 0, 0], &p, n_threads, &mean[0], &m2[0])
    if rc != 0:
        raise MemoryError()


def normalize(const floating[:, :, ::1] x,     # IN  (N, C, L)
              const double[::1] center,        # IN  (C,)
              const double[::1] scale,         # IN  (C,)
              const double[::1] shift,         # IN  (C,)
              floating[:, :, ::1] out,         # OUT (N, C, L)
              int n_threads):
    """out = (x - center) * scale + shift, per channel (see _normalize for the precision)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef _Plan p
    cdef int rc
    if _empty(N, C, L):
        return
    p = _make_plan(N, C, L)
    with nogil:
        rc = _normalize(&x[0, 0, 0], &out[0, 0, 0], &p, n_threads,
                        &center[0], &scale[0], &shift[0])
    if rc != 0:
        raise MemoryError()


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
    MAX_ARGS = 8


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
                     int n_threads):
    """Training forward with batch statistics (Ioffe & Szegedy 2015, PyTorch semantics).

    ``x``, ``out``: float arrays of the ``x_type`` specialisation; per-channel arrays of
    the ``p_type`` one; ``stats`` float64. ``stats`` receives the batch mean,
    ``1 / sqrt(var + eps)`` and the biased variance.
    When running statistics are given they are updated last, after everything that can
    fail, as ``(1 - factor) * running + factor * batch`` with ``var * var_scale``.
    With ``check_finite``, a batch whose statistics are not finite in some channel (NaN or
    Inf in the data) stops after the statistics pass: ``out`` and the running statistics
    are left untouched and the number of such channels is returned (0 otherwise).
    Requires N * L >= 1.
    """
    cdef _Args a
    cdef Py_ssize_t N, C, L, c
    cdef Py_ssize_t bad = 0
    cdef const floating* px
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
    cdef int rc = 0
    a.n = 0
    try:
        px = <const floating*>_arg(&a, x, b"x", 3, sizeof(floating), False, False)
        N, C, L = _dim(&a, 0, 0), _dim(&a, 0, 1), _dim(&a, 0, 2)
        pw = <const param_t*>_arg(&a, weight, b"weight", 1, sizeof(param_t), False, True)
        pb = <const param_t*>_arg(&a, bias, b"bias", 1, sizeof(param_t), False, True)
        prm = <param_t*>_arg(&a, running_mean, b"running_mean", 1, sizeof(param_t), True, True)
        prv = <param_t*>_arg(&a, running_var, b"running_var", 1, sizeof(param_t), True,
                             running_mean is None)
        po = <floating*>_arg(&a, out, b"out", 3, sizeof(floating), True, False)
        mean = <double*>_arg(&a, stats, b"stats", 2, sizeof(double), True, False)
        for c in range(1, 5):
            _shape(&a, c, C, -1, -1, b"per-channel")
        _shape(&a, 5, N, C, L, b"out")
        _shape(&a, 6, 3, C, -1, b"stats")
        if _empty(N, C, L):
            return 0
        invstd = mean + C
        var = mean + 2 * C
        count = <double>(N * L)
        p = _make_plan(N, C, L)
        buf = _alloc_channels(C, 2)
        with nogil:
            if not check_finite and _slab_mode(&p, sizeof(floating)):
                for c in range(C):
                    buf[c] = pw[c] if pw != NULL else 1.0
                    buf[C + c] = pb[c] if pb != NULL else 0.0
                for c in prange(C, schedule='static', num_threads=_slab_team(&p, n_threads),
                                use_threads_if=_slab_team(&p, n_threads) > 1):
                    _slab_forward(px, po, &p, c, eps, buf[c], buf[C + c], &mean[c], &var[c],
                                  &invstd[c])
                if prm != NULL:
                    _update(C, prm, prv, mean, var, var_scale, factor)
            else:
                rc = _stats(px, &p, n_threads, mean, var)
                if rc == 0:
                    for c in range(C):
                        var[c] = var[c] / count
                        invstd[c] = 1.0 / sqrt(var[c] + eps)
                        if check_finite and not (mean[c] - mean[c] == 0
                                                 and var[c] - var[c] == 0):
                            bad += 1
                    if bad == 0:
                        _affine(C, invstd, pw, pb, buf, buf + C)
                        rc = _normalize(px, po, &p, n_threads, mean, buf, buf + C)
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
                      int n_threads):
    """Inference forward: (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    Array types as :func:`forward_training`. ``stats``, when given, receives the running
    mean and ``1 / sqrt(running_var + eps)`` in double, the constants of the inference
    backward.
    """
    cdef _Args a
    cdef Py_ssize_t N, C, L, c
    cdef const floating* px
    cdef floating* po
    cdef const param_t* pw
    cdef const param_t* pb
    cdef const param_t* prm
    cdef const param_t* prv
    cdef double* pst
    cdef double* buf = NULL
    cdef _Plan p
    cdef int rc = 0
    a.n = 0
    try:
        px = <const floating*>_arg(&a, x, b"x", 3, sizeof(floating), False, False)
        N, C, L = _dim(&a, 0, 0), _dim(&a, 0, 1), _dim(&a, 0, 2)
        pw = <const param_t*>_arg(&a, weight, b"weight", 1, sizeof(param_t), False, True)
        pb = <const param_t*>_arg(&a, bias, b"bias", 1, sizeof(param_t), False, True)
        prm = <const param_t*>_arg(&a, running_mean, b"running_mean", 1, sizeof(param_t),
                                   False, False)
        prv = <const param_t*>_arg(&a, running_var, b"running_var", 1, sizeof(param_t),
                                   False, False)
        po = <floating*>_arg(&a, out, b"out", 3, sizeof(floating), True, False)
        pst = <double*>_arg(&a, stats, b"stats", 2, sizeof(double), True, True)
        for c in range(1, 5):
            _shape(&a, c, C, -1, -1, b"per-channel")
        _shape(&a, 5, N, C, L, b"out")
        _shape(&a, 6, 2, C, -1, b"stats")
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
                p = _make_plan(N, C, L)
                _affine(C, buf + C, pw, pb, buf + 2 * C, buf + 3 * C)
                rc = _normalize(px, po, &p, n_threads, buf, buf + 2 * C, buf + 3 * C)
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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef _Plan p
    cdef int rc
    if _empty(N, C, L):
        for c in range(C):
            sum_dy[c] = 0
            sum_dy_xmu[c] = 0
        return
    p = _make_plan(N, C, L)
    with nogil:
        rc = _dot(&grad_output[0, 0, 0], &x[0, 0, 0], &p, n_threads, &center[0],
                  &sum_dy[0], &sum_dy_xmu[0])
    if rc != 0:
        raise MemoryError()


def backward_input(const floating[:, :, ::1] grad_output,  # IN  (N, C, L)
                   const floating[:, :, ::1] x,            # IN  (N, C, L) (unused if k is None)
                   const double[::1] center,               # IN  (C,)
                   const double[::1] mean_dy,              # IN  (C,) or None (with k None)
                   const double[::1] k,                    # IN  (C,) or None
                   const double[::1] scale,                # IN  (C,)
                   floating[:, :, ::1] grad_input,         # OUT (N, C, L)
                   int n_threads):
    """grad_input = (dy - mean_dy - (x - center) * k) * scale; = dy * scale when k is None."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef bint use_x = k is not None
    cdef _Plan p
    if _empty(N, C, L):
        return
    p = _make_plan(N, C, L)
    with nogil:
        _grad_input(&grad_output[0, 0, 0], &x[0, 0, 0], &grad_input[0, 0, 0], &p, n_threads,
                    &center[0], &mean_dy[0] if use_x else NULL, &k[0] if use_x else NULL,
                    &scale[0], use_x)


cdef int _backward(const floating* grad_output, const floating* x, Py_ssize_t N,
                   Py_ssize_t C, Py_ssize_t L, const param_t* weight, const double* center,
                   const double* invstd, bint training, floating* grad_input,
                   param_t* grad_weight, param_t* grad_bias, int n_threads) noexcept nogil:
    """The backward of both entry points; NULL for an absent weight or output."""
    cdef double count = <double>(N * L)
    cdef bint need_sums = training or grad_weight != NULL or grad_bias != NULL
    cdef double* buf
    cdef _Plan p
    cdef _Plan p0 = _make_plan(N if N > 0 else 1, C if C > 0 else 1, L if L > 0 else 1)
    cdef Py_ssize_t c
    cdef int rc = 0
    if C == 0:
        return 0
    buf = <double*> malloc(5 * C * sizeof(double))
    if buf == NULL:
        return -1
    # buf: [sum_dy | sum_dy_xmu | scale | mean_dy | k]
    for c in range(2 * C):
        buf[c] = 0
    if not _empty(N, C, L) and _slab_mode(&p0, sizeof(floating)):
        for c in range(C):
            buf[2 * C + c] = invstd[c] * weight[c] if weight != NULL else invstd[c]
        for c in prange(C, schedule='static', num_threads=_slab_team(&p0, n_threads),
                        use_threads_if=_slab_team(&p0, n_threads) > 1):
            _slab_backward(grad_output, x, grad_input, &p0, c, center[c], invstd[c],
                           buf[2 * C + c], training, need_sums, &buf[c], &buf[C + c])
    elif not _empty(N, C, L):
        p = _make_plan(N, C, L)
        if need_sums:
            rc = _dot(grad_output, x, &p, n_threads, center, buf, buf + C)
        if rc == 0 and grad_input != NULL:
            for c in range(C):
                buf[2 * C + c] = invstd[c] * weight[c] if weight != NULL else invstd[c]
                buf[3 * C + c] = buf[c] / count
                buf[4 * C + c] = buf[C + c] * invstd[c] * invstd[c] / count
            _grad_input(grad_output, x, grad_input, &p, n_threads, center, buf + 3 * C,
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
                      int n_threads):
    """Backward through batch statistics (PyTorch's native_batch_norm_backward, train=True).

    Array types as :func:`forward_training`. With x_hat = (x - mean) * invstd and sums
    over N and L: grad_bias = sum(dy), grad_weight = sum(dy * x_hat),
    grad_input = (dy - sum(dy)/n - (x - mean) * sum(dy * (x - mean)) * invstd^2 / n) * invstd * w.
    """
    _backward_def(x_type, p_type, grad_output, x, weight, save_mean, save_invstd, True,
                  grad_input, grad_weight, grad_bias, n_threads)


def backward_inference(floating x_type, param_t p_type,
                       grad_output,                            # IN  (N, C, L)
                       x,                                      # IN  (N, C, L)
                       weight,                                 # IN  (C,) or None
                       center,                                 # IN  (C,) running mean
                       invstd,                                 # IN  (C,) 1/sqrt(rv + eps)
                       grad_input,                             # OUT (N, C, L) or None
                       grad_weight,                            # OUT (C,) or None
                       grad_bias,                              # OUT (C,) or None
                       int n_threads):
    """Backward with the running statistics as constants (eval mode with buffers).

    With center = running_mean and invstd = 1 / sqrt(running_var + eps) (as written by
    forward_inference): grad_input = dy * w * invstd,
    grad_weight = sum(dy * (x - center) * invstd), grad_bias = sum(dy).
    """
    _backward_def(x_type, p_type, grad_output, x, weight, center, invstd, False, grad_input,
                  grad_weight, grad_bias, n_threads)


cdef _backward_def(floating x_type, param_t p_type, grad_output, x, weight, center, invstd,
                   bint training, grad_input, grad_weight, grad_bias, int n_threads):
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
        if C == 0:
            return
        with nogil:
            rc = _backward(pdy, px, N, C, L, pw, pc, ps, training, pgi, pgw, pgb, n_threads)
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
