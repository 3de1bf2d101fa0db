# Batch-normalization kernels: arithmetic only, no validation.
#
# Every array arrives as a C-contiguous (N, C, L) view; statistics are taken over N and L
# for each channel c. 2-D (N, C) input and channels-last data arrive with L == 1, so the
# channel axis is the contiguous one; (N, C, L) input with L > 1 has contiguous runs of one
# channel. One tiling serves both: the array is cut into tiles of rows x channels x
# positions (`_Plan`), and a tile is walked either as rows vectorised across channels
# (L == 1) or as per-channel contiguous runs (L > 1). The callers in cybn.functional own
# shapes, dtypes, allocation and the thread count; calling these with unchecked arguments
# is undefined behaviour.
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
from libc.math cimport sqrt

ctypedef fused floating:
    float
    double

# Parameters and running statistics have the module's dtype, which may differ from the
# input's (a float32 module accepts float64 input), hence a second, independent fused type.
ctypedef fused param_t:
    float
    double

# Elements per tile: 64 Ki elements is 256 KiB of float32 or 512 KiB of float64, small
# enough for a tile's second pass to be served from L2.
cdef enum:
    TILE_ELEMS = 65536
    # Channels per tile; also the size of the per-tile stack accumulators.
    TILE_CHANNELS = 1024


cdef struct _Plan:
    Py_ssize_t N, C, L
    Py_ssize_t tn, tc, tl        # tile extent along N, C, L
    Py_ssize_t bn, bc, bl        # number of tiles along N, C, L
    Py_ssize_t n_tiles
    Py_ssize_t n_slots           # bn * bl: tiles that hold partial sums for one channel


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef _Plan _make_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    cdef _Plan p
    p.N = N
    p.C = C
    p.L = L
    p.tl = L if L < TILE_ELEMS else TILE_ELEMS
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


cdef inline bint _use_threads(const _Plan* p, int n_threads) noexcept nogil:
    return n_threads > 1 and p.n_tiles > 1


# ---------------------------------------------------------------------------------------
# Contiguous runs (L > 1). Eight independent accumulators let the compiler vectorise a
# double reduction without -ffast-math; their order is fixed, so results stay deterministic.

cdef inline double _run_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        a0 += x[i]
        a1 += x[i + 1]
        a2 += x[i + 2]
        a3 += x[i + 3]
        a4 += x[i + 4]
        a5 += x[i + 5]
        a6 += x[i + 6]
        a7 += x[i + 7]
        i += 8
    while i < n:
        a0 += x[i]
        i += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline void _run_dev(const floating* x, Py_ssize_t n, double m,
                          double* s1, double* s2) noexcept nogil:
    # s1 += sum(x - m), s2 += sum((x - m)^2)
    cdef double d0, d1, d2, d3
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef double b0 = 0, b1 = 0, b2 = 0, b3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        d0 = x[i] - m
        d1 = x[i + 1] - m
        d2 = x[i + 2] - m
        d3 = x[i + 3] - m
        a0 += d0
        a1 += d1
        a2 += d2
        a3 += d3
        b0 += d0 * d0
        b1 += d1 * d1
        b2 += d2 * d2
        b3 += d3 * d3
        i += 4
    while i < n:
        d0 = x[i] - m
        a0 += d0
        b0 += d0 * d0
        i += 1
    s1[0] += (a0 + a1) + (a2 + a3)
    s2[0] += (b0 + b1) + (b2 + b3)


cdef inline void _run_dot(const floating* dy, const floating* x, Py_ssize_t n, double m,
                          double* sdy, double* sdyx) noexcept nogil:
    # sdy += sum(dy), sdyx += sum(dy * (x - m))
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef double b0 = 0, b1 = 0, b2 = 0, b3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        a0 += dy[i]
        a1 += dy[i + 1]
        a2 += dy[i + 2]
        a3 += dy[i + 3]
        b0 += dy[i] * (x[i] - m)
        b1 += dy[i + 1] * (x[i + 1] - m)
        b2 += dy[i + 2] * (x[i + 2] - m)
        b3 += dy[i + 3] * (x[i + 3] - m)
        i += 4
    while i < n:
        a0 += dy[i]
        b0 += dy[i] * (x[i] - m)
        i += 1
    sdy[0] += (a0 + a1) + (a2 + a3)
    sdyx[0] += (b0 + b1) + (b2 + b3)


