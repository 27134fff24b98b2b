"""Per-sample normalizations: layer norm, group norm and instance norm, fused.

The same graph as batch norm with the reductions moved: ``mu`` and ``var``
are taken per row of x seen as (R, M), a row being the M = Cg * S values of
one group of one sample (R = N * G rows; layer norm: G = 1, Cg = M, S = 1;
instance norm: G = C, Cg = 1). Each value's scale and shift are
``gamma[p]``/``beta[p]``, p = g * Cg + (its index in the row) // S for a row
of group g: per feature for layer norm, per channel for group norm.

Rows are independent, so the forward (each task a run of consecutive
rows) is bitwise the same for any thread count; the backward's parameter
gradients sum over rows: each of K chunks of rows (K a function of the
shape alone) sums its rows in order into its own partial, and the partials
are added in chunk order. Every sum runs in float64 over the fixed lanes of ``_common.pxd``'s
run reductions, so every SIMD build gives the same bits.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.float cimport FLT_MAX, FLT_MIN
from libc.math cimport fabs, sqrt

from cybatchnorm._common cimport (run_sum, run_sqdev, rstart, f64_out, row_dots_f32,
                                  row_dots_f64, run_dots_f32, run_dots_f64, ln_out_nt,
                                  ln_dx_nt, affine_nt, dx_nt, LN_QUAD, ln_quad_f32,
                                  ln_quad_f64, sum_sqdev_f32, sum_sqdev_f64,
                                  store_fence, copy_row, STREAM_BYTES)
cimport cybatchnorm._openmp
from cybatchnorm._openmp cimport CYBN_SIMD, CYBN_BUILD_CFLAGS

SIMD = CYBN_SIMD.decode()                   # the instruction set this module was compiled for
BUILD_CFLAGS = CYBN_BUILD_CFLAGS.decode()   # the flags this module was compiled with

cdef enum:
    # the backward's parameter partials hold at most this many float64 values
    PARTIAL_VALUES = 1 << 18
    MAX_CHUNKS = 64


def row_chunks(Py_ssize_t R, Py_ssize_t P):
    """Chunks of rows of the backward's parameter sums for R rows and P
    parameters: at most 64, at most 2**18 partial values, at least 1; a
    function of the shape alone, never of the thread count."""
    cdef Py_ssize_t k = min(R, <Py_ssize_t>MAX_CHUNKS, PARTIAL_VALUES // max(P, 1))
    return max(k, 1)


# ---------------------------------------------------------------- forward

cdef void _gamma_range(const floating[::1] gamma, double* grange) noexcept:
    # the smallest and largest nonzero |gamma| (both 0 when gamma is all zeros)
    cdef Py_ssize_t p
    cdef double ag
    grange[0] = 0.0
    grange[1] = 0.0
    for p in range(gamma.shape[0]):
        ag = fabs(<double>gamma[p])
        if ag != 0.0:
            if grange[0] == 0.0 or ag < grange[0]:
                grange[0] = ag
            if ag > grange[1]:
                grange[1] = ag


cdef inline bint _f32_row(double iv, const double* grange) noexcept nogil:
    # whether float32 holds ivar and every gamma * ivar of the row to full
    # relative precision (grange: the smallest and largest nonzero |gamma|;
    # a row outside this is computed in float64, as the batch-norm kernels
    # redo such channels)
    if not (iv >= FLT_MIN and iv <= FLT_MAX):
        return False
    return grange[1] == 0.0 or (grange[0] * iv >= FLT_MIN and grange[1] * iv <= FLT_MAX)


cdef inline void _forward_row(const floating* x, Py_ssize_t Cg, Py_ssize_t S,
                              const floating* gamma, const floating* beta, double eps,
                              floating* out, double* mean, double* var,
                              double* ivar, floating* xc, const double* grange,
                              bint stream, double* total, bint has_next) noexcept nogil:
    # IN: one row of M = Cg * S values, gamma/beta from the row's first
    # parameter; grange NULL, or (float32 data) the nonzero |gamma| range;
    # total[0]: the row's sum (run_sum). has_next: the next M values are the
    # task's next row: this row's squared deviations are summed in one loop
    # with that row's sum, which replaces total[0] (its read from memory
    # runs under this row's arithmetic).
    # OUT: the row's mean and 1/sqrt(var + eps) (two passes: the sum, then
    # the squared deviations from the mean, both exact in float64), and out =
    # ((x - mean) * ivar) * gamma + beta in float64, rounded once; with
    # grange (float32), (x - mh) * a + (beta - dm * a) in float32 with
    # a = gamma * fl(ivar), mh = fl(mean), dm = fl(mean - mh): x - mh is exact
    # for x near the mean, so nothing cancels however far the data sit from
    # zero, and mh + dm carry the mean to about float32's epsilon squared (the
    # scheme of the batch-norm kernels' float32 path; twice the SIMD width)
    cdef Py_ssize_t M = Cg * S, c, s, j
    cdef double m, v, iv, w, b
    cdef float mh, dm, fiv, fa, fb
    m = total[0] / M
    if has_next:
        if floating is float:
            sum_sqdev_f32(x + M, NULL, x, m, M, &total[0], &v)
        else:
            sum_sqdev_f64(x + M, NULL, x, m, M, &total[0], &v)
        v = v / M
    else:
        v = run_sqdev(x, m, M) / M
    iv = 1.0 / sqrt(v + eps)
    mean[0] = m
    var[0] = v
    ivar[0] = iv
    if xc != NULL:
        # the caller's copy of x, from the row in cache (a separate copy
        # reads x from memory again); past the caches when the outputs are
        copy_row(xc, x, M * sizeof(floating), stream)
    if floating is float:
        if grange != NULL and _f32_row(iv, grange):
            mh = <float>m
            dm = <float>(m - mh)
            fiv = <float>iv
            if S == 1:
                if stream:
                    ln_out_nt(out, x, gamma, beta, fiv, mh, dm, M)
                    return
                for j in range(M):
                    fa = gamma[j] * fiv
                    out[j] = (x[j] - mh) * fa + (beta[j] - dm * fa)
                return
            for c in range(Cg):
                fa = gamma[c] * fiv
                fb = beta[c] - dm * fa
                if stream:
                    affine_nt(out + c * S, x + c * S, &fa, &mh, &fb, 0, S)
                    continue
                for s in range(c * S, (c + 1) * S):
                    out[s] = (x[s] - mh) * fa + fb
            return
    if S == 1:
        for j in range(M):
            out[j] = <floating>(((x[j] - m) * iv) * gamma[j] + beta[j])
        return
    for c in range(Cg):
        w = gamma[c]
        b = beta[c]
        for s in range(c * S, (c + 1) * S):
            out[s] = <floating>(((x[s] - m) * iv) * w + b)


cdef void _forward_chunk(const floating* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t M,
                         Py_ssize_t G, Py_ssize_t Cg, Py_ssize_t S, const floating* gamma,
                         const floating* beta, double eps, floating* out, double* mean,
                         double* var, double* ivar, floating* xc, const double* grange,
                         bint stream) noexcept nogil:
    # rows [r0, r1) of x (R, M) (every pointer at row 0), in order: each
    # row's squared deviations summed with the next row's values
    cdef double total = 0.0
    cdef Py_ssize_t r, g
    if r0 >= r1:
        return
    total = run_sum(x + r0 * M, M)
    for r in range(r0, r1):
        g = r % G
        _forward_row(x + r * M, Cg, S, gamma + g * Cg, beta + g * Cg, eps, out + r * M,
                     mean + r, var + r, ivar + r, NULL if xc == NULL else xc + r * M, grange,
                     stream, &total, r + 1 < r1)


def forward(const floating[:, ::1] x, const floating[::1] gamma, const floating[::1] beta,
            double eps, Py_ssize_t G, Py_ssize_t S, floating[:, ::1] out, double[::1] mean,
            double[::1] var, double[::1] ivar, int n_threads,
            floating[:, ::1] xcopy=None, bint fast=False):
    """Normalize every row of ``x`` (R, M) on its own statistics.

    Row r is group ``r % G`` of a sample: M = Cg * S values, Cg parameters
    of S values each. ``gamma``/``beta`` (G * Cg,) scale and shift them;
    ``mean``/``var``/``ivar`` (R,) receive each row's float64 mean, biased
    variance and ``1 / sqrt(var + eps)``; ``out`` (x's shape) the
    normalized rows. Each task a run of consecutive rows: bitwise the same
    for any thread count. ``xcopy`` (x's shape, or None) receives a copy of
    x, written as each row is read. ``fast`` (float32 data): the output computed in float32 where
    that is exact enough (see ``_forward_row``; what a minimal cache and the
    PyTorch drop-in take), else every value in float64.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1], Cg, k, K
    cdef floating* xc = NULL
    cdef bint stream = R * M * sizeof(floating) > STREAM_BYTES
    cdef double grange[2]
    cdef double* gr = NULL
    if R == 0 or M == 0:
        return
    if xcopy is not None:
        if xcopy.shape[0] != R or xcopy.shape[1] != M:
            raise ValueError("forward: xcopy must have x's shape")
        xc = &xcopy[0, 0]
    Cg = M // S
    if fast and floating is float:
        _gamma_range(gamma, grange)
        gr = grange
    # chunks of consecutive rows, each a task's: a row's second pass runs
    # with the next row's first (rows are independent: any split gives the
    # same bits)
    K = min(R, 4 * max(n_threads, 1))
    for k in prange(K, schedule='static', num_threads=n_threads, nogil=True):
        _forward_chunk(&x[0, 0], rstart(k, K, R), rstart(k + 1, K, R), M, G, Cg, S,
                       &gamma[0], &beta[0], eps, &out[0, 0], &mean[0], &var[0], &ivar[0],
                       xc, gr, stream)
    if stream:
        store_fence()


# ---------------------------------------------------------------- backward

cdef inline bint _f32_scalar(double v) noexcept nogil:
    # float32 holds v to full relative precision (0, or a normal float32)
    return v == 0.0 or (fabs(v) >= FLT_MIN and fabs(v) <= FLT_MAX)


cdef inline void _backward_row(const floating* d, const floating* x, double m, double iv,
                               Py_ssize_t Cg, Py_ssize_t S, const floating* gamma,
                               floating* dx, double* pdg, double* pdb,
                               const double* grange, bint stream) noexcept nogil:
    # IN: one row of dout and x, its mean and ivar, gamma from the row's first
    # parameter; grange NULL, or (float32 data) the nonzero |gamma| range.
    # OUT: the row's dx (the closed form, with dxhat = dout * gamma:
    # dx = ivar * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))), and its
    # share of dgamma/dbeta added into the chunk's partials pdg/pdb. The sums
    # are float64; with grange, dx = (A * dout + F * (x - mh)) + G in float32
    # (A = gamma * fl(ivar), F = fl(-ivar * b), mh = fl(mean), G = fl(-ivar *
    # a - F * (mean - mh))), as the batch-norm kernels' float32 dx, when
    # float32 holds every factor; otherwise in float64, rounded once
    cdef Py_ssize_t M = Cg * S, c
    cdef double s1 = 0.0, s2 = 0.0, sd, sdx
    if S == 1:
        # both sums in one read of the row (the bits of run_dot and
        # run_weighted_centred)
        if floating is float:
            row_dots_f32(d, gamma, x, m, M, &s1, &s2)
        else:
            row_dots_f64(d, gamma, x, m, M, &s1, &s2)
    else:
        # each channel's sum(dout) and sum(dout * (x - mean)) in one read of
        # its run (the bits of run_sum and run_dot_centred): the row's sums
        # weight them by gamma, the parameters' partials take them as they are
        for c in range(Cg):
            if floating is float:
                run_dots_f32(d + c * S, NULL, x + c * S, m, S, &sd, &sdx)
            else:
                run_dots_f64(d + c * S, NULL, x + c * S, m, S, &sd, &sdx)
            s1 += gamma[c] * sd
            s2 += gamma[c] * sdx
            pdg[c] += iv * sdx
            pdb[c] += sd
    _row_dx(d, x, m, iv, Cg, S, gamma, dx, grange, stream, s1, s2)


cdef inline void _row_dx(const floating* d, const floating* x, double m, double iv,
                         Py_ssize_t Cg, Py_ssize_t S, const floating* gamma, floating* dx,
                         const double* grange, bint stream, double s1,
                         double s2) noexcept nogil:
    # IN: one row as _backward_row's, and its sums s1 = sum(dxhat) and s2 =
    # sum(dxhat * (x - mean)). OUT: the row's dx, as _backward_row says
    cdef Py_ssize_t M = Cg * S, c, s, j
    cdef double a, b, w, F, G
    cdef float mh, fiv, fF, fG, fA
    a = s1 / M
    b = iv * iv * s2 / M          # mean(dxhat * xhat) / ivar, times ivar once per value below
    if floating is float:
        if grange != NULL and _f32_row(iv, grange):
            mh = <float>m
            F = -iv * b
            G = -iv * a - F * (m - <double>mh)
            if _f32_scalar(F) and _f32_scalar(G):
                fiv = <float>iv
                fF = <float>F
                fG = <float>G
                if S == 1:
                    if stream:
                        ln_dx_nt(dx, d, x, gamma, fiv, fF, mh, fG, M)
                        return
                    for j in range(M):
                        dx[j] = (gamma[j] * fiv) * d[j] + fF * (x[j] - mh) + fG
                    return
                for c in range(Cg):
                    fA = gamma[c] * fiv
                    if stream:
                        dx_nt(dx + c * S, d + c * S, x + c * S, &fA, &fF, &mh, &fG, 0, S)
                        continue
                    for s in range(c * S, (c + 1) * S):
                        dx[s] = fA * d[s] + fF * (x[s] - mh) + fG
                return
    if S == 1:
        for j in range(M):
            dx[j] = <floating>(iv * (d[j] * <double>gamma[j] - a - (x[j] - m) * b))
        return
    for c in range(Cg):
        w = gamma[c]
        for s in range(c * S, (c + 1) * S):
            dx[s] = <floating>(iv * (d[s] * w - a - (x[s] - m) * b))


cdef inline void _param_quad(const floating* d, const floating* x, const double* m,
                             const double* iv, Py_ssize_t M, double* pdg,
                             double* pdb) noexcept nogil:
    # S == 1: four consecutive rows' shares of dgamma and dbeta added into
    # the chunk's float64 partials at once, ((r0 + r1) + (r2 + r3)) per value
    cdef Py_ssize_t j
    cdef const floating* d1 = d + M
    cdef const floating* d2 = d + 2 * M
    cdef const floating* d3 = d + 3 * M
    cdef const floating* x1 = x + M
    cdef const floating* x2 = x + 2 * M
    cdef const floating* x3 = x + 3 * M
    for j in range(M):
        pdg[j] += ((d[j] * ((x[j] - m[0]) * iv[0]) + d1[j] * ((x1[j] - m[1]) * iv[1]))
                   + (d2[j] * ((x2[j] - m[2]) * iv[2]) + d3[j] * ((x3[j] - m[3]) * iv[3])))
        pdb[j] += (<double>d[j] + d1[j]) + (<double>d2[j] + d3[j])


cdef inline void _param_row(const floating* d, const floating* x, double m, double iv,
                            Py_ssize_t M, double* pdg, double* pdb) noexcept nogil:
    # S == 1 (a parameter per value): one row's shares of dgamma = sum(dout *
    # xhat) and dbeta = sum(dout) added into the chunk's float64 partials
    # (the row is still in L1 from its dx pass)
    cdef Py_ssize_t j
    for j in range(M):
        pdg[j] += d[j] * ((x[j] - m) * iv)
        pdb[j] += d[j]


cdef inline void _layer_chunk(const floating* d, const floating* x, const double* mean,
                              const double* ivar, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t M,
                              const floating* gamma, floating* dx, double* pdg, double* pdb,
                              const double* grange, bint stream) noexcept nogil:
    # layer norm's rows [r0, r1) of one chunk (d, x, dx: row 0), four at a
    # time where the vectors allow (LN_QUAD): their sums and parameter
    # shares in one read (ln_quad: the bits of row_dots and _param_quad),
    # then each row's dx from cache; the rows short of four one by one
    cdef double s1[4]
    cdef double s2[4]
    cdef Py_ssize_t r = r0, i
    while LN_QUAD and r + 4 <= r1:
        if floating is float:
            ln_quad_f32(d + r * M, gamma, x + r * M, M, mean + r, ivar + r, s1, s2, pdg, pdb)
        else:
            ln_quad_f64(d + r * M, gamma, x + r * M, M, mean + r, ivar + r, s1, s2, pdg, pdb)
        for i in range(4):
            _row_dx(d + (r + i) * M, x + (r + i) * M, mean[r + i], ivar[r + i], M, 1, gamma,
                    dx + (r + i) * M, grange, stream, s1[i], s2[i])
        r += 4
    while r < r1:
        _backward_row(d + r * M, x + r * M, mean[r], ivar[r], M, 1, gamma, dx + r * M, pdg,
                      pdb, grange, stream)
        if (r - r0) % 4 == 3:
            # the parameters' shares of this row and the three before
            _param_quad(d + (r - 3) * M, x + (r - 3) * M, mean + r - 3, ivar + r - 3, M,
                        pdg, pdb)
        elif r == r1 - 1:
            # the chunk's last rows short of four, one by one
            for i in range(r - (r - r0) % 4, r + 1):
                _param_row(d + i * M, x + i * M, mean[i], ivar[i], M, pdg, pdb)
        r += 1


def backward(const floating[:, ::1] dout, const floating[:, ::1] x, const double[::1] mean,
             const double[::1] ivar, const floating[::1] gamma, Py_ssize_t G, Py_ssize_t S,
             floating[:, ::1] dx, double[::1] dgamma, double[::1] dbeta,
             double[:, ::1] pdg, double[:, ::1] pdb, int n_threads, bint fast=False):
    """Closed-form gradients of :func:`forward` given ``dout`` (x's shape).

    ``dx`` receives the input's gradient; ``dgamma``/``dbeta`` (G * Cg,)
    the float64 parameter gradients. ``pdg``/``pdb`` (K, G * Cg) are the
    chunks' partials (K from :func:`row_chunks`), added in chunk order.
    ``fast`` (float32 data): dx computed in float32 where that is exact
    enough (see ``_backward_row``), else in float64.
    """
    cdef Py_ssize_t R = x.shape[0], M = x.shape[1], K = pdg.shape[0], P = pdg.shape[1]
    cdef Py_ssize_t Cg, k, r, g, p
    cdef bint stream = R * M * sizeof(floating) > STREAM_BYTES
    cdef double grange[2]
    cdef double* gr = NULL
    pdg[:, :] = 0.0
    pdb[:, :] = 0.0
    if R == 0 or M == 0:
        dgamma[:] = 0.0
        dbeta[:] = 0.0
        return
    Cg = M // S
    if fast and floating is float:
        _gamma_range(gamma, grange)
        gr = grange
    for k in prange(K, schedule='static', num_threads=n_threads, nogil=True):
        if G == 1 and S == 1:
            # layer norm: every row shares the parameters
            _layer_chunk(&dout[0, 0], &x[0, 0], &mean[0], &ivar[0], rstart(k, K, R),
                         rstart(k + 1, K, R), M, &gamma[0], &dx[0, 0], &pdg[k, 0],
                         &pdb[k, 0], gr, stream)
            continue
        for r in range(rstart(k, K, R), rstart(k + 1, K, R)):
            g = r % G
            _backward_row(&dout[r, 0], &x[r, 0], mean[r], ivar[r], Cg, S, &gamma[g * Cg],
                          &dx[r, 0], &pdg[k, g * Cg], &pdb[k, g * Cg], gr, stream)
            if S == 1:
                # a row of its own group's parameters (S != 1: _backward_row
                # added the row's per-channel shares)
                _param_row(&dout[r, 0], &x[r, 0], mean[r], ivar[r], M, &pdg[k, g * Cg],
                           &pdb[k, g * Cg])
    if stream:
        store_fence()
    for p in range(P):
        dgamma[p] = pdg[0, p]
        dbeta[p] = pdb[0, p]
    for k in range(1, K):
        for p in range(P):
            dgamma[p] += pdg[k, p]
            dbeta[p] += pdb[k, p]


# ------------------------------------------------------ channels last (NHWC)
#
# Group norm (instance norm: G = C) of x read in place as (N, S, C): one
# sample per task. A group's values are Cg channels of every position, so a
# task sums each channel over the positions (one pass, the channels inner:
# the loop vectorizes across channels, and each channel's sum runs over s in
# order whatever the vector width), then the group's channels in order. Two
# passes for the statistics (the sums, then the squared deviations from the
# group's mean, exact in float64), one for the output; the sample's values
# are read from cache by the second and third when they fit. Bitwise the same
# for any thread count and SIMD level (not the same bits as the contiguous
# kernels: the sums run in another order).

cdef inline void _group_of(const double* per_group, Py_ssize_t G, Py_ssize_t Cg,
                           f64_out per_channel) noexcept nogil:
    # spread a value per group to each of its channels
    cdef Py_ssize_t g, c
    for g in range(G):
        for c in range(g * Cg, (g + 1) * Cg):
            per_channel[c] = per_group[g]


cdef inline double _group_sum(const double* acc, Py_ssize_t c0, Py_ssize_t Cg,
                              const floating* w) noexcept nogil:
    # the group's channels added in order, each weighted by w[c] (or not: w NULL)
    cdef double t = 0.0
    cdef Py_ssize_t c
    for c in range(c0, c0 + Cg):
        t += acc[c] if w == NULL else w[c] * acc[c]
    return t


cdef void _forward_nhwc(const floating* x, Py_ssize_t S, Py_ssize_t C, Py_ssize_t G,
                        const floating* gamma, const floating* beta, double eps,
                        floating* out, double* mean, double* var, double* ivar,
                        f64_out acc, f64_out mc, f64_out ic) noexcept nogil:
    # IN: one sample, S positions of C channels. OUT: its G groups' mean,
    # var and ivar, and out = ((x - mean) * ivar) * gamma + beta in float64.
    # acc, mc, ic: C float64 values of scratch each
    cdef Py_ssize_t Cg = C // G, M = Cg * S, s, c, g
    cdef const floating* row
    cdef double dv
    for c in range(C):
        acc[c] = 0.0
    for s in range(S):
        row = x + s * C
        for c in range(C):
            acc[c] += row[c]
    for g in range(G):
        mean[g] = _group_sum(acc, g * Cg, Cg, <const floating*>NULL) / M
    _group_of(mean, G, Cg, mc)
    for c in range(C):
        acc[c] = 0.0
    for s in range(S):
        row = x + s * C
        for c in range(C):
            dv = row[c] - mc[c]
            acc[c] += dv * dv
    for g in range(G):
        var[g] = _group_sum(acc, g * Cg, Cg, <const floating*>NULL) / M
        ivar[g] = 1.0 / sqrt(var[g] + eps)
    _group_of(ivar, G, Cg, ic)
    for s in range(S):
        row = x + s * C
        for c in range(C):
            out[s * C + c] = <floating>(((row[c] - mc[c]) * ic[c]) * gamma[c] + beta[c])


def forward_nhwc(const floating[:, :, ::1] x, const floating[::1] gamma,
                 const floating[::1] beta, double eps, Py_ssize_t G, floating[:, :, ::1] out,
                 double[::1] mean, double[::1] var, double[::1] ivar, double[:, ::1] work,
                 int n_threads):
    """Group norm of ``x`` read as (N, S, C) (channels last): each sample's
    ``G`` groups of C / G channels normalized on their own float64
    statistics; ``mean``/``var``/``ivar`` (N * G,) receive them, group by
    group of each sample (the rows of :func:`forward`); ``out`` (x's shape)
    the output. ``work`` (N, 3 * C) is scratch. One sample per task: bitwise
    the same for any thread count."""
    cdef Py_ssize_t N = x.shape[0], S = x.shape[1], C = x.shape[2], n
    if N == 0 or S == 0 or C == 0:
        return
    if work.shape[0] < N or work.shape[1] < 3 * C:
        raise ValueError("forward_nhwc: work must be at least (N, 3 * C)")
    for n in prange(N, schedule='static', num_threads=n_threads, nogil=True):
        _forward_nhwc(&x[n, 0, 0], S, C, G, &gamma[0], &beta[0], eps, &out[n, 0, 0],
                      &mean[n * G], &var[n * G], &ivar[n * G], &work[n, 0], &work[n, C],
                      &work[n, 2 * C])


cdef void _backward_nhwc(const floating* d, const floating* x, Py_ssize_t S, Py_ssize_t C,
                         Py_ssize_t G, const double* mean, const double* ivar,
                         const floating* gamma, floating* dx, f64_out pdg, f64_out pdb,
                         f64_out mc, f64_out ac, f64_out bc, f64_out ic) noexcept nogil:
    # IN: one sample's dout and x (S positions of C channels), its groups'
    # mean and ivar. OUT: its dx (the closed form, as _backward_row), and its
    # per-channel sums pdb = sum(dout), pdg = ivar * sum(dout * (x - mean))
    # (this sample's share of dgamma/dbeta). mc, ac, bc, ic: C float64 of scratch
    cdef Py_ssize_t Cg = C // G, M = Cg * S, s, c, g
    cdef const floating* dr
    cdef const floating* xr
    cdef double iv, s1, s2
    _group_of(mean, G, Cg, mc)
    for c in range(C):
        pdb[c] = 0.0
        pdg[c] = 0.0
    for s in range(S):
        dr = d + s * C
        xr = x + s * C
        for c in range(C):
            pdb[c] += dr[c]
            pdg[c] += dr[c] * (xr[c] - mc[c])
    for g in range(G):
        iv = ivar[g]
        s1 = _group_sum(pdb, g * Cg, Cg, gamma)
        s2 = _group_sum(pdg, g * Cg, Cg, gamma)
        for c in range(g * Cg, (g + 1) * Cg):
            ac[c] = s1 / M
            bc[c] = iv * iv * s2 / M
            ic[c] = iv
            pdg[c] = iv * pdg[c]
    for s in range(S):
        dr = d + s * C
        xr = x + s * C
        for c in range(C):
            dx[s * C + c] = <floating>(ic[c] * (dr[c] * <double>gamma[c] - ac[c]
                                                - (xr[c] - mc[c]) * bc[c]))


def backward_nhwc(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                  const double[::1] mean, const double[::1] ivar, const floating[::1] gamma,
                  Py_ssize_t G, floating[:, :, ::1] dx, double[::1] dgamma, double[::1] dbeta,
                  double[:, ::1] work, int n_threads):
    """Closed-form gradients of :func:`forward_nhwc` given ``dout`` (x's
    shape, (N, S, C)): ``dx``, and the float64 ``dgamma``/``dbeta`` (C,), the
    samples' shares added in sample order. ``work`` (N, 6 * C) is scratch."""
    cdef Py_ssize_t N = x.shape[0], S = x.shape[1], C = x.shape[2], n, c
    dgamma[:] = 0.0
    dbeta[:] = 0.0
    if N == 0 or S == 0 or C == 0:
        return
    if work.shape[0] < N or work.shape[1] < 6 * C:
        raise ValueError("backward_nhwc: work must be at least (N, 6 * C)")
    for n in prange(N, schedule='static', num_threads=n_threads, nogil=True):
        _backward_nhwc(&dout[n, 0, 0], &x[n, 0, 0], S, C, G, &mean[n * G], &ivar[n * G],
                       &gamma[0], &dx[n, 0, 0], &work[n, 0], &work[n, C], &work[n, 2 * C],
                       &work[n, 3 * C], &work[n, 4 * C], &work[n, 5 * C])
    for n in range(N):
        for c in range(C):
            dgamma[c] += work[n, c]
            dbeta[c] += work[n, C + c]
