"""Fused kernels: the whole forward pass and the closed-form backward pass.

The staged kernels in ``_nodes`` follow the graph one node at a time and make
one pass over memory per node. These do the same arithmetic in as few passes
as the maths allows:

* forward: one pass for the statistics (per task, sums of x - h and (x - h)**2
  with h one of the task's values, merged by Chan; see task_moments in
  _common.pxd), one pass that writes ``out`` (and, for a full
  cache, ``xmu`` and ``xhat``): 1 read + 1 read and 1 write of x-sized memory;
* backward: one pass for ``sum(dout)`` and ``sum(dout * xhat)``, one pass that
  writes ``dx = (gamma * ivar / M) * (M * dout - sum(dout) - xhat * sum(dout * xhat))``.
  ``xhat`` is read from a full cache or recomputed from ``x`` (minimal cache).

Work is split into tasks over a fixed grid: K chunks of rows times blocks of
channels. Every task walks the rows of its chunk and reads the contiguous run
of its block in each row. Reductions write one partial result per (chunk,
channel), merged afterwards chunk by chunk in order. K depends only on the
shape and dtype (the caller picks it), never on the thread count, so results
are bitwise identical for any number of threads, and a batch with fewer
channels than threads still keeps every thread busy. K == 1 means strips: a
task owns every row of its channels and makes both passes over them while
they are in cache, so x (and dout) are read from memory once. Outputs over
STREAM_BYTES are written with non-temporal stores (see _common.pxd).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, fabs
from libc.float cimport FLT_MIN, FLT_MAX
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t

from cybatchnorm._common cimport (run_sum, run_dot, run_dot_centred, row_chunks as _row_chunks,
                                  grid_block, Task, task_bounds, n_tasks, chunk_sums,
                                  merge_chunks, MERGE_BLOCK, f64_out, stats_pass, task_moments,
                                  copy_row, store_fence, affine_nt, dx_nt,
                                  normalize_rows, dx_rows,
                                  STREAM_BYTES)
cimport cybatchnorm._openmp
from cybatchnorm._openmp cimport CYBN_SIMD, CYBN_BUILD_CFLAGS

SIMD = CYBN_SIMD.decode()                   # the instruction set this module was compiled for
BUILD_CFLAGS = CYBN_BUILD_CFLAGS.decode()   # the flags this module was compiled with


def row_chunks(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t itemsize):
    """Number of row chunks of the work grid for an (N, C, S) array of
    ``itemsize``-byte values; 1 when the grid is made of strips (every row of
    a block of channels, small enough to stay in cache between two passes)."""
    return _row_chunks(N, C, S, itemsize)


cpdef enum Passes:
    # which sweeps _forward/_backward run: both (the kernels' use), or one
    # alone over the chunked grid (the benchmark's per-sweep table)
    REDUCE = 1      # statistics, or the backward's sums
    SWEEP = 2       # normalize, or dx
    BOTH = 3


# ------------------------------------------------------------------ forward

cdef inline float _f32_flag(double v) noexcept nogil:
    # 0 when float32 holds the per-channel factor v to full relative
    # precision (0 itself, or a normal float32), else 1: the rows of such a
    # channel are computed in float64 instead (a scale below FLT_MIN loses
    # bits, one above FLT_MAX overflows, though the values it makes may be
    # representable: std 1e25 gives ivar**2 = 1e-50)
    return 0.0 if (v == 0.0 or (fabs(v) >= FLT_MIN and fabs(v) <= FLT_MAX)) else 1.0


cdef inline Py_ssize_t _flagged(const float* flags, Py_ssize_t c0, Py_ssize_t c1,
                                Py_ssize_t* idx) noexcept nogil:
    # the channels of [c0, c1) whose factors float32 cannot hold, into idx
    # (relative to c0); returns how many. Their rows are redone in float64
    # after the float32 ones, so every other channel keeps its bits
    cdef Py_ssize_t c, k = 0
    for c in range(c0, c1):
        if flags[c] != 0.0:
            idx[k] = c - c0
            k += 1
    return k


cdef inline void _affine_rows_f32(const float* x, Py_ssize_t C, Py_ssize_t S, const float* cf,
                                  float* out, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                                  bint stream, const Py_ssize_t* redo, Py_ssize_t nredo,
                                  const float* gamma, const float* beta,
                                  const double* m, const double* iv, float* xc) noexcept nogil:
    # out = (x - mh) * a + b in float32: twice the SIMD width of the float64
    # path. cf holds three (C,) rows: a = gamma * ivar, mh = fl(mu) and
    # b = fl(beta - (mu - mh) * a). x - mh is exact for x near mu (Sterbenz),
    # so no digits cancel however far the data sit from zero (x * a +
    # (beta - mu * a) would lose them); the small rest of mu, mu - mh, is
    # folded into b in float64.
    cdef Py_ssize_t n, c, s, k, j
    cdef const float* a = cf
    cdef const float* mh = cf + C
    cdef const float* b = cf + 2 * C
    cdef const float* xr
    cdef float* orow
    cdef float ac, bc, hc
    for n in range(r0, r1):
        xr = x + (n * C + c0) * S
        orow = out + (n * C + c0) * S
        if stream:
            # outputs past the caches: non-temporal stores from the registers
            if S == 1:
                affine_nt(orow, xr, a + c0, mh + c0, b + c0, 1, c1 - c0)
            else:
                for c in range(c1 - c0):
                    affine_nt(orow + c * S, xr + c * S, a + c0 + c, mh + c0 + c, b + c0 + c, 0, S)
        elif S == 1:
            for c in range(c1 - c0):
                orow[c] = (xr[c] - mh[c0 + c]) * a[c0 + c] + b[c0 + c]
        else:
            for c in range(c1 - c0):
                ac = a[c0 + c]
                hc = mh[c0 + c]
                bc = b[c0 + c]
                k = c * S
                for s in range(S):
                    orow[k + s] = (xr[k + s] - hc) * ac + bc
        for j in range(nredo):
            # a channel whose scale float32 cannot hold: as normalize_rows does
            c = redo[j]
            k = c * S
            for s in range(S):
                orow[k + s] = <float>(gamma[c0 + c] * ((xr[k + s] - m[c0 + c]) * iv[c0 + c])
                                      + beta[c0 + c])
        if xc != NULL:
            copy_row(xc + (n * C + c0) * S, xr, (c1 - c0) * S * sizeof(float), stream)


cdef inline void _normalize_task(const floating* x, Py_ssize_t C, Py_ssize_t S,
                                 const floating* gamma, const floating* beta,
                                 const double* m, const double* iv,
                                 floating* out, floating* xmu, floating* xhat, bint keep_nodes,
                                 const float* ab, Py_ssize_t* redo, Py_ssize_t slot,
                                 bint stream, Py_ssize_t r0, Py_ssize_t r1,
                                 Py_ssize_t c0, Py_ssize_t c1, floating* xc) noexcept nogil:
    # the second forward pass over one task's rows and channels; with
    # ``stream`` (outputs larger than the cache, never with the nodes) rows
    # are stored non-temporally straight from the registers (affine_nt,
    # norm_nt_f64), so writing out costs no read of its old contents.
    # redo + slot: this task's own c1 - c0 slots of scratch (with ab)
    cdef Py_ssize_t nredo
    if floating is float:
        if ab != NULL:
            nredo = _flagged(ab + 3 * C, c0, c1, redo + slot)
            _affine_rows_f32(x, C, S, ab, out, r0, r1, c0, c1, stream, redo + slot, nredo,
                             gamma, beta, m, iv, xc)
        else:
            normalize_rows(x, C, S, gamma, beta, m, iv, out, xmu, xhat, keep_nodes,
                           r0, r1, c0, c1, stream, xc)
    else:
        normalize_rows(x, C, S, gamma, beta, m, iv, out, xmu, xhat, keep_nodes,
                       r0, r1, c0, c1, stream, xc)
    if stream:
        store_fence()


cdef inline void _block_stats(Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t N, Py_ssize_t S,
                              Py_ssize_t K, Py_ssize_t C, double eps,
                              bint use_batch_stats, const floating* gamma,
                              const floating* beta, floating* mu, floating* var,
                              floating* sqrtvar, floating* ivar, f64_out mu64,
                              f64_out ivar64, f64_out m2,
                              const double* shift, const double* pmean,
                              const double* pm2, float* ab) noexcept nogil:
    # channels [c0, c1)'s statistics from their K partials (Chan, in chunk
    # order) or, in eval mode, from the given mu and var; ab gets the float32
    # affine coefficients when it is not NULL (and, in its fourth row,
    # whether float32 holds the scale: _f32_flag). Loops over channels, with
    # no dependence between them: they vectorize, divisions and square roots
    # included (one channel at a time, their latencies added up to as much
    # as the statistics sweep of a cache-resident batch).
    cdef double m, sd, a
    cdef Py_ssize_t c
    if not use_batch_stats:
        for c in range(c0, c1):
            mu64[c] = mu[c]
            ivar64[c] = var[c]          # the variance, until the loop below
    else:
        merge_chunks(N, S, K, C, c0, c1, shift, pmean, pm2, mu64, m2)
        for c in range(c0, c1):
            ivar64[c] = m2[c] / (<double>N * S)
            mu[c] = <floating>mu64[c]
            var[c] = <floating>ivar64[c]
    for c in range(c0, c1):
        sd = sqrt(ivar64[c] + eps)
        sqrtvar[c] = <floating>sd
        ivar[c] = <floating>(1.0 / sd)
        ivar64[c] = 1.0 / sd
        if ab != NULL:      # loop-invariant: gcc makes two loops of this one
            m = mu64[c]
            a = gamma[c] / sd
            ab[c] = <float>a
            ab[C + c] = <float>m
            ab[2 * C + c] = <float>(beta[c] - (m - <float>m) * <float>a)
            ab[3 * C + c] = _f32_flag(a)


cdef inline void _forward_strip(Task w, const floating* x, Py_ssize_t N, Py_ssize_t C,
                                Py_ssize_t S, const floating* gamma, const floating* beta,
                                double eps, floating* out, floating* xmu, floating* xhat,
                                bint keep_nodes, floating* mu, floating* var,
                                floating* sqrtvar, floating* ivar, double* mu64,
                                double* ivar64, double* m2, bint use_batch_stats, double* pmean,
                                double* pm2, double* shift, float* ab, Py_ssize_t* redo,
                                bint stream, floating* xc) noexcept nogil:
    # one strip task of _forward (K == 1): statistics and normalization of
    # every row of channels [w.c0, w.c1)
    cdef Py_ssize_t c
    if use_batch_stats:
        for c in range(w.c0, w.c1):
            shift[c] = x[c * S]
        task_moments(x, C, S, 0, N, w.c0, w.c1, shift + w.c0, pmean + w.c0, pm2 + w.c0)
    _block_stats(w.c0, w.c1, N, S, 1, C, eps, use_batch_stats, gamma, beta, mu, var, sqrtvar, ivar,
                 mu64, ivar64, m2, shift, pmean, pm2, ab)
    _normalize_task(x, C, S, gamma, beta, mu64, ivar64, out, xmu, xhat, keep_nodes, ab, redo,
                    w.c0, stream, 0, N, w.c0, w.c1, xc)


cdef int _forward(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                  const floating* gamma, const floating* beta, double eps,
                  floating* out, floating* xmu, floating* xhat, bint keep_nodes,
                  floating* mu, floating* var, floating* sqrtvar, floating* ivar,
                  double* mu64, double* ivar64, double* m2, bint use_batch_stats,
                  double* pmean, double* pm2,
                  double* shift, Py_ssize_t K, int n_threads, int passes=BOTH,
                  floating* xc=NULL) except -1:
    # the fused forward over raw pointers (the (N, C, S) arrays C-contiguous,
    # (K, C) partials, (C,) vectors): what ``forward`` and ``forward_tensor``
    # share, so the two give the same bits by construction. Raises only
    # MemoryError, before anything is written. ``passes`` (the benchmark's
    # per-sweep table) runs one sweep alone over the grid: REDUCE leaves the
    # partials, SWEEP merges the partials left by a REDUCE call and writes.
    # ``xc``: where the normalize sweep copies x, row by row as it reads it
    # (a layer's own copy of its input, at the price of one write).
    cdef Py_ssize_t FB = grid_block(N, C, S, sizeof(floating)), t, b
    cdef Task w
    cdef float* ab = NULL
    cdef Py_ssize_t* redo = NULL
    cdef bint fast = floating is float and not keep_nodes
    cdef bint stream = not keep_nodes and N * C * S * sizeof(floating) > STREAM_BYTES
    if C == 0:
        return 0
    if fast:
        # float32 coefficients, and for every (chunk, channel) a slot to list
        # the channels redone in float64: each task owns its own slots
        ab = <float*>malloc(4 * C * sizeof(float))
        redo = <Py_ssize_t*>malloc(K * C * sizeof(Py_ssize_t))
        if ab == NULL or redo == NULL:
            free(ab)
            free(redo)
            raise MemoryError("forward: no memory for per-channel coefficients")
    with nogil:
        if K == 1 and n_threads == 1 and passes == BOTH:
            # strips on one thread: no OpenMP region (a team of one costs
            # about a microsecond, what a small batch's kernel takes)
            for t in range(n_tasks(1, C, FB)):
                _forward_strip(task_bounds(t, 1, N, C, FB), x, N, C, S, gamma, beta, eps,
                               out, xmu, xhat, keep_nodes, mu, var, sqrtvar, ivar, mu64,
                               ivar64, m2, use_batch_stats, pmean, pm2, shift, ab, redo, stream,
                               xc)
        elif K == 1 and passes == BOTH:
            # strips: statistics and normalization of a block in one task
            for t in prange(n_tasks(1, C, FB), schedule='static', num_threads=n_threads):
                _forward_strip(task_bounds(t, 1, N, C, FB), x, N, C, S, gamma, beta, eps,
                               out, xmu, xhat, keep_nodes, mu, var, sqrtvar, ivar, mu64,
                               ivar64, m2, use_batch_stats, pmean, pm2, shift, ab, redo, stream,
                               xc)
        else:
            if use_batch_stats and passes & REDUCE:
                # pass 1: partial statistics of every (chunk, block) task
                stats_pass(x, N, C, S, shift, pmean, pm2, K, n_threads)
            # merge the chunks in order (Chan), per block of channels
            for b in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                            num_threads=n_threads):
                _block_stats(b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK), N, S, K, C, eps,
                             use_batch_stats, gamma, beta, mu, var, sqrtvar, ivar, mu64, ivar64,
                             m2, shift, pmean, pm2, ab)
            # pass 2: normalize
            for t in prange(n_tasks(K, C, FB) if passes & SWEEP else 0, schedule='static',
                            num_threads=n_threads):
                w = task_bounds(t, K, N, C, FB)
                _normalize_task(x, C, S, gamma, beta, mu64, ivar64, out, xmu, xhat,
                                keep_nodes, ab, redo, w.k * C + w.c0, stream, w.r0, w.r1,
                                w.c0, w.c1, xc)
    free(ab)
    free(redo)
    return 0


def forward(const floating[:, :, ::1] x, const floating[::1] gamma,
            const floating[::1] beta, double eps, floating[:, :, ::1] out,
            floating[:, :, ::1] xmu, floating[:, :, ::1] xhat,
            bint keep_nodes, floating[::1] mu, floating[::1] var,
            floating[::1] sqrtvar, floating[::1] ivar, double[::1] mu64,
            double[::1] ivar64, double[::1] m2, bint use_batch_stats, double[:, ::1] pmean,
            double[:, ::1] pm2, double[::1] shift, int n_threads, int passes=BOTH,
            floating[:, :, ::1] xcopy=None):
    """Batch statistics and normalized output in two passes over ``x``.

    ``pmean``/``pm2`` (K, C) hold the per-chunk partial statistics, K being
    the number of row chunks (``row_chunks``); ``shift`` (C,) is scratch. The
    statistics are written to ``mu``, ``var``, ``sqrtvar``, ``ivar`` in x's
    dtype and to ``mu64``/``ivar64`` in float64 (what the normalization and a
    minimal-cache backward use), the sums of squared deviations to ``m2``
    (float64; left as they are without ``use_batch_stats``). ``xmu`` and ``xhat`` are
    written only when ``keep_nodes`` (pass ``out`` for both otherwise). Without
    ``use_batch_stats`` the statistics pass is skipped: ``mu`` and ``var`` are read
    (eval mode).
    With K == 1 each task owns a strip (all rows of its channels) and
    normalizes it right after reducing it, while it is still in cache.
    ``passes`` (the benchmark's per-sweep table): ``REDUCE`` runs the
    statistics sweep alone, ``SWEEP`` the normalization alone (from the
    partials a ``REDUCE`` call left), each over the chunked grid.
    ``xcopy`` (x's shape, or None): receives a copy of x, written by the
    normalize sweep as it reads each row.
    """
    cdef floating* xc = NULL
    if x.shape[1] == 0:
        return
    if xcopy is not None:
        if xcopy.shape[0] != x.shape[0] or xcopy.shape[1] != x.shape[1] or \
                xcopy.shape[2] != x.shape[2]:
            raise ValueError("forward: xcopy must have x's shape")
        xc = &xcopy[0, 0, 0]
    _forward(&x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], &gamma[0], &beta[0], eps,
             &out[0, 0, 0], &xmu[0, 0, 0], &xhat[0, 0, 0], keep_nodes, &mu[0], &var[0],
             &sqrtvar[0], &ivar[0], &mu64[0], &ivar64[0], &m2[0], use_batch_stats,
             &pmean[0, 0], &pm2[0, 0], &shift[0], pmean.shape[0], n_threads, passes, xc)


# ----------------------------------------------------------------- backward

cdef inline void _sums_rows(const floating* dout, const floating* src, Py_ssize_t C,
                            Py_ssize_t S, bint from_x, const double* m, const double* iv,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                            Py_ssize_t c1, f64_out sd,
                            f64_out sdx) noexcept nogil:
    # sd = sum(dout), sdx = sum(dout * xhat) over rows [r0, r1); xhat is src
    # itself, or (src - mu) * ivar when src is x (minimal cache), where ivar
    # multiplies the finished sum (sum(dout * (x - mu)) * ivar: one
    # multiplication per channel instead of one per value). For S == 1,
    # four rows per accumulator update; the loops over channels vectorize.
    cdef Py_ssize_t n, c, k, q, Q
    cdef const floating* gr
    cdef const floating* hr
    cdef double h0, h1, h2, h3
    for c in range(c1 - c0):
        sd[c] = 0.0
        sdx[c] = 0.0
    if S == 1:
        # four rows a quarter apart per update (see _common.pxd), then the rest
        q = (r1 - r0) // 4
        Q = q * C
        for n in range(r0, r0 + q):
            gr = dout + n * C + c0
            hr = src + n * C + c0
            for c in range(c1 - c0):
                sd[c] += ((<double>gr[c] + gr[Q + c]) + (<double>gr[2 * Q + c] + gr[3 * Q + c]))
            if from_x:
                for c in range(c1 - c0):
                    h0 = hr[c] - m[c0 + c]
                    h1 = hr[Q + c] - m[c0 + c]
                    h2 = hr[2 * Q + c] - m[c0 + c]
                    h3 = hr[3 * Q + c] - m[c0 + c]
                    sdx[c] += ((gr[c] * h0 + gr[Q + c] * h1)
                               + (gr[2 * Q + c] * h2 + gr[3 * Q + c] * h3))
            else:
                for c in range(c1 - c0):
                    sdx[c] += ((<double>gr[c] * hr[c] + <double>gr[Q + c] * hr[Q + c])
                               + (<double>gr[2 * Q + c] * hr[2 * Q + c]
                                  + <double>gr[3 * Q + c] * hr[3 * Q + c]))
        for n in range(r0 + 4 * q, r1):
            gr = dout + n * C + c0
            hr = src + n * C + c0
            if from_x:
                for c in range(c1 - c0):
                    sd[c] += gr[c]
                    sdx[c] += gr[c] * (hr[c] - m[c0 + c])
            else:
                for c in range(c1 - c0):
                    sd[c] += gr[c]
                    sdx[c] += <double>gr[c] * hr[c]
    else:
        for n in range(r0, r1):
            gr = dout + (n * C + c0) * S
            hr = src + (n * C + c0) * S
            for c in range(c1 - c0):
                k = c * S
                sd[c] += run_sum(gr + k, S)
                if from_x:
                    sdx[c] += run_dot_centred(gr + k, hr + k, m[c0 + c], S)
                else:
                    sdx[c] += run_dot(gr + k, hr + k, S)
    if from_x:
        for c in range(c1 - c0):
            sdx[c] = sdx[c] * iv[c0 + c]


cdef inline void _dx_rows_f32(const float* dout, const float* x, Py_ssize_t C, Py_ssize_t S,
                              const float* cf, float* dx, Py_ssize_t r0, Py_ssize_t r1,
                              Py_ssize_t c0, Py_ssize_t c1,
                              bint stream, const Py_ssize_t* redo, Py_ssize_t nredo,
                              const double* m, const double* iv,
                              const double* coef) noexcept nogil:
    # dx = A * dout + F * (x - mh) + G in float32, with F = E * ivar, mh =
    # fl(mu) as in _affine_rows_f32 (no cancellation) and G = fl(B - F *
    # (mu - mh)) folded in float64; cf holds four (C,) rows: A, F, mh, G
    cdef Py_ssize_t n, c, s, k, j
    cdef const float* A = cf
    cdef const float* F = cf + C
    cdef const float* mh = cf + 2 * C
    cdef const float* G = cf + 3 * C
    cdef const float* gr
    cdef const float* xr
    cdef float* dr
    cdef float ac, fc, hc, gc
    for n in range(r0, r1):
        gr = dout + (n * C + c0) * S
        xr = x + (n * C + c0) * S
        dr = dx + (n * C + c0) * S
        if stream:
            # dx past the caches: non-temporal stores from the registers
            if S == 1:
                dx_nt(dr, gr, xr, A + c0, F + c0, mh + c0, G + c0, 1, c1 - c0)
            else:
                for c in range(c1 - c0):
                    dx_nt(dr + c * S, gr + c * S, xr + c * S, A + c0 + c, F + c0 + c,
                          mh + c0 + c, G + c0 + c, 0, S)
        elif S == 1:
            for c in range(c1 - c0):
                dr[c] = A[c0 + c] * gr[c] + F[c0 + c] * (xr[c] - mh[c0 + c]) + G[c0 + c]
        else:
            for c in range(c1 - c0):
                ac = A[c0 + c]
                fc = F[c0 + c]
                hc = mh[c0 + c]
                gc = G[c0 + c]
                k = c * S
                for s in range(S):
                    dr[k + s] = ac * gr[k + s] + fc * (xr[k + s] - hc) + gc
        for j in range(nredo):
            # a channel whose A or F float32 cannot hold: as dx_rows does
            c = redo[j]
            k = c * S
            for s in range(S):
                dr[k + s] = <float>(coef[c0 + c] * gr[k + s]
                                    + coef[2 * C + c0 + c] * ((xr[k + s] - m[c0 + c])
                                                              * iv[c0 + c])
                                    + coef[C + c0 + c])


cdef inline void _block_coef(Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t K, Py_ssize_t C,
                             double M, bint use_batch_stats,
                             const floating* gamma, const double* mu64,
                             const double* ivar64, floating* dgamma,
                             floating* dbeta, const double* psum,
                             const double* pdot, f64_out coef,
                             float* afg) noexcept nogil:
    # merge channels [c0, c1)'s K partial sums in chunk order; dx = A * dout
    # + E * xhat + B with A = gamma * ivar, B = -A * sum(dout) / M, E = -A *
    # sum(dout * xhat) / M, the three rows of coef. Loops over channels (they
    # vectorize, as in _block_stats); the sums wait in B's and E's rows
    cdef double sd, sdx, a, f
    cdef Py_ssize_t c
    chunk_sums(psum, K, C, c0, c1, coef + C)
    chunk_sums(pdot, K, C, c0, c1, coef + 2 * C)
    for c in range(c0, c1):
        sd = coef[C + c]
        sdx = coef[2 * C + c]
        dbeta[c] = <floating>sd
        dgamma[c] = <floating>sdx
        a = gamma[c] * ivar64[c]
        coef[c] = a
        if use_batch_stats:
            coef[C + c] = -a * sd / M
            coef[2 * C + c] = -a * sdx / M
        else:
            coef[C + c] = 0.0
            coef[2 * C + c] = 0.0
    if afg != NULL:
        # F = E * ivar involves ivar**2 (ivar**3 through E): a channel whose
        # A or F float32 cannot hold takes the float64 rows (_f32_flag)
        for c in range(c0, c1):
            a = coef[c]
            f = coef[2 * C + c] * ivar64[c]
            afg[c] = <float>a
            afg[C + c] = <float>f
            afg[2 * C + c] = <float>mu64[c]
            afg[3 * C + c] = <float>(coef[C + c] - afg[C + c] * (mu64[c] - <float>mu64[c]))
            afg[4 * C + c] = _f32_flag(a) + _f32_flag(f)


cdef inline void _dx_task(const floating* dout, const floating* src, Py_ssize_t C,
                          Py_ssize_t S, bint from_x,
                          const double* mu64, const double* ivar64,
                          const double* coef, const float* afg, Py_ssize_t* redo,
                          Py_ssize_t slot, bint stream, floating* dx,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                          Py_ssize_t c1) noexcept nogil:
    # the second backward pass over one task's rows and channels; with
    # ``stream`` rows of dx are written with non-temporal stores (straight
    # from the registers from x; through an L1 row buffer from a full cache's
    # xhat: dx_rows). redo + slot: this task's own c1 - c0 slots of scratch
    # (with afg)
    cdef Py_ssize_t nredo
    if floating is float:
        if afg != NULL:
            nredo = _flagged(afg + 4 * C, c0, c1, redo + slot)
            _dx_rows_f32(dout, src, C, S, afg, dx, r0, r1, c0, c1, stream, redo + slot, nredo,
                         mu64, ivar64, coef)
        else:
            dx_rows(dout, src, C, S, from_x, mu64, ivar64, coef, coef + C, coef + 2 * C, dx,
                    r0, r1, c0, c1, stream)
    else:
        dx_rows(dout, src, C, S, from_x, mu64, ivar64, coef, coef + C, coef + 2 * C, dx,
                r0, r1, c0, c1, stream)
    if stream:
        store_fence()


cdef inline void _backward_strip(Task w, const floating* dout, const floating* src,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint from_x,
                                 const double* mu64, const double* ivar64,
                                 const floating* gamma, floating* dx, floating* dgamma,
                                 floating* dbeta, bint use_batch_stats, double* psum, double* pdot,
                                 double* coef, float* afg, Py_ssize_t* redo,
                                 bint stream) noexcept nogil:
    # one strip task of _backward (K == 1): sums, coefficients and dx of
    # every row of channels [w.c0, w.c1)
    _sums_rows(dout, src, C, S, from_x, mu64, ivar64, 0, N, w.c0, w.c1, psum + w.c0,
               pdot + w.c0)
    _block_coef(w.c0, w.c1, 1, C, <double>N * S, use_batch_stats, gamma, mu64, ivar64, dgamma,
                dbeta, psum, pdot, coef, afg)
    _dx_task(dout, src, C, S, from_x, mu64, ivar64, coef, afg, redo, w.c0, stream, dx, 0, N,
             w.c0, w.c1)


cdef int _backward(const floating* dout, const floating* src, Py_ssize_t N, Py_ssize_t C,
                   Py_ssize_t S, bint from_x, const double* mu64, const double* ivar64,
                   const floating* gamma, floating* dx, floating* dgamma, floating* dbeta,
                   bint use_batch_stats, double* psum, double* pdot, double* coef,
                   Py_ssize_t K, int n_threads, int passes=BOTH) except -1:
    # the closed-form backward over raw pointers: what ``backward`` and
    # ``backward_tensor`` share. Raises only MemoryError, before anything is
    # written. ``passes`` as in _forward.
    cdef Py_ssize_t FB = grid_block(N, C, S, sizeof(floating)), t, b
    cdef Task w
    cdef double M = <double>N * S
    cdef float* afg = NULL
    cdef Py_ssize_t* redo = NULL
    cdef bint fast = floating is float and from_x
    cdef bint stream = N * C * S * sizeof(floating) > STREAM_BYTES
    if C == 0:
        return 0
    if fast:
        # as in forward: float32 coefficients and per-(chunk, channel) slots
        afg = <float*>malloc(5 * C * sizeof(float))
        redo = <Py_ssize_t*>malloc(K * C * sizeof(Py_ssize_t))
        if afg == NULL or redo == NULL:
            free(afg)
            free(redo)
            raise MemoryError("backward: no memory for per-channel coefficients")
    with nogil:
        if K == 1 and n_threads == 1 and passes == BOTH:
            # strips on one thread: no OpenMP region (as in _forward)
            for t in range(n_tasks(1, C, FB)):
                _backward_strip(task_bounds(t, 1, N, C, FB), dout, src, N, C, S, from_x, mu64,
                                ivar64, gamma, dx, dgamma, dbeta, use_batch_stats, psum, pdot,
                                coef, afg, redo, stream)
        elif K == 1 and passes == BOTH:
            # strips: sums, coefficients and dx of a block in one task
            for t in prange(n_tasks(1, C, FB), schedule='static', num_threads=n_threads):
                _backward_strip(task_bounds(t, 1, N, C, FB), dout, src, N, C, S, from_x, mu64,
                                ivar64, gamma, dx, dgamma, dbeta, use_batch_stats, psum, pdot,
                                coef, afg, redo, stream)
        else:
            # pass 1: partial sums of every (chunk, block) task
            for t in prange(n_tasks(K, C, FB) if passes & REDUCE else 0, schedule='static',
                            num_threads=n_threads):
                w = task_bounds(t, K, N, C, FB)
                _sums_rows(dout, src, C, S, from_x, mu64, ivar64, w.r0, w.r1, w.c0, w.c1,
                           psum + w.k * C + w.c0, pdot + w.k * C + w.c0)
            for b in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                            num_threads=n_threads):
                _block_coef(b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK), K, C, M,
                            use_batch_stats, gamma, mu64, ivar64, dgamma, dbeta, psum, pdot, coef,
                            afg)
            # pass 2: dx
            for t in prange(n_tasks(K, C, FB) if passes & SWEEP else 0, schedule='static',
                            num_threads=n_threads):
                w = task_bounds(t, K, N, C, FB)
                _dx_task(dout, src, C, S, from_x, mu64, ivar64, coef, afg, redo,
                         w.k * C + w.c0, stream, dx, w.r0, w.r1, w.c0, w.c1)
    free(afg)
    free(redo)
    return 0


def backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] src,
             bint from_x, const double[::1] mu64, const double[::1] ivar64,
             const floating[::1] gamma, floating[:, :, ::1] dx,
             floating[::1] dgamma, floating[::1] dbeta, bint use_batch_stats,
             double[:, ::1] psum, double[:, ::1] pdot, double[:, ::1] coef,
             int n_threads, int passes=BOTH):
    """Closed-form gradients dx, dgamma, dbeta in two passes over the data.

    ``src`` is ``xhat`` (full cache) or ``x`` (``from_x``, minimal cache; xhat
    is recomputed from ``mu64`` and ``ivar64``). ``psum``/``pdot`` (K, C) hold
    per-chunk partial sums, ``coef`` (3, C) is scratch. ``use_batch_stats`` false
    gives the eval-mode gradient, where mu and ivar are constants. With
    K == 1 each task owns a strip and writes its dx right after reducing it,
    while dout and src are still in cache. ``passes`` as in ``forward``: the
    sums alone, or dx alone from the partial sums a ``REDUCE`` call left.
    """
    if dout.shape[1] == 0:
        return
    _backward(&dout[0, 0, 0], &src[0, 0, 0], dout.shape[0], dout.shape[1], dout.shape[2],
              from_x, &mu64[0], &ivar64[0], &gamma[0], &dx[0, 0, 0], &dgamma[0], &dbeta[0],
              use_batch_stats, &psum[0, 0], &pdot[0, 0], &coef[0, 0], psum.shape[0], n_threads,
              passes)


cdef inline double _read_block(const floating* p, Py_ssize_t n) noexcept nogil:
    # sum of n values in their own dtype, sixteen independent chains
    cdef floating acc[16]
    cdef floating part = 0
    cdef Py_ssize_t i = 0
    cdef int j
    for j in range(16):
        acc[j] = 0
    while i + 16 <= n:
        for j in range(16):
            acc[j] = acc[j] + p[i + j]
        i = i + 16
    for j in range(16):
        part = part + acc[j]
    while i < n:
        part = part + p[i]
        i = i + 1
    return part


def read(const floating[::1] src, int n_threads):
    """Sum of ``src`` in its own dtype (in no fixed order across threads):
    one read of the data at the speed the caches or memory allow, the unit
    S of the benchmark's per-sweep table."""
    cdef Py_ssize_t L = src.shape[0], B = 1 << 16, nb = (L + B - 1) // B, b, lo
    cdef double tot = 0.0
    if L == 0:
        return 0.0
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        lo = b * B
        tot += _read_block(&src[lo], min(L, lo + B) - lo)
    return tot


def copy(const floating[::1] src, floating[::1] dst, int n_threads):
    """dst[:] = src with ``n_threads`` threads: the benchmark's bandwidth probe."""
    cdef Py_ssize_t L = src.shape[0], B = 1 << 16, nb = (L + B - 1) // B, b, lo, hi
    for b in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        lo = b * B
        hi = min(L, lo + B)
        memcpy(&dst[lo], &src[lo], (hi - lo) * sizeof(floating))


cdef inline void _double_channel(const floating[:, :, :, ::1] ggx, bint has_ggx,
                                 const floating[:, :, :, ::1] dout,
                                 const floating[:, :, :, ::1] x, double m, double r,
                                 double g, double ag, double ab, bint use_batch_stats,
                                 bint jvp, floating[:, :, :, ::1] ddout,
                                 floating[:, :, :, ::1] dx, double* dgamma, Py_ssize_t i,
                                 Py_ssize_t c) noexcept nogil:
    # channel c of batch i of the double backward, in two passes over its
    # values; ``jvp``: ddout alone (dout is not read, dx and dgamma not written)
    cdef Py_ssize_t N = x.shape[1], S = x.shape[3], n, s
    cdef double M = <double>N * S, a = 0.0, dy = 0.0, xh
    cdef double sa = 0.0, sax = 0.0, sd = 0.0, sdx = 0.0, sad = 0.0, inner, pa, pd
    for n in range(N):
        for s in range(S):
            xh = (x[i, n, c, s] - m) * r
            if has_ggx:
                a = ggx[i, n, c, s]
            sa += a
            sax += a * xh
            if not jvp:
                dy = dout[i, n, c, s]
                sd += dy
                sdx += dy * xh
                sad += a * dy
    if use_batch_stats:
        inner = sad - sa * sd / M - sax * sdx / M       # <a, P(dy)>
        if not jvp:
            dgamma[0] = r * inner
        for n in range(N):
            for s in range(S):
                xh = (x[i, n, c, s] - m) * r
                if has_ggx:
                    a = ggx[i, n, c, s]
                pa = a - sa / M - xh * (sax / M)
                ddout[i, n, c, s] = <floating>(g * r * pa + ag * xh + ab)
                if not jvp:
                    dy = dout[i, n, c, s]
                    pd = dy - sd / M - xh * (sdx / M)
                    dx[i, n, c, s] = <floating>((g * r * r / M) * (-xh * inner - sax * pd
                                                                   - sdx * pa) + ag * r * pd)
    else:
        if not jvp:
            dgamma[0] = r * sad
        for n in range(N):
            for s in range(S):
                xh = (x[i, n, c, s] - m) * r
                if has_ggx:
                    a = ggx[i, n, c, s]
                ddout[i, n, c, s] = <floating>(g * r * a + ag * xh + ab)
                if not jvp:
                    dx[i, n, c, s] = <floating>(ag * r * dout[i, n, c, s])


def double_backward(const floating[:, :, :, ::1] ggx, bint has_ggx,
                    const floating[:, :, :, ::1] dout, const floating[:, :, :, ::1] x,
                    const double[:, ::1] mu64, const double[:, ::1] ivar64,
                    const double[:, ::1] gamma, const double[:, ::1] ggw,
                    const double[:, ::1] ggb, bint use_batch_stats,
                    floating[:, :, :, ::1] ddout, floating[:, :, :, ::1] dx,
                    double[:, ::1] dgamma, int n_threads, bint jvp=False):
    """Second derivatives: the gradients of ``<ggx, dx> + <ggw, dgamma> + <ggb, dbeta>``
    with respect to dout (``ddout``), x (``dx``) and gamma (``dgamma``), for
    B independent batches stacked: arrays (B, N, C, S), (B, C) per-channel values.

    Per channel, over its M values, with xhat = (x - mu) * r, a = ggx and
    P(v) = v - mean(v) - xhat * mean(v * xhat) (the docs' "Double backward"):
    ``ddout = g*r*P(a) + ggw*xhat + ggb``, ``dgamma = r * <a, P(dout)>``,
    ``dx = g*r^2/M * (-xhat*<a, P(dout)> - <a, xhat>*P(dout) - <dout, xhat>*P(a))
    + ggw*r*P(dout)``. With ``use_batch_stats`` false (eval mode: mu and r
    constants) P is the identity and ``dx = ggw*r*dout``. ``has_ggx`` false
    reads ``ggx`` as zeros (pass any array of the right shape). ``ddout`` is
    also the forward's Jacobian-vector product: the tangent of ``out`` for
    tangents ggx, ggw, ggb of x, gamma, beta (the docs' "Forward mode");
    ``jvp`` computes it alone (``dout`` is not read, ``dx`` and ``dgamma`` not
    written). Sums in float64, one (batch, channel) per task in a fixed
    order: bitwise the same for any thread count.
    """
    cdef Py_ssize_t B = x.shape[0], C = x.shape[2], t, i, c
    for t in prange(B * C, nogil=True, schedule='static', num_threads=n_threads):
        i = t // C
        c = t - i * C
        _double_channel(ggx, has_ggx, dout, x, mu64[i, c], ivar64[i, c], gamma[i, c],
                        ggw[i, c], ggb[i, c], use_batch_stats, jvp, ddout, dx, &dgamma[i, c],
                        i, c)


ctypedef fused running_t:
    float
    double


def update_running(running_t[:] running_mean, running_t[:] running_var,
                   const floating[::1] mean, const double[::1] m2, double count,
                   double momentum, bint with_mean, bint with_var):
    """PyTorch's CPU update of the running statistics, in place:
    ``running = momentum * batch + (1 - momentum) * running`` with the
    unbiased variance ``m2 / (count - 1)``, in its arithmetic
    (``batch_norm_cpu_update_stats_template``): for float32 statistics the
    momentum is a float32, the mean's update and ``m2 / (count - 1)`` are
    float32 operations, ``momentum * unbiased`` is float64, added to the
    float32 product ``(1 - momentum) * running_var`` and rounded once; for
    float64 everything is float64. ``mean`` is rounded to the statistics'
    dtype first, ``m2`` to it before the division (torch keeps both in it)."""
    cdef Py_ssize_t c, C = mean.shape[0]
    cdef float mf = <float>momentum, keepf = 1.0 - mf, nf = <float>(count - 1.0)
    cdef double keep = 1.0 - momentum, n1 = count - 1.0
    if running_t is float:
        for c in range(C):
            if with_mean:
                running_mean[c] = mf * <float>mean[c] + keepf * running_mean[c]
            if with_var:
                running_var[c] = <float>(<double>mf * <double>(<float>m2[c] / nf)
                                         + <double>(keepf * running_var[c]))
    else:
        for c in range(C):
            if with_mean:
                running_mean[c] = momentum * <double>mean[c] + keep * running_mean[c]
            if with_var:
                running_var[c] = momentum * (m2[c] / n1) + keep * running_var[c]


# ----------------------------------------------------- torch tensors' memory

cdef inline void _update_running_same(floating* rm, floating* rv, const double* mean,
                                      const double* m2, Py_ssize_t C, double count,
                                      double momentum) noexcept nogil:
    # update_running's arithmetic for running statistics of the data's dtype,
    # the mean read in float64 and rounded once (as update_running's caller
    # rounds it); either pointer may be NULL
    cdef Py_ssize_t c
    cdef float mf = <float>momentum, keepf = 1.0 - mf, nf = <float>(count - 1.0)
    cdef double keep = 1.0 - momentum, n1 = count - 1.0
    for c in range(C):
        if floating is float:
            if rm != NULL:
                rm[c] = mf * <float>mean[c] + keepf * rm[c]
            if rv != NULL:
                rv[c] = <float>(<double>mf * <double>(<float>m2[c] / nf) + <double>(keepf * rv[c]))
        else:
            if rm != NULL:
                rm[c] = momentum * mean[c] + keep * rm[c]
            if rv != NULL:
                rv[c] = momentum * (m2[c] / n1) + keep * rv[c]


cdef int _forward_at(const floating* x, floating* out, Py_ssize_t N, Py_ssize_t C,
                     Py_ssize_t S, const floating* gamma, const floating* beta, double eps,
                     floating* running_mean, floating* running_var, bint training,
                     double momentum, double* stats, Py_ssize_t K, int n_threads) except -1:
    # forward_tensor for one dtype: scratch in one block, the defaults of a
    # missing gamma/beta there too, then _forward and the running update
    cdef Py_ssize_t c
    cdef double* work = <double*>malloc((2 * K + 1) * C * sizeof(double))
    cdef floating* vals = <floating*>malloc(6 * C * sizeof(floating))
    cdef floating* mu = vals
    cdef floating* var = vals + C
    if work == NULL or vals == NULL:
        free(work)
        free(vals)
        raise MemoryError("forward_tensor: no memory for partial statistics")
    if gamma == NULL or beta == NULL:
        for c in range(C):
            vals[4 * C + c] = 1.0
            vals[5 * C + c] = 0.0
        if gamma == NULL:
            gamma = vals + 4 * C
        if beta == NULL:
            beta = vals + 5 * C
    if not training:
        mu, var = running_mean, running_var
        memset(stats + 2 * C, 0, C * sizeof(double))
    try:
        _forward(x, N, C, S, gamma, beta, eps, out, out, out, False, mu, var,
                 vals + 2 * C, vals + 3 * C, stats, stats + C, stats + 2 * C, training,
                 work, work + K * C, work + 2 * K * C, K, n_threads)
        if training and (running_mean != NULL or running_var != NULL):
            _update_running_same(running_mean, running_var, stats, stats + 2 * C, C,
                                 <double>N * S, momentum)
    finally:
        free(work)
        free(vals)
    return 0


def forward_tensor(size_t x, size_t out, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                   bint f64, size_t gamma, size_t beta, double eps, size_t running_mean,
                   size_t running_var, bint training, double momentum, size_t stats,
                   size_t counter, Py_ssize_t K, int n_threads):
    """The fused forward over the memory of torch tensors, given as addresses
    (``Tensor.data_ptr()``): the PyTorch drop-in's one compiled call per
    forward. The caller checked everything (the drop-in's plan): ``x`` and
    ``out`` hold N*C*S values of one dtype (float64 if ``f64``, else float32)
    in (N, C, S) order (a channels-last tensor is (N*S, C, 1)); ``gamma``,
    ``beta``, ``running_mean``, ``running_var`` (C,) contiguous of the same
    dtype or 0 (absent: gamma ones, beta zeros); ``stats`` a contiguous (3,
    C) float64 block that receives the mean, the inverse standard deviation
    and m2 (zeros in eval mode) that ``forward`` computes, bit for bit.
    Training (``training``) normalizes with the batch statistics and then
    updates the given running statistics in place as ``update_running``
    does, with ``momentum``; eval mode normalizes with them. ``K`` is
    ``row_chunks(N, C, S, itemsize)``. ``counter``, when not 0, is an int64
    (a module's ``num_batches_tracked``) incremented once the call succeeded.
    Nothing is written before the only failure (MemoryError for the
    scratch)."""
    if C == 0 or N * S == 0:
        return
    if f64:
        _forward_at(<const double*>x, <double*>out, N, C, S, <const double*>gamma,
                    <const double*>beta, eps, <double*>running_mean, <double*>running_var,
                    training, momentum, <double*>stats, K, n_threads)
    else:
        _forward_at(<const float*>x, <float*>out, N, C, S, <const float*>gamma,
                    <const float*>beta, eps, <float*>running_mean, <float*>running_var,
                    training, momentum, <double*>stats, K, n_threads)
    if counter != 0:
        (<int64_t*>counter)[0] += 1


cdef int _backward_at(const floating* dout, const floating* x, floating* dx, Py_ssize_t N,
                      Py_ssize_t C, Py_ssize_t S, const double* mean, const double* invstd,
                      const floating* gamma, floating* dgamma, floating* dbeta,
                      bint training, Py_ssize_t K, int n_threads) except -1:
    # backward_tensor for one dtype: scratch and a missing gamma's ones in one block
    cdef Py_ssize_t c
    cdef double* work = <double*>malloc((2 * K + 3) * C * sizeof(double))
    cdef floating* ones = NULL
    if work == NULL:
        raise MemoryError("backward_tensor: no memory for partial sums")
    if gamma == NULL:
        ones = <floating*>malloc(C * sizeof(floating))
        if ones == NULL:
            free(work)
            raise MemoryError("backward_tensor: no memory for partial sums")
        for c in range(C):
            ones[c] = 1.0
        gamma = ones
    try:
        _backward(dout, x, N, C, S, True, mean, invstd, gamma, dx, dgamma, dbeta, training,
                  work, work + K * C, work + 2 * K * C, K, n_threads)
    finally:
        free(work)
        free(ones)
    return 0


def backward_tensor(size_t dout, size_t x, size_t dx, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t S, bint f64, size_t mean, size_t invstd, size_t gamma,
                    size_t dgamma, size_t dbeta, bint training, Py_ssize_t K, int n_threads):
    """The closed-form backward (``backward`` with ``from_x``) over the
    memory of torch tensors given as addresses: the drop-in's one compiled
    call per backward. ``dout``, ``x``, ``dx`` hold N*C*S values of one dtype
    in (N, C, S) order; ``mean``, ``invstd`` the forward's (C,) float64
    statistics; ``gamma`` (C,) or 0 (ones); ``dgamma`` and ``dbeta``
    contiguous (C,) of the dtype receive the parameters' gradients. ``training`` false
    gives the eval-mode gradient."""
    if C == 0 or N * S == 0:
        return
    if f64:
        _backward_at(<const double*>dout, <const double*>x, <double*>dx, N, C, S,
                     <const double*>mean, <const double*>invstd, <const double*>gamma,
                     <double*>dgamma, <double*>dbeta, training, K, n_threads)
    else:
        _backward_at(<const float*>dout, <const float*>x, <float*>dx, N, C, S,
                     <const double*>mean, <const double*>invstd, <const float*>gamma,
                     <float*>dgamma, <float*>dbeta, training, K, n_threads)


# ------------------------------------------------- batches stacked (vmap)

cdef int _forward_batches_at(const floating* x, floating* out, Py_ssize_t B, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t S, const floating* gamma,
                             const floating* beta, double eps, floating* mean,
                             floating* var, bint training, double* stats, Py_ssize_t K,
                             int n_threads) except -1:
    # forward_batches for one dtype: each batch as forward_tensor computes it
    cdef Py_ssize_t i, L = N * C * S
    for i in range(B):
        _forward_at(x + i * L, out + i * L, N, C, S, NULL if gamma == NULL else gamma + i * C,
                    NULL if beta == NULL else beta + i * C, eps,
                    NULL if mean == NULL else mean + i * C,
                    NULL if var == NULL else var + i * C, training, 0.0, stats + 3 * i * C,
                    K, n_threads)
    return 0


def forward_batches(size_t x, size_t out, Py_ssize_t B, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t S, bint f64, size_t gamma, size_t beta, double eps,
                    size_t mean, size_t var, bint training, size_t stats, Py_ssize_t K,
                    int n_threads):
    """``forward_tensor`` over B independent batches stacked in one call (the
    drop-in's batching rule under ``torch.func.vmap``): ``x`` and ``out``
    hold B*N*C*S values, batch i's (N, C, S) values after batch i-1's;
    ``gamma``, ``beta`` (B, C) contiguous of x's dtype or 0; in eval mode
    (``training`` false) ``mean`` and ``var`` (B, C) normalize, else they
    are not read (pass 0) and nothing is updated; ``stats`` a (B, 3, C)
    float64 block receives each batch's mean, inverse standard deviation and
    m2. Batch i gets the bits ``forward_tensor`` gives it alone."""
    if B == 0 or C == 0 or N * S == 0:
        return
    if f64:
        _forward_batches_at(<const double*>x, <double*>out, B, N, C, S, <const double*>gamma,
                            <const double*>beta, eps, <double*>mean, <double*>var, training,
                            <double*>stats, K, n_threads)
    else:
        _forward_batches_at(<const float*>x, <float*>out, B, N, C, S, <const float*>gamma,
                            <const float*>beta, eps, <float*>mean, <float*>var, training,
                            <double*>stats, K, n_threads)


cdef int _backward_batches_at(const floating* dout, const floating* x, floating* dx,
                              Py_ssize_t B, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                              const double* mean, const double* invstd,
                              const floating* gamma, floating* dgamma, floating* dbeta,
                              bint training, Py_ssize_t K, int n_threads) except -1:
    # backward_batches for one dtype: each batch as backward_tensor computes it
    cdef Py_ssize_t i, L = N * C * S
    for i in range(B):
        _backward_at(dout + i * L, x + i * L, dx + i * L, N, C, S, mean + i * C,
                     invstd + i * C, NULL if gamma == NULL else gamma + i * C,
                     dgamma + i * C, dbeta + i * C, training, K, n_threads)
    return 0


def backward_batches(size_t dout, size_t x, size_t dx, Py_ssize_t B, Py_ssize_t N,
                     Py_ssize_t C, Py_ssize_t S, bint f64, size_t mean, size_t invstd,
                     size_t gamma, size_t dgamma, size_t dbeta, bint training, Py_ssize_t K,
                     int n_threads):
    """``backward_tensor`` over B independent batches stacked in one call:
    ``dout``, ``x``, ``dx`` hold B*N*C*S values, batch after batch; ``mean``,
    ``invstd`` (B, C) contiguous float64 (each batch's forward statistics);
    ``gamma`` (B, C) or 0; ``dgamma``, ``dbeta`` (B, C) contiguous of the
    dtype. Batch i gets the bits ``backward_tensor`` gives it alone."""
    if B == 0 or C == 0 or N * S == 0:
        return
    if f64:
        _backward_batches_at(<const double*>dout, <const double*>x, <double*>dx, B, N, C, S,
                             <const double*>mean, <const double*>invstd, <const double*>gamma,
                             <double*>dgamma, <double*>dbeta, training, K, n_threads)
    else:
        _backward_batches_at(<const float*>dout, <const float*>x, <float*>dx, B, N, C, S,
                             <const double*>mean, <const double*>invstd, <const float*>gamma,
                             <float*>dgamma, <float*>dbeta, training, K, n_threads)