# ---------------------------------------------------------------------------------------
# Per-tile work. `base` points at element (0, 0, 0); `stride_n` = C * L.

cdef void _tile_stats(const floating* base, const _Plan* p, Py_ssize_t t,
                      double* part_mean, double* part_m2) noexcept nogil:
    """Mean and M2 of each channel of tile t, written to slot row t.slot of the partials."""
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t nc = tl.c1 - tl.c0
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef double count = <double>((tl.n1 - tl.n0) * run)
    cdef double acc[TILE_CHANNELS]
    cdef double dev[TILE_CHANNELS]
    cdef double sq[TILE_CHANNELS]
    cdef double* mean_out = part_mean + tl.slot * p.C + tl.c0
    cdef double* m2_out = part_m2 + tl.slot * p.C + tl.c0
    cdef const floating* row
    cdef double m
    cdef Py_ssize_t n, c
    for c in range(nc):
        acc[c] = 0
        dev[c] = 0
        sq[c] = 0
    if p.L == 1:
        for n in range(tl.n0, tl.n1):
            row = base + n * p.C + tl.c0
            for c in range(nc):
                acc[c] += row[c]
        for c in range(nc):
            acc[c] = acc[c] / count
        for n in range(tl.n0, tl.n1):
            row = base + n * p.C + tl.c0
            for c in range(nc):
                m = row[c] - acc[c]
                dev[c] += m
                sq[c] += m * m
    else:
        for n in range(tl.n0, tl.n1):
            row = base + n * p.C * p.L + tl.l0
            for c in range(nc):
                acc[c] += _run_sum(row + (tl.c0 + c) * p.L, run)
        for c in range(nc):
            acc[c] = acc[c] / count
        for n in range(tl.n0, tl.n1):
            row = base + n * p.C * p.L + tl.l0
            for c in range(nc):
                _run_dev(row + (tl.c0 + c) * p.L, run, acc[c], &dev[c], &sq[c])
    for c in range(nc):
        m = acc[c]
        # Corrected two-pass: the first-pass mean is off by the mean deviation; a
        # non-finite mean (inf/nan data) is left alone so that inf propagates like torch.
        if m - m == 0:
            mean_out[c] = m + dev[c] / count
            m2_out[c] = sq[c] - dev[c] * dev[c] / count
        else:
            mean_out[c] = m
            m2_out[c] = sq[c]


cdef void _tile_normalize(const floating* base, floating* out, const _Plan* p, Py_ssize_t t,
                          const double* center, const double* scale,
                          const double* shift) noexcept nogil:
    """out = (x - center[c]) * scale[c] + shift[c] over tile t."""
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t n, c, i, off
    cdef double m, a, b
    if p.L == 1:
        for n in range(tl.n0, tl.n1):
            off = n * p.C
            for c in range(tl.c0, tl.c1):
                out[off + c] = <floating>((base[off + c] - center[c]) * scale[c] + shift[c])
    else:
        for n in range(tl.n0, tl.n1):
            for c in range(tl.c0, tl.c1):
                off = (n * p.C + c) * p.L + tl.l0
                m = center[c]
                a = scale[c]
                b = shift[c]
                for i in range(off, off + run):
                    out[i] = <floating>((base[i] - m) * a + b)


