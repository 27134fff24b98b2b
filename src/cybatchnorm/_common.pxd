# Small inline helpers shared by the node kernels (_nodes.pyx) and the fused
# kernels (_fused.pyx). Everything works on the (N, C, S) view of the data: S is
# 1 for (N, D) input and the product of the spatial sizes otherwise, so one
# channel's values in one row are a contiguous run of S elements.
#
# Determinism: a channel is always reduced by one thread, in one fixed order
# (rows in order; inside a run, sixteen interleaved partial sums combined by one
# fixed tree), so results do not depend on the number of threads.
from cython cimport floating
from cython.parallel cimport prange


cdef inline Py_ssize_t n_blocks(Py_ssize_t C, int n_threads) noexcept nogil:
    # One contiguous block of channels per thread.
    if C <= 0:
        return 0
    if C < n_threads:
        return C
    return n_threads


cdef inline Py_ssize_t block_start(Py_ssize_t b, Py_ssize_t nb,
                                   Py_ssize_t C) noexcept nogil:
    return (b * C) // nb


# ---------------------------------------------------------------- work grid
# Reductions run over a fixed grid of tasks: K chunks of rows times blocks of
# channels. A task walks the rows of its chunk and reads the contiguous run of
# its block in each row; it writes one partial result per (chunk, channel),
# and the partials are merged chunk by chunk, in order. K depends only on the
# shape and dtype, so results are bitwise identical for any thread count, and
# batches with fewer channels than threads still keep every thread busy.
#
# Strips: when all N rows of a few channels fit in about one core's L2 cache,
# K is 1 and a task owns a "strip" (every row of its block of channels). It
# reduces the strip and, while the strip is still in cache, makes the second
# pass over it (normalize, or write dx): x is read from memory once instead of
# twice. There must be enough strips to share among threads.

cdef inline Py_ssize_t fblock(Py_ssize_t S) noexcept nogil:
    # channels per block: about 2048 values per row (8 or 16 KiB), so a task
    # reads long contiguous runs the prefetchers follow (whole rows up to
    # 2048 features: 1.5x faster than 256-value runs, measured on the
    # normalize pass of a 4096 x 1024 batch) while its per-channel
    # accumulators stay within L1/L2
    if S >= 2048:
        return 1
    return 2048 // S


cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* memcpy with non-temporal stores: the destination's lines are written
       without being read first and without evicting the cache */
    static inline void cybn_stream_copy(void *dst, const void *src, size_t n) {
        char *d = (char *)dst;
        const char *s = (const char *)src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15, i, m;
        if (head > n) head = n;
        memcpy(d, s, head);
        d += head; s += head; n -= head;
        m = n & ~(size_t)15;
        for (i = 0; i < m; i += 16)
            _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
        memcpy(d + m, s + m, n - m);
    }
    static inline void cybn_store_fence(void) { _mm_sfence(); }
    #else
    static inline void cybn_stream_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
    static inline void cybn_store_fence(void) {}
    #endif
    """
    void stream_copy "cybn_stream_copy"(void* dst, const void* src, size_t n) noexcept nogil
    void store_fence "cybn_store_fence"() noexcept nogil


cdef enum:
    STRIP_BYTES = 2 << 20   # bytes of one array's strip: L2 and a little L3
    MIN_RUN = 1024          # bytes per row of a strip: long runs the prefetchers follow
    MIN_STRIPS = 8          # strips per array, so that threads balance
    STREAM_BYTES = 16 << 20 # outputs larger than this are streamed past the cache


cdef inline Py_ssize_t strip_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                   Py_ssize_t itemsize) noexcept nogil:
    # channels per strip, or 0 when strips do not fit or are too few
    cdef Py_ssize_t col = N * S * itemsize       # one channel, every row
    cdef Py_ssize_t fit, need, fb
    if C <= 0 or col <= 0:
        return 0
    fit = STRIP_BYTES // col
    need = (MIN_RUN + S * itemsize - 1) // (S * itemsize)
    if need > C:
        need = C
    if fit < need:
        return 0
    fb = C // (2 * MIN_STRIPS)
    if fb < need:
        fb = need
    if fb > fit:
        fb = fit
    if (C + fb - 1) // fb < MIN_STRIPS:
        return 0
    return fb


cdef inline Py_ssize_t row_chunks(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                  Py_ssize_t itemsize) noexcept nogil:
    # 1 for strips; otherwise at least 32 Ki values per chunk, at most 64
    # chunks, at most 128 Ki partial results per statistic
    cdef Py_ssize_t K = (N * C * S) >> 15
    if strip_block(N, C, S, itemsize) > 0:
        return 1
    if K > 64:
        K = 64
    if C > 0 and K > (1 << 17) // C:
        K = (1 << 17) // C
    if K > N:
        K = N
    if K < 1:
        K = 1
    return K


cdef inline Py_ssize_t grid_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                  Py_ssize_t itemsize) noexcept nogil:
    # channels per task: a strip's, or fblock's
    cdef Py_ssize_t fb = strip_block(N, C, S, itemsize)
    if fb > 0:
        return fb
    return fblock(S)


cdef inline Py_ssize_t rstart(Py_ssize_t k, Py_ssize_t K,
                              Py_ssize_t N) noexcept nogil:
    return (k * N) // K


cdef struct Task:
    # one task of the grid: rows [r0, r1) of chunk k, channels [c0, c1)
    Py_ssize_t k, r0, r1, c0, c1


cdef inline Task task_bounds(Py_ssize_t t, Py_ssize_t K, Py_ssize_t N,
                             Py_ssize_t C, Py_ssize_t FB) noexcept nogil:
    # task t of the K x ceil(C / FB) grid, chunk-major. Returned by value:
    # inside prange each thread gets its own copy, where a struct written
    # through a pointer would be shared between threads
    cdef Py_ssize_t nfb = (C + FB - 1) // FB
    cdef Task task
    task.k = t // nfb
    task.r0 = rstart(task.k, K, N)
    task.r1 = rstart(task.k + 1, K, N)
    task.c0 = (t % nfb) * FB
    task.c1 = min(C, task.c0 + FB)
    return task


cdef inline Py_ssize_t n_tasks(Py_ssize_t K, Py_ssize_t C,
                               Py_ssize_t FB) noexcept nogil:
    return K * ((C + FB - 1) // FB)


cdef inline double chunk_sum(const double* part, Py_ssize_t K, Py_ssize_t C,
                             Py_ssize_t c) noexcept nogil:
    # channel c's K partial sums of a (K, C) buffer, merged in chunk order:
    # the same order for any thread count
    cdef double tot = 0.0
    cdef Py_ssize_t j
    for j in range(K):
        tot = tot + part[j * C + c]
    return tot


cdef struct Moments:
    double n, mean, m2      # count, mean and sum of squared deviations


cdef inline Moments chan_merge(Moments a, double n_b, double mean_b,
                               double m2_b) noexcept nogil:
    # Chan, Golub and LeVeque's pairwise update of (n, mean, m2) by a part
    # of n_b values: n = n_a + n_b, d = mean_b - mean_a, mean = mean_a +
    # d n_b / n, m2 = m2_a + m2_b + d^2 n_a n_b / n. An empty part changes
    # nothing. The one place this formula is written.
    cdef double n, d
    if n_b == 0.0:
        return a
    n = a.n + n_b
    d = mean_b - a.mean
    a.mean = a.mean + d * (n_b / n)
    a.m2 = a.m2 + m2_b + d * d * (a.n * n_b / n)
    a.n = n
    return a


# Reductions along a contiguous run of S values keep LANES partial sums,
# lane j taking values j, j + LANES, ...; the values after the last full
# group go to lane 0 in order, and the lanes are combined by one fixed
# pairwise tree. Sixteen independent add chains hide the add latency on any
# vector width (two 8-wide chains with AVX-512, four 4-wide with AVX2, eight
# 2-wide with SSE2: four lanes, one vector, ran at one value per cycle),
# and the order is the source's, so every SIMD build and thread count gives
# the same bits.

cdef enum:
    LANES = 16


cdef inline double lanes_total(double* a) noexcept nogil:
    # the fixed pairwise combine of LANES partial sums
    cdef int w = LANES // 2, j
    while w >= 1:
        for j in range(w):
            a[j] = a[j] + a[j + w]
        w = w // 2
    return a[0]


cdef enum:
    # what a run reduction sums, value by value (k the index in the run)
    RUN_SUM = 0         # p[k]
    RUN_SHIFTED = 1     # p[k] - a
    RUN_DOT = 2         # p[k] * q[k]
    RUN_CENTRED = 3     # p[k] * ((q[k] - a) * b)
    RUN_SQDEV = 4       # (p[k] - a)**2


cdef inline double run_term(int op, const floating* p, const floating* q, double a,
                            double b, Py_ssize_t k) noexcept nogil:
    cdef double d
    if op == RUN_SUM:
        return p[k]
    if op == RUN_SHIFTED:
        return p[k] - a
    if op == RUN_DOT:
        return <double>p[k] * q[k]
    if op == RUN_CENTRED:
        return p[k] * ((q[k] - a) * b)
    d = p[k] - a
    return d * d


cdef inline double run_reduce(int op, const floating* p, const floating* q, double a,
                              double b, Py_ssize_t S) noexcept nogil:
    # the one lane loop of every run reduction; ``op`` is a constant at each
    # call site, so the compiler keeps only its own term once inlined
    cdef double acc[LANES]
    cdef Py_ssize_t k = 0
    cdef int j
    for j in range(LANES):
        acc[j] = 0.0
    while k + LANES <= S:
        for j in range(LANES):
            acc[j] += run_term(op, p, q, a, b, k + j)
        k += LANES
    while k < S:
        acc[0] += run_term(op, p, q, a, b, k)
        k += 1
    return lanes_total(acc)


cdef inline double run_sum(const floating* p, Py_ssize_t S) noexcept nogil:
    return run_reduce(RUN_SUM, p, p, 0.0, 0.0, S)


cdef inline double run_sum_shifted(const floating* p, double K,
                                   Py_ssize_t S) noexcept nogil:
    # sum of (p - K)
    return run_reduce(RUN_SHIFTED, p, p, K, 0.0, S)


cdef inline double run_dot(const floating* p, const floating* q,
                           Py_ssize_t S) noexcept nogil:
    # sum of p * q in float64
    return run_reduce(RUN_DOT, p, q, 0.0, 0.0, S)


cdef inline double run_dot_centred(const floating* g, const floating* x, double m,
                                   double r, Py_ssize_t S) noexcept nogil:
    # sum of g * ((x - m) * r): dout against xhat recomputed from x (r = 1:
    # against x - m)
    return run_reduce(RUN_CENTRED, g, x, m, r, S)


cdef inline double run_sqdev(const floating* p, double m,
                             Py_ssize_t S) noexcept nogil:
    # sum of (p - m)**2
    return run_reduce(RUN_SQDEV, p, p, m, 0.0, S)


# S == 1 reductions over rows [r0, r1) read four rows per step, a quarter of
# the rows apart (n, n + q, n + 2q, n + 3q): one accumulator update per four
# values, and four sequential streams the prefetchers follow (four adjacent
# rows were measured twice as slow from memory). The rows left over by the
# quarters are added one by one at the end; the order depends only on r0, r1.

cdef inline void column_stats(const floating* x, Py_ssize_t C, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t nc,
                              const double* shift, double* mean,
                              double* m2) noexcept nogil:
    # S == 1: exact two-pass mean and m2 of x - shift over rows [r0, r1) and
    # nc channels from c0; a task's rows are still in cache for the second
    # pass. The loops over channels vectorize.
    cdef Py_ssize_t q = (r1 - r0) // 4, n, c
    cdef double cnt = <double>(r1 - r0)
    cdef const floating* p0
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef double d0, d1, d2, d3
    for c in range(nc):
        mean[c] = 0.0
        m2[c] = 0.0
    for n in range(r0, r0 + q):
        p0 = x + n * C + c0
        p1 = p0 + q * C
        p2 = p1 + q * C
        p3 = p2 + q * C
        for c in range(nc):
            mean[c] += (((p0[c] - shift[c]) + (p1[c] - shift[c]))
                        + ((p2[c] - shift[c]) + (p3[c] - shift[c])))
    for n in range(r0 + 4 * q, r1):
        p0 = x + n * C + c0
        for c in range(nc):
            mean[c] += p0[c] - shift[c]
    for c in range(nc):
        mean[c] = mean[c] / cnt
    for n in range(r0, r0 + q):
        p0 = x + n * C + c0
        p1 = p0 + q * C
        p2 = p1 + q * C
        p3 = p2 + q * C
        for c in range(nc):
            d0 = (p0[c] - shift[c]) - mean[c]
            d1 = (p1[c] - shift[c]) - mean[c]
            d2 = (p2[c] - shift[c]) - mean[c]
            d3 = (p3[c] - shift[c]) - mean[c]
            m2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for n in range(r0 + 4 * q, r1):
        p0 = x + n * C + c0
        for c in range(nc):
            d0 = (p0[c] - shift[c]) - mean[c]
            m2[c] += d0 * d0


cdef inline void welford_rows(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                              const double* shift, double* mean,
                              double* m2) noexcept nogil:
    """Mean and sum of squared deviations of ``x - shift`` per channel, over
    rows [r0, r1) and channels [c0, c1) (``shift``, ``mean``, ``m2`` are
    indexed from 0 for channel c0).

    Shifting by a value of the channel (its first one) keeps the mean small,
    so its rounding errors stay tiny even when the data sit far from zero.
    For S == 1 it is an exact two-pass over the task's rows (column_stats),
    the second pass reading them from cache. For S > 1 each run of S values
    gets an exact two-pass mean/m2 while it sits in cache, merged into the
    channel's running pair by Chan's formula (Welford's update, run by run).
    Never E[x^2] - E[x]^2, which cancels catastrophically for large means.
    """
    cdef Py_ssize_t nc = c1 - c0
    cdef Py_ssize_t n, c
    cdef const floating* row
    cdef const floating* run
    cdef double inv, d, rm, q, w, K
    if S == 1:
        column_stats(x, C, r0, r1, c0, nc, shift, mean, m2)
        return
    for c in range(nc):
        mean[c] = 0.0
        m2[c] = 0.0
    for n in range(r0, r1):
        row = x + (n * C + c0) * S
        inv = 1.0 / (n - r0 + 1)
        # merging a run of S into (n - r0) * S values: the new run weighs
        # S / ((n - r0 + 1) S) = inv; the cross term is (n - r0) S * inv
        w = (<double>(n - r0) * S) * inv
        for c in range(nc):
            run = row + c * S
            K = shift[c]
            rm = run_sum_shifted(run, K, S) / S
            q = run_sqdev(run, rm + K, S)
            d = rm - mean[c]
            mean[c] = mean[c] + d * inv
            m2[c] = m2[c] + q + d * d * w


cdef inline void stats_pass(const floating* x, Py_ssize_t N, Py_ssize_t C,
                            Py_ssize_t S, double* shift, double* pmean, double* pm2,
                            Py_ssize_t K, int n_threads) noexcept nogil:
    """Partial shifted mean/m2 of every (chunk, channel) into the (K, C)
    row-major buffers ``pmean``/``pm2``; ``shift`` (C,) is filled here."""
    cdef Py_ssize_t FB = grid_block(N, C, S, sizeof(floating)), t, c
    cdef Task w
    for c in range(C):
        shift[c] = x[c * S]
    for t in prange(n_tasks(K, C, FB), schedule='static', num_threads=n_threads):
        w = task_bounds(t, K, N, C, FB)
        welford_rows(x, C, S, w.r0, w.r1, w.c0, w.c1, &shift[w.c0], &pmean[w.k * C + w.c0],
                     &pm2[w.k * C + w.c0])


cdef inline Moments merge_chunk_stats(Py_ssize_t N, Py_ssize_t S, Py_ssize_t K,
                                      Py_ssize_t C, Py_ssize_t c, const double* shift,
                                      const double* pmean,
                                      const double* pm2) noexcept nogil:
    """Channel c's (count, mean, m2) from its K chunk partials (of x - shift),
    merged by Chan's update in chunk order."""
    cdef Moments r
    cdef Py_ssize_t j
    r.n = 0.0
    r.mean = 0.0
    r.m2 = 0.0
    for j in range(K):
        r = chan_merge(r, <double>(rstart(j + 1, K, N) - rstart(j, K, N)) * S,
                       pmean[j * C + c], pm2[j * C + c])
    r.mean = r.mean + shift[c]
    return r


cdef inline void normalize_rows(const floating* x, Py_ssize_t C, Py_ssize_t S,
                                const floating* gamma, const floating* beta,
                                const double* m, const double* iv,
                                floating* out, floating* xmu,
                                floating* xhat, bint keep_nodes,
                                Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                                Py_ssize_t c1, floating* tmp) noexcept nogil:
    # out = gamma * ((x - mu) * ivar) + beta in float64, rounded once, over
    # rows [r0, r1) and channels [c0, c1); with keep_nodes also xmu and xhat;
    # with tmp (an L1 buffer of a row's run) rows are streamed out (see
    # stream_copy)
    cdef Py_ssize_t n, c, s, k
    cdef double d, mc, ic, gc, bc
    cdef const floating* xr
    cdef floating* orow
    cdef floating* mrow = NULL
    cdef floating* hrow = NULL
    for n in range(r0, r1):
        xr = x + (n * C + c0) * S
        orow = tmp if tmp != NULL else out + (n * C + c0) * S
        if keep_nodes:
            mrow = xmu + (n * C + c0) * S
            hrow = xhat + (n * C + c0) * S
        if S == 1:
            if keep_nodes:
                for c in range(c1 - c0):
                    d = xr[c] - m[c0 + c]
                    mrow[c] = <floating>d
                    hrow[c] = <floating>(d * iv[c0 + c])
                    orow[c] = <floating>(gamma[c0 + c] * (d * iv[c0 + c]) + beta[c0 + c])
            else:
                for c in range(c1 - c0):
                    orow[c] = <floating>(gamma[c0 + c] * ((xr[c] - m[c0 + c]) * iv[c0 + c])
                                         + beta[c0 + c])
        else:
            for c in range(c1 - c0):
                mc = m[c0 + c]
                ic = iv[c0 + c]
                gc = gamma[c0 + c]
                bc = beta[c0 + c]
                k = c * S
                if keep_nodes:
                    for s in range(S):
                        d = xr[k + s] - mc
                        mrow[k + s] = <floating>d
                        hrow[k + s] = <floating>(d * ic)
                        orow[k + s] = <floating>(gc * (d * ic) + bc)
                else:
                    for s in range(S):
                        orow[k + s] = <floating>(gc * ((xr[k + s] - mc) * ic) + bc)
        if tmp != NULL:
            # the row went to an L1 buffer; stream it out past the caches
            stream_copy(out + (n * C + c0) * S, tmp, (c1 - c0) * S * sizeof(floating))


cdef inline void dx_rows(const floating* dout, const floating* src, Py_ssize_t C,
                         Py_ssize_t S, bint from_x, const double* m, const double* iv,
                         const double* A, const double* B,
                         const double* E, floating* dx,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                         Py_ssize_t c1, floating* tmp) noexcept nogil:
    # dx = A * dout + E * xhat + B, per channel constants, over rows [r0, r1)
    # and channels [c0, c1); xhat is src itself, or (src - m) * iv when
    # from_x; with tmp rows are streamed out (see stream_copy)
    cdef Py_ssize_t n, c, s, k
    cdef const floating* gr
    cdef const floating* hr
    cdef floating* dr
    cdef double ac, bc, ec, mc, ic
    for n in range(r0, r1):
        gr = dout + (n * C + c0) * S
        hr = src + (n * C + c0) * S
        dr = tmp if tmp != NULL else dx + (n * C + c0) * S
        if S == 1:
            if from_x:
                for c in range(c1 - c0):
                    dr[c] = <floating>(A[c0 + c] * gr[c]
                                       + E[c0 + c] * ((hr[c] - m[c0 + c]) * iv[c0 + c])
                                       + B[c0 + c])
            else:
                for c in range(c1 - c0):
                    dr[c] = <floating>(A[c0 + c] * gr[c] + E[c0 + c] * hr[c] + B[c0 + c])
        else:
            for c in range(c1 - c0):
                ac = A[c0 + c]
                bc = B[c0 + c]
                ec = E[c0 + c]
                k = c * S
                if from_x:
                    mc = m[c0 + c]
                    ic = iv[c0 + c]
                    for s in range(S):
                        dr[k + s] = <floating>(ac * gr[k + s] + ec * ((hr[k + s] - mc) * ic) + bc)
                else:
                    for s in range(S):
                        dr[k + s] = <floating>(ac * gr[k + s] + ec * hr[k + s] + bc)
        if tmp != NULL:
            # the row went to an L1 buffer; stream it out past the caches
            stream_copy(dx + (n * C + c0) * S, tmp, (c1 - c0) * S * sizeof(floating))