cdef void _tile_dot(const floating* dy, const floating* x, const _Plan* p, Py_ssize_t t,
                    const double* center, double* part_dy, double* part_dyx) noexcept nogil:
    """Per-channel sum(dy) and sum(dy * (x - center)) of tile t, written to its slot row."""
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t nc = tl.c1 - tl.c0
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef double sdy[TILE_CHANNELS]
    cdef double sdyx[TILE_CHANNELS]
    cdef double* dy_out = part_dy + tl.slot * p.C + tl.c0
    cdef double* dyx_out = part_dyx + tl.slot * p.C + tl.c0
    cdef const double* cen = center + tl.c0
    cdef Py_ssize_t n, c, off
    for c in range(nc):
        sdy[c] = 0
        sdyx[c] = 0
    if p.L == 1:
        for n in range(tl.n0, tl.n1):
            off = n * p.C + tl.c0
            for c in range(nc):
                sdy[c] += dy[off + c]
                sdyx[c] += dy[off + c] * (x[off + c] - cen[c])
    else:
        for n in range(tl.n0, tl.n1):
            for c in range(nc):
                off = (n * p.C + tl.c0 + c) * p.L + tl.l0
                _run_dot(dy + off, x + off, run, cen[c], &sdy[c], &sdyx[c])
    for c in range(nc):
        dy_out[c] = sdy[c]
        dyx_out[c] = sdyx[c]


cdef void _tile_grad_input(const floating* dy, const floating* x, floating* dx,
                           const _Plan* p, Py_ssize_t t, const double* center,
                           const double* mean_dy, const double* k,
                           const double* scale, bint use_x) noexcept nogil:
    """dx = (dy - mean_dy[c] - (x - center[c]) * k[c]) * scale[c]; dx = dy * scale[c] if not use_x."""
    cdef _Tile tl = _tile(p, t)
    cdef Py_ssize_t run = tl.l1 - tl.l0
    cdef Py_ssize_t n, c, i, off
    cdef double m, a, kk, s
    if not use_x:
        if p.L == 1:
            for n in range(tl.n0, tl.n1):
                off = n * p.C
                for c in range(tl.c0, tl.c1):
                    dx[off + c] = <floating>(dy[off + c] * scale[c])
        else:
            for n in range(tl.n0, tl.n1):
                for c in range(tl.c0, tl.c1):
                    off = (n * p.C + c) * p.L + tl.l0
                    s = scale[c]
                    for i in range(off, off + run):
                        dx[i] = <floating>(dy[i] * s)
    elif p.L == 1:
        for n in range(tl.n0, tl.n1):
            off = n * p.C
            for c in range(tl.c0, tl.c1):
                dx[off + c] = <floating>(
                    ((dy[off + c] - mean_dy[c]) - (x[off + c] - center[c]) * k[c]) * scale[c])
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
    for t in prange(p.n_tiles, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(p, n_threads)):
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


cdef void _normalize(const floating* x, floating* out, const _Plan* p, int n_threads,
                     const double* center, const double* scale,
                     const double* shift) noexcept nogil:
    cdef Py_ssize_t t
    for t in prange(p.n_tiles, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(p, n_threads)):
        _tile_normalize(x, out, p, t, center, scale, shift)


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
    for t in prange(p.n_tiles, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(p, n_threads)):
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
    for t in prange(p.n_tiles, schedule='static', num_threads=n_threads,
                    use_threads_if=_use_threads(p, n_threads)):
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
    """out = (x - center) * scale + shift, per channel, evaluated in double."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef _Plan p
    if _empty(N, C, L):
        return
    p = _make_plan(N, C, L)
    with nogil:
        _normalize(&x[0, 0, 0], &out[0, 0, 0], &p, n_threads,
                   &center[0], &scale[0], &shift[0])


cdef void _affine(Py_ssize_t C, const double* invstd, const param_t[::1] weight,
                  const param_t[::1] bias, double* scale, double* shift) noexcept nogil:
    # scale = invstd * weight, shift = bias (weight 1 and bias 0 when absent)
    cdef Py_ssize_t c
    for c in range(C):
        scale[c] = invstd[c] * weight[c] if weight is not None else invstd[c]
        shift[c] = bias[c] if bias is not None else 0.0


cdef void _update(Py_ssize_t C, param_t[::1] running_mean, param_t[::1] running_var,
                  const double* batch_mean, const double* batch_var, double var_scale,
                  double factor) noexcept nogil:
    # running = (1 - factor) * running + factor * batch, in double
    cdef Py_ssize_t c
    for c in range(C):
        running_mean[c] = <param_t>((1.0 - factor) * running_mean[c] + factor * batch_mean[c])
        running_var[c] = <param_t>((1.0 - factor) * running_var[c]
                                   + factor * (batch_var[c] * var_scale))


def forward_training(const floating[:, :, ::1] x,      # IN  (N, C, L)
                     const param_t[::1] weight,        # IN  (C,) or None
                     const param_t[::1] bias,          # IN  (C,) or None
                     param_t[::1] running_mean,        # IN/OUT (C,) or None: updated
                     param_t[::1] running_var,         # IN/OUT (C,) or None: updated
                     double eps,
                     double factor,                    # running-stat update weight
                     double var_scale,                 # n/(n-1) (unbiased) or 1 (biased)
                     floating[:, :, ::1] out,          # OUT (N, C, L)
                     double[:, ::1] stats,             # OUT (3, C): mean, invstd, biased var
                     bint check_finite,
                     int n_threads):
    """Training forward with batch statistics (Ioffe & Szegedy 2015, PyTorch semantics).

    ``stats`` receives the batch mean, ``1 / sqrt(var + eps)`` and the biased variance.
    When running statistics are given they are updated last, after everything that can
    fail, as ``(1 - factor) * running + factor * batch`` with ``var * var_scale``.
    With ``check_finite``, a batch whose statistics are not finite in some channel (NaN or
    Inf in the data) stops after the statistics pass: ``out`` and the running statistics
    are left untouched and the number of such channels is returned (0 otherwise).
    Requires N * L >= 1.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef double count = <double>(N * L)
    cdef double* buf
    cdef double* mean = &stats[0, 0]
    cdef double* invstd = &stats[1, 0]
    cdef double* var = &stats[2, 0]
    cdef _Plan p
    cdef int rc
    cdef Py_ssize_t bad = 0
    if _empty(N, C, L):
        return 0
    p = _make_plan(N, C, L)
    buf = _alloc_channels(C, 2)
    with nogil:
        rc = _stats(&x[0, 0, 0], &p, n_threads, mean, var)
        if rc == 0:
            for c in range(C):
                var[c] = var[c] / count
                invstd[c] = 1.0 / sqrt(var[c] + eps)
                if check_finite and not (mean[c] - mean[c] == 0 and var[c] - var[c] == 0):
                    bad += 1
            if bad == 0:
                _affine(C, invstd, weight, bias, buf, buf + C)
                _normalize(&x[0, 0, 0], &out[0, 0, 0], &p, n_threads, mean, buf, buf + C)
                if running_mean is not None:
                    _update(C, running_mean, running_var, mean, var, var_scale, factor)
    free(buf)
    if rc != 0:
        raise MemoryError()
    return bad


def forward_inference(const floating[:, :, ::1] x,     # IN  (N, C, L)
                      const param_t[::1] weight,       # IN  (C,) or None
                      const param_t[::1] bias,         # IN  (C,) or None
                      const param_t[::1] running_mean, # IN  (C,)
                      const param_t[::1] running_var,  # IN  (C,)
                      double eps,
                      floating[:, :, ::1] out,         # OUT (N, C, L)
                      double[:, ::1] stats,            # OUT (2, C): running mean, invstd
                      int n_threads):
    """Inference forward: (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    ``stats`` receives the running mean and ``1 / sqrt(running_var + eps)`` in double, the
    constants of the inference backward.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef double* center = &stats[0, 0]
    cdef double* invstd = &stats[1, 0]
    cdef double* buf
    cdef _Plan p
    if C == 0:
        return
    buf = _alloc_channels(C, 2)
    with nogil:
        for c in range(C):
            center[c] = running_mean[c]
            invstd[c] = 1.0 / sqrt(<double>running_var[c] + eps)
        if not _empty(N, C, L):
            p = _make_plan(N, C, L)
            _affine(C, invstd, weight, bias, buf, buf + C)
            _normalize(&x[0, 0, 0], &out[0, 0, 0], &p, n_threads, center, buf, buf + C)
    free(buf)


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


cdef int _backward(const floating[:, :, ::1] grad_output, const floating[:, :, ::1] x,
                   const param_t[::1] weight, const double* center, const double* invstd,
                   bint training, floating[:, :, ::1] grad_input,
                   param_t[::1] grad_weight, param_t[::1] grad_bias,
                   int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    cdef double count = <double>(N * L)
    cdef bint need_sums = training or grad_weight is not None or grad_bias is not None
    cdef double* buf
    cdef _Plan p
    cdef int rc = 0
    if C == 0:
        return 0
    buf = <double*> malloc(5 * C * sizeof(double))
    if buf == NULL:
        return -1
    # buf: [sum_dy | sum_dy_xmu | scale | mean_dy | k]
    for c in range(2 * C):
        buf[c] = 0
    if not _empty(N, C, L):
        p = _make_plan(N, C, L)
        if need_sums:
            rc = _dot(&grad_output[0, 0, 0], &x[0, 0, 0], &p, n_threads, center,
                      buf, buf + C)
        if rc == 0 and grad_input is not None:
            for c in range(C):
                buf[2 * C + c] = invstd[c] * weight[c] if weight is not None else invstd[c]
                buf[3 * C + c] = buf[c] / count
                buf[4 * C + c] = buf[C + c] * invstd[c] * invstd[c] / count
            _grad_input(&grad_output[0, 0, 0], &x[0, 0, 0], &grad_input[0, 0, 0], &p,
                        n_threads, center, buf + 3 * C, buf + 4 * C, buf + 2 * C, training)
    if rc == 0:
        for c in range(C):
            if grad_weight is not None:
                grad_weight[c] = <param_t>(buf[C + c] * invstd[c])
            if grad_bias is not None:
                grad_bias[c] = <param_t>buf[c]
    free(buf)
    return rc


def backward_training(const floating[:, :, ::1] grad_output,  # IN  (N, C, L)
                      const floating[:, :, ::1] x,            # IN  (N, C, L)
                      const param_t[::1] weight,              # IN  (C,) or None
                      const double[:, ::1] stats,             # IN  (>=2, C): mean, invstd
                      floating[:, :, ::1] grad_input,         # OUT (N, C, L) or None
                      param_t[::1] grad_weight,               # OUT (C,) or None
                      param_t[::1] grad_bias,                 # OUT (C,) or None
                      int n_threads):
    """Backward through batch statistics (PyTorch's native_batch_norm_backward, train=True).

    With x_hat = (x - mean) * invstd and sums over N and L:
    grad_bias = sum(dy), grad_weight = sum(dy * x_hat),
    grad_input = (dy - sum(dy)/n - (x - mean) * sum(dy * (x - mean)) * invstd^2 / n) * invstd * w.
    """
    _backward_def(grad_output, x, weight, stats, True, grad_input, grad_weight, grad_bias,
                  n_threads)


def backward_inference(const floating[:, :, ::1] grad_output,  # IN  (N, C, L)
                       const floating[:, :, ::1] x,            # IN  (N, C, L)
                       const param_t[::1] weight,              # IN  (C,) or None
                       const double[:, ::1] stats,             # IN  (2, C): center, invstd
                       floating[:, :, ::1] grad_input,         # OUT (N, C, L) or None
                       param_t[::1] grad_weight,               # OUT (C,) or None
                       param_t[::1] grad_bias,                 # OUT (C,) or None
                       int n_threads):
    """Backward with the running statistics as constants (eval mode with buffers).

    With center = running_mean and invstd = 1 / sqrt(running_var + eps) (as written by
    forward_inference): grad_input = dy * w * invstd,
    grad_weight = sum(dy * (x - center) * invstd), grad_bias = sum(dy).
    """
    _backward_def(grad_output, x, weight, stats, False, grad_input, grad_weight, grad_bias,
                  n_threads)


cdef _backward_def(const floating[:, :, ::1] grad_output, const floating[:, :, ::1] x,
                   const param_t[::1] weight, const double[:, ::1] stats, bint training,
                   floating[:, :, ::1] grad_input, param_t[::1] grad_weight,
                   param_t[::1] grad_bias, int n_threads):
    cdef int rc
    if x.shape[1] == 0:
        return
    with nogil:
        rc = _backward(grad_output, x, weight, &stats[0, 0], &stats[1, 0], training,
                       grad_input, grad_weight, grad_bias, n_threads)
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
        _update(running_mean.shape[0], running_mean, running_var, &batch_mean[0],
                &batch_var[0], var_scale, factor)
