# Small inline helpers shared by the node kernels (_nodes.pyx), the fused
# kernels (_fused.pyx), the split kernels (_split.pyx) and the per-sample
# normalizations (_norms.pyx), each written once.
# Everything works on the (N, C, S) view of the data: S is 1 for (N, D) input
# and the product of the spatial sizes otherwise, so one channel's values in
# one row are a contiguous run of S elements.
#
# Determinism: a channel is always reduced by one thread, in one fixed order
# (rows in order; inside a run, sixteen interleaved partial sums combined by one
# fixed tree), so results do not depend on the number of threads. Statistics:
# task_moments (one read of x per task) and merge_chunks (Chan's formula).
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free


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
    static inline void cybn_stream_copy(void *dst, const void *src, size_t n) {
        memcpy(dst, src, n);
    }
    static inline void cybn_store_fence(void) {}
    #endif
    """
    void stream_copy "cybn_stream_copy"(void* dst, const void* src, size_t n) noexcept nogil
    void store_fence "cybn_store_fence"() noexcept nogil


cdef extern from *:
    """
    /* Elementwise passes with non-temporal stores straight from the
       registers (no L1 buffer and copy): float32 out = (x - h) * a + b and
       dx = (A * g + F * (x - h)) + G; float64 out = g * ((x - m) * iv) + b and
       dx = (A * g + E * ((x - m) * iv)) + B, as normalize_rows and dx_rows
       write them. The operations and their order are those of the scalar
       code (IEEE, no contraction), so every width gives the same bits.
       ``row`` takes per-channel arrays, else one channel's scalars. Scalar
       stores up to the first aligned address and after the last full
       vector. One ladder of SIMD levels for both dtypes: CYBN_W float32 and
       CYBN_WD float64 lanes of one CYBN_VBYTES-byte vector. */
    #include <stddef.h>
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #define CYBN_VBYTES 64
    #define CYBN_W 16
    typedef __m512 cybn_vf;
    #define CYBN_LOAD _mm512_loadu_ps
    #define CYBN_SET1 _mm512_set1_ps
    #define CYBN_SUB _mm512_sub_ps
    #define CYBN_MUL _mm512_mul_ps
    #define CYBN_ADD _mm512_add_ps
    #define CYBN_STREAM _mm512_stream_ps
    #define CYBN_WD 8
    typedef __m512d cybn_vd;
    #define CYBN_LOADD _mm512_loadu_pd
    #define CYBN_SET1D _mm512_set1_pd
    #define CYBN_SUBD _mm512_sub_pd
    #define CYBN_MULD _mm512_mul_pd
    #define CYBN_ADDD _mm512_add_pd
    #define CYBN_STREAMD _mm512_stream_pd
    #define CYBN_ZEROD _mm512_setzero_pd
    #define CYBN_STORED _mm512_storeu_pd
    #define CYBN_LOADF2D(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
    #elif defined(__AVX__)
    #include <immintrin.h>
    #define CYBN_VBYTES 32
    #define CYBN_W 8
    typedef __m256 cybn_vf;
    #define CYBN_LOAD _mm256_loadu_ps
    #define CYBN_SET1 _mm256_set1_ps
    #define CYBN_SUB _mm256_sub_ps
    #define CYBN_MUL _mm256_mul_ps
    #define CYBN_ADD _mm256_add_ps
    #define CYBN_STREAM _mm256_stream_ps
    #define CYBN_WD 4
    typedef __m256d cybn_vd;
    #define CYBN_LOADD _mm256_loadu_pd
    #define CYBN_SET1D _mm256_set1_pd
    #define CYBN_SUBD _mm256_sub_pd
    #define CYBN_MULD _mm256_mul_pd
    #define CYBN_ADDD _mm256_add_pd
    #define CYBN_STREAMD _mm256_stream_pd
    #define CYBN_ZEROD _mm256_setzero_pd
    #define CYBN_STORED _mm256_storeu_pd
    #define CYBN_LOADF2D(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
    #elif defined(__SSE2__)
    #include <emmintrin.h>
    #define CYBN_VBYTES 16
    #define CYBN_W 4
    typedef __m128 cybn_vf;
    #define CYBN_LOAD _mm_loadu_ps
    #define CYBN_SET1 _mm_set1_ps
    #define CYBN_SUB _mm_sub_ps
    #define CYBN_MUL _mm_mul_ps
    #define CYBN_ADD _mm_add_ps
    #define CYBN_STREAM _mm_stream_ps
    #define CYBN_WD 2
    typedef __m128d cybn_vd;
    #define CYBN_LOADD _mm_loadu_pd
    #define CYBN_SET1D _mm_set1_pd
    #define CYBN_SUBD _mm_sub_pd
    #define CYBN_MULD _mm_mul_pd
    #define CYBN_ADDD _mm_add_pd
    #define CYBN_STREAMD _mm_stream_pd
    #define CYBN_ZEROD _mm_setzero_pd
    #define CYBN_STORED _mm_storeu_pd
    #define CYBN_LOADF2D(p) _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(p))))
    #else
    #define CYBN_VBYTES 16          /* no vectors: every value takes the scalar loops */
    #endif
    static inline ptrdiff_t cybn_head(const void *out, size_t item, ptrdiff_t n) {
        /* values of ``item`` bytes before the first vector-aligned address */
        ptrdiff_t h = (ptrdiff_t)(((CYBN_VBYTES - ((size_t)out & (CYBN_VBYTES - 1)))
                                   & (CYBN_VBYTES - 1)) / item);
        return h > n ? n : h;
    }
    static inline void cybn_affine_nt(float *out, const float *x, const float *a,
                                      const float *h, const float *b, int row, ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(out, sizeof(float), n);
        for (; k < k0; k++)
            out[k] = (x[k] - h[row ? k : 0]) * a[row ? k : 0] + b[row ? k : 0];
    #ifdef CYBN_W
        if (row) {
            for (; k + CYBN_W <= n; k += CYBN_W)
                CYBN_STREAM(out + k, CYBN_ADD(CYBN_MUL(CYBN_SUB(CYBN_LOAD(x + k), CYBN_LOAD(h + k)),
                                                       CYBN_LOAD(a + k)), CYBN_LOAD(b + k)));
        } else {
            cybn_vf hv = CYBN_SET1(h[0]), av = CYBN_SET1(a[0]), bv = CYBN_SET1(b[0]);
            for (; k + CYBN_W <= n; k += CYBN_W)
                CYBN_STREAM(out + k, CYBN_ADD(CYBN_MUL(CYBN_SUB(CYBN_LOAD(x + k), hv), av), bv));
        }
    #endif
        for (; k < n; k++)
            out[k] = (x[k] - h[row ? k : 0]) * a[row ? k : 0] + b[row ? k : 0];
    }
    static inline void cybn_dx_nt(float *dx, const float *g, const float *x, const float *A,
                                  const float *F, const float *h, const float *G, int row,
                                  ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(dx, sizeof(float), n), j;
        for (; k < k0; k++) {
            j = row ? k : 0;
            dx[k] = A[j] * g[k] + F[j] * (x[k] - h[j]) + G[j];
        }
    #ifdef CYBN_W
        if (row) {
            for (; k + CYBN_W <= n; k += CYBN_W)
                CYBN_STREAM(dx + k, CYBN_ADD(CYBN_ADD(CYBN_MUL(CYBN_LOAD(A + k), CYBN_LOAD(g + k)),
                                                      CYBN_MUL(CYBN_LOAD(F + k),
                                                               CYBN_SUB(CYBN_LOAD(x + k),
                                                                        CYBN_LOAD(h + k)))),
                                             CYBN_LOAD(G + k)));
        } else {
            cybn_vf Av = CYBN_SET1(A[0]), Fv = CYBN_SET1(F[0]), hv = CYBN_SET1(h[0]);
            cybn_vf Gv = CYBN_SET1(G[0]);
            for (; k + CYBN_W <= n; k += CYBN_W)
                CYBN_STREAM(dx + k, CYBN_ADD(CYBN_ADD(CYBN_MUL(Av, CYBN_LOAD(g + k)),
                                                      CYBN_MUL(Fv, CYBN_SUB(CYBN_LOAD(x + k), hv))),
                                             Gv));
        }
    #endif
        for (; k < n; k++) {
            j = row ? k : 0;
            dx[k] = A[j] * g[k] + F[j] * (x[k] - h[j]) + G[j];
        }
    }
    static inline void cybn_norm_nt_f64(double *out, const double *x, const double *g,
                                        const double *m, const double *iv, const double *b,
                                        int row, ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(out, sizeof(double), n), j;
        for (; k < k0; k++) {
            j = row ? k : 0;
            out[k] = g[j] * ((x[k] - m[j]) * iv[j]) + b[j];
        }
    #ifdef CYBN_WD
        if (row) {
            for (; k + CYBN_WD <= n; k += CYBN_WD)
                CYBN_STREAMD(out + k, CYBN_ADDD(CYBN_MULD(CYBN_LOADD(g + k),
                    CYBN_MULD(CYBN_SUBD(CYBN_LOADD(x + k), CYBN_LOADD(m + k)), CYBN_LOADD(iv + k))),
                    CYBN_LOADD(b + k)));
        } else {
            cybn_vd gv = CYBN_SET1D(g[0]), mv = CYBN_SET1D(m[0]), iv_ = CYBN_SET1D(iv[0]);
            cybn_vd bv = CYBN_SET1D(b[0]);
            for (; k + CYBN_WD <= n; k += CYBN_WD)
                CYBN_STREAMD(out + k, CYBN_ADDD(CYBN_MULD(gv, CYBN_MULD(CYBN_SUBD(CYBN_LOADD(x + k),
                                                                              mv), iv_)), bv));
        }
    #endif
        for (; k < n; k++) {
            j = row ? k : 0;
            out[k] = g[j] * ((x[k] - m[j]) * iv[j]) + b[j];
        }
    }
    static inline void cybn_dx_nt_f64(double *dx, const double *g, const double *x,
                                      const double *A, const double *E, const double *m,
                                      const double *iv, const double *B, int row, ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(dx, sizeof(double), n), j;
        for (; k < k0; k++) {
            j = row ? k : 0;
            dx[k] = A[j] * g[k] + E[j] * ((x[k] - m[j]) * iv[j]) + B[j];
        }
    #ifdef CYBN_WD
        if (row) {
            for (; k + CYBN_WD <= n; k += CYBN_WD)
                CYBN_STREAMD(dx + k, CYBN_ADDD(
                    CYBN_ADDD(CYBN_MULD(CYBN_LOADD(A + k), CYBN_LOADD(g + k)),
                              CYBN_MULD(CYBN_LOADD(E + k),
                                        CYBN_MULD(CYBN_SUBD(CYBN_LOADD(x + k), CYBN_LOADD(m + k)),
                                                  CYBN_LOADD(iv + k)))),
                    CYBN_LOADD(B + k)));
        } else {
            cybn_vd Av = CYBN_SET1D(A[0]), Ev = CYBN_SET1D(E[0]), mv = CYBN_SET1D(m[0]);
            cybn_vd ivv = CYBN_SET1D(iv[0]), Bv = CYBN_SET1D(B[0]);
            for (; k + CYBN_WD <= n; k += CYBN_WD)
                CYBN_STREAMD(dx + k, CYBN_ADDD(CYBN_ADDD(CYBN_MULD(Av, CYBN_LOADD(g + k)),
                    CYBN_MULD(Ev, CYBN_MULD(CYBN_SUBD(CYBN_LOADD(x + k), mv), ivv))), Bv));
        }
    #endif
        for (; k < n; k++) {
            j = row ? k : 0;
            dx[k] = A[j] * g[k] + E[j] * ((x[k] - m[j]) * iv[j]) + B[j];
        }
    }
    /* Layer norm's float32 rows (a gamma per value, the row's scalars
       broadcast), streamed: out = (x - h) * (gamma * iv) + (beta - dm *
       (gamma * iv)) and dx = ((gamma * iv) * d + F * (x - h)) + G, the
       operations and order of _norms.pyx's scalar loops. */
    static inline void cybn_ln_out_nt(float *out, const float *x, const float *gamma,
                                      const float *beta, float iv, float h, float dm,
                                      ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(out, sizeof(float), n);
        float a;
        for (; k < k0; k++) {
            a = gamma[k] * iv;
            out[k] = (x[k] - h) * a + (beta[k] - dm * a);
        }
    #ifdef CYBN_W
        {
            cybn_vf ivv = CYBN_SET1(iv), hv = CYBN_SET1(h), dmv = CYBN_SET1(dm), av;
            for (; k + CYBN_W <= n; k += CYBN_W) {
                av = CYBN_MUL(CYBN_LOAD(gamma + k), ivv);
                CYBN_STREAM(out + k, CYBN_ADD(CYBN_MUL(CYBN_SUB(CYBN_LOAD(x + k), hv), av),
                                              CYBN_SUB(CYBN_LOAD(beta + k), CYBN_MUL(dmv, av))));
            }
        }
    #endif
        for (; k < n; k++) {
            a = gamma[k] * iv;
            out[k] = (x[k] - h) * a + (beta[k] - dm * a);
        }
    }
    static inline void cybn_ln_dx_nt(float *dx, const float *d, const float *x,
                                     const float *gamma, float iv, float F, float h, float G,
                                     ptrdiff_t n) {
        ptrdiff_t k = 0, k0 = cybn_head(dx, sizeof(float), n);
        for (; k < k0; k++)
            dx[k] = (gamma[k] * iv) * d[k] + F * (x[k] - h) + G;
    #ifdef CYBN_W
        {
            cybn_vf ivv = CYBN_SET1(iv), Fv = CYBN_SET1(F), hv = CYBN_SET1(h), Gv = CYBN_SET1(G);
            for (; k + CYBN_W <= n; k += CYBN_W)
                CYBN_STREAM(dx + k, CYBN_ADD(CYBN_ADD(CYBN_MUL(CYBN_MUL(CYBN_LOAD(gamma + k), ivv),
                                                               CYBN_LOAD(d + k)),
                                                      CYBN_MUL(Fv, CYBN_SUB(CYBN_LOAD(x + k), hv))),
                                             Gv));
        }
    #endif
        for (; k < n; k++)
            dx[k] = (gamma[k] * iv) * d[k] + F * (x[k] - h) + G;
    }
    /* Two float64 sums of run_reduce's kind in one loop, with its lanes (lane
       j takes values j, j + 16, ...; the values after the last full group go
       to lane 0 in order; lanes_total's tree combines them) and its terms, so
       each has the bits run_reduce gives it on every width. Written out
       because gcc scalarizes a lane loop with two accumulators (measured).
       The functions take (d, g, x, m, n) and return s1, s2:
       - row_dots (layer norm's backward row): s1 = sum(d * g) and
         s2 = sum((d * g) * (x - m)): run_dot's and run_weighted_centred's;
       - run_dots (a channel's run; g unused): s1 = sum(d) and
         s2 = sum(d * (x - m)): run_sum's and run_dot_centred's;
       - sum_sqdev (the forward; g unused): s1 = sum(d), the next row's
         values (its read from memory), and s2 = sum((x - m)**2), this row's
         squared deviations (from cache): run_sum's and run_sqdev's. */
    #define CYBN_LANES 16
    static inline double cybn_lanes_total(double *a) {
        int w, j;
        for (w = CYBN_LANES / 2; w >= 1; w /= 2)
            for (j = 0; j < w; j++)
                a[j] = a[j] + a[j + w];
        return a[0];
    }
    /* the two terms at offset o, vector (V, loaded by LOADV) and scalar (S) */
    #define CYBN_DOTS_V(LOADV, o, t1, t2) do { t1 = CYBN_MULD(LOADV(d + (o)), LOADV(g + (o))); \
        t2 = CYBN_MULD(t1, CYBN_SUBD(LOADV(x + (o)), mv)); } while (0)
    #define CYBN_DOTS_S(o, t1, t2) do { t1 = (double)d[o] * g[o]; t2 = t1 * (x[o] - m); } while (0)
    #define CYBN_RUN_V(LOADV, o, t1, t2) do { t1 = LOADV(d + (o));                     \
        t2 = CYBN_MULD(t1, CYBN_SUBD(LOADV(x + (o)), mv)); } while (0)
    #define CYBN_RUN_S(o, t1, t2) do { t1 = d[o]; t2 = t1 * (x[o] - m); } while (0)
    #define CYBN_SQDEV_V(LOADV, o, t1, t2) do { t1 = LOADV(d + (o));                   \
        t2 = CYBN_SUBD(LOADV(x + (o)), mv); t2 = CYBN_MULD(t2, t2); } while (0)
    #define CYBN_SQDEV_S(o, t1, t2) do { t1 = d[o]; t2 = x[o] - m; t2 = t2 * t2; } while (0)
    #ifdef CYBN_WD
    #define CYBN_NV (CYBN_LANES / CYBN_WD)
    #define CYBN_TWO_SUMS_LANES(LOADV, TV, TS)                                    \
        cybn_vd v1[CYBN_NV], v2[CYBN_NV], mv = CYBN_SET1D(m), u1, u2;            \
        for (j = 0; j < CYBN_NV; j++)                                            \
            v1[j] = v2[j] = CYBN_ZEROD();                                        \
        for (; k + CYBN_LANES <= n; k += CYBN_LANES)                             \
            for (j = 0; j < CYBN_NV; j++) {                                      \
                TV(LOADV, k + j * CYBN_WD, u1, u2);                              \
                v1[j] = CYBN_ADDD(v1[j], u1);                                    \
                v2[j] = CYBN_ADDD(v2[j], u2);                                    \
            }                                                                    \
        for (j = 0; j < CYBN_NV; j++) {                                          \
            CYBN_STORED(a1 + j * CYBN_WD, v1[j]);                                \
            CYBN_STORED(a2 + j * CYBN_WD, v2[j]);                                \
        }
    #else
    #define CYBN_LOADF2D _
    #define CYBN_LOADD _
    #define CYBN_TWO_SUMS_LANES(LOADV, TV, TS)                                    \
        for (j = 0; j < CYBN_LANES; j++)                                         \
            a1[j] = a2[j] = 0.0;                                                 \
        for (; k + CYBN_LANES <= n; k += CYBN_LANES)                             \
            for (j = 0; j < CYBN_LANES; j++) {                                   \
                TS(k + j, t1, t2);                                               \
                a1[j] += t1;                                                     \
                a2[j] += t2;                                                     \
            }
    #endif
    #define CYBN_TWO_SUMS(NAME, T, LOADV, TV, TS)                                 \
    static inline void NAME(const T *d, const T *g, const T *x, double m,        \
                            ptrdiff_t n, double *s1, double *s2) {               \
        double a1[CYBN_LANES], a2[CYBN_LANES], t1, t2;                           \
        ptrdiff_t k = 0;                                                         \
        int j;                                                                   \
        (void)g;                                                                 \
        CYBN_TWO_SUMS_LANES(LOADV, TV, TS)                                       \
        for (; k < n; k++) {                                                     \
            TS(k, t1, t2);                                                       \
            a1[0] += t1;                                                         \
            a2[0] += t2;                                                         \
        }                                                                        \
        *s1 = cybn_lanes_total(a1);                                              \
        *s2 = cybn_lanes_total(a2);                                              \
    }
    CYBN_TWO_SUMS(cybn_row_dots_f32, float, CYBN_LOADF2D, CYBN_DOTS_V, CYBN_DOTS_S)
    CYBN_TWO_SUMS(cybn_row_dots_f64, double, CYBN_LOADD, CYBN_DOTS_V, CYBN_DOTS_S)
    CYBN_TWO_SUMS(cybn_run_dots_f32, float, CYBN_LOADF2D, CYBN_RUN_V, CYBN_RUN_S)
    CYBN_TWO_SUMS(cybn_run_dots_f64, double, CYBN_LOADD, CYBN_RUN_V, CYBN_RUN_S)
    CYBN_TWO_SUMS(cybn_sum_sqdev_f32, float, CYBN_LOADF2D, CYBN_SQDEV_V, CYBN_SQDEV_S)
    CYBN_TWO_SUMS(cybn_sum_sqdev_f64, double, CYBN_LOADD, CYBN_SQDEV_V, CYBN_SQDEV_S)
    /* Layer norm's backward sums of four consecutive rows (d, x: the first
       row, M values each) in one read: each row's s1 and s2 as cybn_row_dots
       gives them, and the rows' shares of the parameter gradients added to
       the partials, pdg += (p0 + p1) + (p2 + p3) with p = d * ((x - m) * iv)
       and pdb += (d0 + d1) + (d2 + d3), as _norms.pyx's _param_quad: the
       same bits, with each value converted to float64 once instead of twice.
       Where the vectors have 8 lanes (AVX-512: the four rows' sixteen lane
       accumulators fit in registers); CYBN_LN_QUAD says so. */
    #if defined(CYBN_WD) && CYBN_WD == 8
    #define CYBN_LN_QUAD 1
    #define CYBN_LN_QUAD_FN(NAME, T, LOADV)                                       \
    static inline void NAME(const T *d, const T *g, const T *x, ptrdiff_t M,     \
                            const double *m, const double *iv, double *s1,       \
                            double *s2, double *pdg, double *pdb) {              \
        cybn_vd a1[4][2], a2[4][2], mv[4], ivv[4], dv[4], xm[4], t, gv;          \
        double l1[CYBN_LANES], l2[CYBN_LANES], dd, xx;                           \
        double pg[4];                                                            \
        ptrdiff_t k = 0;                                                         \
        int r, j;                                                                \
        for (r = 0; r < 4; r++) {                                                \
            mv[r] = CYBN_SET1D(m[r]);                                            \
            ivv[r] = CYBN_SET1D(iv[r]);                                          \
            a1[r][0] = a1[r][1] = a2[r][0] = a2[r][1] = CYBN_ZEROD();            \
        }                                                                        \
        for (; k + CYBN_LANES <= M; k += CYBN_LANES)                             \
            for (j = 0; j < 2; j++) {                                            \
                ptrdiff_t o = k + 8 * j;                                         \
                gv = LOADV(g + o);                                               \
                for (r = 0; r < 4; r++) {                                        \
                    dv[r] = LOADV(d + r * M + o);                                \
                    xm[r] = CYBN_SUBD(LOADV(x + r * M + o), mv[r]);              \
                    t = CYBN_MULD(dv[r], gv);                                    \
                    a1[r][j] = CYBN_ADDD(a1[r][j], t);                           \
                    a2[r][j] = CYBN_ADDD(a2[r][j], CYBN_MULD(t, xm[r]));         \
                }                                                                \
                CYBN_STORED(pdg + o, CYBN_ADDD(CYBN_LOADD(pdg + o), CYBN_ADDD(   \
                    CYBN_ADDD(CYBN_MULD(dv[0], CYBN_MULD(xm[0], ivv[0])),        \
                              CYBN_MULD(dv[1], CYBN_MULD(xm[1], ivv[1]))),       \
                    CYBN_ADDD(CYBN_MULD(dv[2], CYBN_MULD(xm[2], ivv[2])),        \
                              CYBN_MULD(dv[3], CYBN_MULD(xm[3], ivv[3]))))));    \
                CYBN_STORED(pdb + o, CYBN_ADDD(CYBN_LOADD(pdb + o), CYBN_ADDD(   \
                    CYBN_ADDD(dv[0], dv[1]), CYBN_ADDD(dv[2], dv[3]))));         \
            }                                                                    \
        for (r = 0; r < 4; r++) {                                                \
            const T *dr = d + r * M, *xr = x + r * M;                            \
            ptrdiff_t i;                                                         \
            CYBN_STORED(l1, a1[r][0]);                                           \
            CYBN_STORED(l1 + 8, a1[r][1]);                                       \
            CYBN_STORED(l2, a2[r][0]);                                           \
            CYBN_STORED(l2 + 8, a2[r][1]);                                       \
            for (i = k; i < M; i++) {                                            \
                dd = (double)dr[i] * g[i];                                       \
                l1[0] += dd;                                                     \
                l2[0] += dd * (xr[i] - m[r]);                                    \
            }                                                                    \
            s1[r] = cybn_lanes_total(l1);                                        \
            s2[r] = cybn_lanes_total(l2);                                        \
        }                                                                        \
        for (; k < M; k++) {                                                     \
            for (r = 0; r < 4; r++) {                                            \
                xx = (x[r * M + k] - m[r]) * iv[r];                              \
                pg[r] = d[r * M + k] * xx;                                       \
            }                                                                    \
            pdg[k] += (pg[0] + pg[1]) + (pg[2] + pg[3]);                         \
            pdb[k] += ((double)d[k] + d[M + k]) + ((double)d[2 * M + k] + d[3 * M + k]); \
        }                                                                        \
    }
    CYBN_LN_QUAD_FN(cybn_ln_quad_f32, float, CYBN_LOADF2D)
    CYBN_LN_QUAD_FN(cybn_ln_quad_f64, double, CYBN_LOADD)
    #else
    #define CYBN_LN_QUAD 0
    #define CYBN_LN_QUAD_STUB(NAME, T)                                            \
    static inline void NAME(const T *d, const T *g, const T *x, ptrdiff_t M,     \
                            const double *m, const double *iv, double *s1,       \
                            double *s2, double *pdg, double *pdb) {              \
        (void)d; (void)g; (void)x; (void)M; (void)m; (void)iv;                   \
        (void)s1; (void)s2; (void)pdg; (void)pdb;                                \
    }
    CYBN_LN_QUAD_STUB(cybn_ln_quad_f32, float)
    CYBN_LN_QUAD_STUB(cybn_ln_quad_f64, double)
    #endif
    """
    void affine_nt "cybn_affine_nt"(float* out, const float* x, const float* a, const float* h,
                                    const float* b, int row, Py_ssize_t n) noexcept nogil
    void dx_nt "cybn_dx_nt"(float* dx, const float* g, const float* x, const float* A,
                            const float* F, const float* h, const float* G, int row,
                            Py_ssize_t n) noexcept nogil
    void norm_nt_f64 "cybn_norm_nt_f64"(double* out, const double* x, const double* g,
                                        const double* m, const double* iv, const double* b,
                                        int row, Py_ssize_t n) noexcept nogil
    void dx_nt_f64 "cybn_dx_nt_f64"(double* dx, const double* g, const double* x,
                                    const double* A, const double* E, const double* m,
                                    const double* iv, const double* B, int row,
                                    Py_ssize_t n) noexcept nogil
    void ln_out_nt "cybn_ln_out_nt"(float* out, const float* x, const float* gamma,
                                    const float* beta, float iv, float h, float dm,
                                    Py_ssize_t n) noexcept nogil
    void ln_dx_nt "cybn_ln_dx_nt"(float* dx, const float* d, const float* x, const float* gamma,
                                  float iv, float F, float h, float G, Py_ssize_t n) noexcept nogil
    void row_dots_f32 "cybn_row_dots_f32"(const float* d, const float* g, const float* x,
                                          double m, Py_ssize_t n, double* s1,
                                          double* s2) noexcept nogil
    void row_dots_f64 "cybn_row_dots_f64"(const double* d, const double* g, const double* x,
                                          double m, Py_ssize_t n, double* s1,
                                          double* s2) noexcept nogil
    void run_dots_f32 "cybn_run_dots_f32"(const float* d, const float* g, const float* x,
                                          double m, Py_ssize_t n, double* s1,
                                          double* s2) noexcept nogil
    void run_dots_f64 "cybn_run_dots_f64"(const double* d, const double* g, const double* x,
                                          double m, Py_ssize_t n, double* s1,
                                          double* s2) noexcept nogil
    void sum_sqdev_f32 "cybn_sum_sqdev_f32"(const float* p, const float* unused,
                                            const float* q, double m, Py_ssize_t n,
                                            double* sum_p, double* sq_q) noexcept nogil
    void sum_sqdev_f64 "cybn_sum_sqdev_f64"(const double* p, const double* unused,
                                            const double* q, double m, Py_ssize_t n,
                                            double* sum_p, double* sq_q) noexcept nogil
    bint LN_QUAD "CYBN_LN_QUAD"
    void ln_quad_f32 "cybn_ln_quad_f32"(const float* d, const float* g, const float* x,
                                        Py_ssize_t M, const double* m, const double* iv,
                                        double* s1, double* s2, double* pdg,
                                        double* pdb) noexcept nogil
    void ln_quad_f64 "cybn_ln_quad_f64"(const double* d, const double* g, const double* x,
                                        Py_ssize_t M, const double* m, const double* iv,
                                        double* s1, double* s2, double* pdg,
                                        double* pdb) noexcept nogil


cdef inline void copy_row(void* dst, const void* src, size_t n, bint stream) noexcept nogil:
    # a row of x just read (still in L1) copied to a layer's own copy of x:
    # streamed past the caches when the outputs are (see STREAM_BYTES)
    if stream:
        stream_copy(dst, src, n)
    else:
        memcpy(dst, src, n)


cdef enum:
    STRIP_BYTES = 2 << 20   # bytes of one array's strip: L2 and a little L3
    MIN_RUN = 1024          # bytes per row of a strip: long runs the prefetchers follow
    MIN_STRIPS = 8          # strips per array, so that threads balance
    STREAM_BYTES = 16 << 20  # outputs larger than this are streamed past the cache


cdef inline Py_ssize_t strip_block(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                   Py_ssize_t itemsize) noexcept nogil:
    # channels per strip, or 0 when strips do not fit or are too few
    cdef Py_ssize_t col = N * S * itemsize       # one channel, every row
    cdef Py_ssize_t fit, need, fb
    if C <= 0 or col <= 0:
        return 0
    fit = STRIP_BYTES // col
    if S > 1:
        # spatial runs are long whatever the strip's width, so a strip can
        # be as narrow as the cache needs: half of STRIP_BYTES (one core's
        # L2), down to one channel when its column fits STRIP_BYTES. On
        # 32 x 64 x 56 x 56 this took forward + backward from 10.7-10.8 to
        # 10.0-10.2 reads of x in float32 and from 9.1-9.5 to 7.5-7.8 in
        # float64 (64 x 64 x 56 x 56 float32: 11.5 to 9.4-9.9); for (N, D)
        # data a narrower strip means shorter runs per row, and 1 MiB strips
        # slowed 512 x 16384 by 7-11 %
        fit = (STRIP_BYTES // 2) // col
        if fit == 0 and col <= STRIP_BYTES:
            fit = 1
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


cdef struct Moments:
    double n, mean, m2      # count, mean and sum of squared deviations


cdef inline Moments chan_step(Moments a, double mean_b, double m2_b, double w1,
                              double w2) noexcept nogil:
    # Chan, Golub and LeVeque's pairwise update of (mean, m2) by a part of
    # n_b values, given its weights w1 = n_b / n and w2 = n_a n_b / n (n =
    # n_a + n_b): d = mean_b - mean_a, mean = mean_a + d w1, m2 = m2_a + m2_b
    # + d^2 w2. The one place this formula is written: chan_merge and
    # merge_chunks (which computes the weights once for all channels) call it.
    cdef double d = mean_b - a.mean
    a.mean = a.mean + d * w1
    a.m2 = a.m2 + m2_b + d * d * w2
    return a


cdef inline Moments chan_merge(Moments a, double n_b, double mean_b,
                               double m2_b) noexcept nogil:
    # (n, mean, m2) updated by a part of n_b values (chan_step); an empty
    # part changes nothing
    cdef double n
    if n_b == 0.0:
        return a
    n = a.n + n_b
    a = chan_step(a, mean_b, m2_b, n_b / n, a.n * n_b / n)
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

cdef extern from *:
    # the lane count and the fixed pairwise combine of LANES partial sums:
    # the C two-sum loops' own (CYBN_LANES, cybn_lanes_total above), one
    # definition for both, as their bits must be run_reduce's
    enum: LANES "CYBN_LANES"
    double lanes_total "cybn_lanes_total"(double* a) noexcept nogil


cdef enum:
    # what a run reduction sums, value by value (k the index in the run)
    RUN_SUM = 0         # p[k]
    RUN_DOT = 1         # p[k] * q[k]
    RUN_CENTRED = 2     # p[k] * (q[k] - a)
    RUN_SHIFTED = 3     # p[k] - a
    RUN_SQDEV = 4       # (p[k] - a)**2
    RUN_WCENTRED = 5    # (p[k] * q[k]) * (r[k] - a)


cdef inline double run_term(int op, const floating* p, const floating* q, double a,
                            const floating* r, Py_ssize_t k) noexcept nogil:
    cdef double d
    if op == RUN_SUM:
        return p[k]
    if op == RUN_DOT:
        return <double>p[k] * q[k]
    if op == RUN_CENTRED:
        return p[k] * (q[k] - a)
    if op == RUN_WCENTRED:
        return (<double>p[k] * q[k]) * (r[k] - a)
    d = p[k] - a
    if op == RUN_SHIFTED:
        return d
    return d * d


cdef inline double run_reduce(int op, const floating* p, const floating* q, double a,
                              const floating* r, Py_ssize_t S) noexcept nogil:
    # the one lane loop of every run reduction; ``op`` is a constant at each
    # call site, so the compiler keeps only its own term once inlined (q and
    # r are read only by the terms that name them)
    cdef double acc[LANES]
    cdef Py_ssize_t k = 0
    cdef int j
    for j in range(LANES):
        acc[j] = 0.0
    while k + LANES <= S:
        for j in range(LANES):
            acc[j] += run_term(op, p, q, a, r, k + j)
        k += LANES
    while k < S:
        acc[0] += run_term(op, p, q, a, r, k)
        k += 1
    return lanes_total(acc)


cdef inline double run_sum(const floating* p, Py_ssize_t S) noexcept nogil:
    return run_reduce(RUN_SUM, p, p, 0.0, p, S)


cdef inline double run_dot(const floating* p, const floating* q,
                           Py_ssize_t S) noexcept nogil:
    # sum of p * q in float64
    return run_reduce(RUN_DOT, p, q, 0.0, p, S)


cdef inline double run_dot_centred(const floating* g, const floating* x, double m,
                                   Py_ssize_t S) noexcept nogil:
    # sum of g * (x - m): dout against x - mu (the caller multiplies by ivar
    # once for dout against xhat)
    return run_reduce(RUN_CENTRED, g, x, m, g, S)


cdef inline double run_weighted_centred(const floating* g, const floating* w, const floating* x,
                                        double m, Py_ssize_t S) noexcept nogil:
    # sum of (g * w) * (x - m): dout times a per-value gamma against x - mu
    # (layer norm's dxhat against xmu)
    return run_reduce(RUN_WCENTRED, g, w, m, x, S)


cdef inline double run_sqdev(const floating* p, double m, Py_ssize_t S) noexcept nogil:
    # sum of (p - m)**2
    return run_reduce(RUN_SQDEV, p, p, m, p, S)


# S == 1 reductions over rows [r0, r1) read four rows per step, a quarter of
# the rows apart (n, n + q, n + 2q, n + 3q): one accumulator update per four
# values, and four sequential streams the prefetchers follow (four adjacent
# rows were measured twice as slow from memory). The rows left over by the
# quarters are added one by one at the end; the order depends only on r0, r1.

cdef extern from *:
    # a float64 array no other pointer of the loop reaches: without it gcc
    # must assume that a store to a float64 accumulator may change the
    # float64 data it reads, and reloads or gives up vectorizing
    ctypedef double* f64_out "double * __restrict__"


cdef struct Sums2:
    double s1, s2       # sum of (v - h) and of (v - h)**2


cdef inline Sums2 run_moments(const floating* p, double h, Py_ssize_t S) noexcept nogil:
    # sums of p - h and (p - h)**2 over a run: two lane loops, the second
    # reading the run from L1 (one loop with both sums was slower, gcc
    # shuffled the lanes between vectors: the float64 run took 3.3 reads of
    # x instead of 1.4)
    cdef Sums2 r
    r.s1 = run_reduce(RUN_SHIFTED, p, p, h, p, S)
    r.s2 = run_sqdev(p, h, S)
    return r


cdef inline void column_moments(const floating* x, Py_ssize_t C, Py_ssize_t r0,
                                Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t nc,
                                f64_out s1, f64_out s2) noexcept nogil:
    # S == 1, one read: s1 = sum(x - h), s2 = sum((x - h)**2) over rows
    # [r0, r1) for nc channels from c0, h the task's first row (x itself:
    # no copy). The loops over channels vectorize.
    cdef Py_ssize_t q = (r1 - r0) // 4, n, c
    cdef const floating* h = x + r0 * C + c0
    cdef const floating* p0
    cdef const floating* p1
    cdef const floating* p2
    cdef const floating* p3
    cdef double d0, d1, d2, d3
    for c in range(nc):
        s1[c] = 0.0
        s2[c] = 0.0
    for n in range(r0, r0 + q):
        p0 = x + n * C + c0
        p1 = p0 + q * C
        p2 = p1 + q * C
        p3 = p2 + q * C
        for c in range(nc):
            d0 = <double>p0[c] - h[c]
            d1 = <double>p1[c] - h[c]
            d2 = <double>p2[c] - h[c]
            d3 = <double>p3[c] - h[c]
            s1[c] += (d0 + d1) + (d2 + d3)
            s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for n in range(r0 + 4 * q, r1):
        p0 = x + n * C + c0
        for c in range(nc):
            d0 = <double>p0[c] - h[c]
            s1[c] += d0
            s2[c] += d0 * d0


cdef inline double exact_m2(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t r0,
                            Py_ssize_t r1, Py_ssize_t c, double h,
                            double mr) noexcept nogil:
    # sum of ((x - h) - mr)**2 of channel c over rows [r0, r1): a second
    # read, for the rare channel whose one-read m2 lost too many bits
    cdef double acc = 0.0, d
    cdef Py_ssize_t n, s
    cdef const floating* run
    for n in range(r0, r1):
        run = x + (n * C + c) * S
        for s in range(S):
            d = (run[s] - h) - mr
            acc += d * d
    return acc


cdef enum:
    # m2 = s2 - s1 * mean is summed again exactly around the mean when it is
    # below s2 * 2**-M2_BITS: the subtraction then cancels more than
    # M2_BITS bits, and s2's own rounding (a few ulps per lane chain) would
    # be magnified 2**M2_BITS times. For normal data that is a first value
    # more than ~3.9 standard deviations from its chunk's mean (about one
    # chunk and channel in 9000); for adversarial data every channel pays
    # one more read of its (cached) chunk.
    M2_BITS = 4


cdef inline void task_moments(const floating* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                              const double* shift, f64_out mean,
                              f64_out m2) noexcept nogil:
    """Mean (of ``x - shift``) and sum of squared deviations per channel,
    over rows [r0, r1) and channels [c0, c1) (``shift``, ``mean``, ``m2``
    are indexed from 0 for channel c0), reading x once.

    For each channel, with h its first value in the task and n its values
    here: s1 = sum(x - h) and s2 = sum((x - h)**2) in float64 (one read),
    then mean = s1 / n and m2 = s2 - s1 * mean. Since h is one of the n
    values, (mean - h)**2 <= m2, so s2 = m2 + n (mean - h)**2 is at most
    (n + 1) m2: the subtraction loses at most log2(n + 1) bits, never the
    unbounded cancellation of E[x^2] - E[x]^2 for large means. When it
    loses more than M2_BITS (m2 < s2 * 2**-M2_BITS, which also catches
    NaN), the channel's m2 is summed again exactly around the mean.
    """
    cdef Py_ssize_t nc = c1 - c0
    cdef Py_ssize_t n, c
    cdef double cnt = <double>(r1 - r0) * S, h, mr, q
    cdef const floating* row
    cdef Sums2 t
    if S == 1:
        column_moments(x, C, r0, r1, c0, nc, mean, m2)
    else:
        for c in range(nc):
            mean[c] = 0.0
            m2[c] = 0.0
        for n in range(r0, r1):
            row = x + (n * C + c0) * S
            for c in range(nc):
                t = run_moments(row + c * S, x[(r0 * C + c0 + c) * S], S)
                mean[c] += t.s1
                m2[c] += t.s2
    for c in range(nc):
        h = x[(r0 * C + c0 + c) * S]
        mr = mean[c] / cnt
        q = m2[c] - mean[c] * mr
        if not (q >= m2[c] * (1.0 / (1 << M2_BITS))):
            q = exact_m2(x, C, S, r0, r1, c0 + c, h, mr)
        # the chunk's mean relative to the channel's shift (h - shift is
        # exact for float32 data, one rounding for float64)
        mean[c] = (h - shift[c]) + mr
        m2[c] = q


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
        task_moments(x, C, S, w.r0, w.r1, w.c0, w.c1, &shift[w.c0], &pmean[w.k * C + w.c0],
                     &pm2[w.k * C + w.c0])


cdef enum:
    MERGE_BLOCK = 256   # channels per task of the per-channel steps after a reduction


cdef inline void merge_chunks(Py_ssize_t N, Py_ssize_t S, Py_ssize_t K, Py_ssize_t C,
                              Py_ssize_t c0, Py_ssize_t c1, const double* shift,
                              const double* pmean, const double* pm2, f64_out mean,
                              f64_out m2) noexcept nogil:
    """Channels [c0, c1)'s mean and m2 from their K chunk partials (of x -
    shift), merged by Chan's update (chan_step) in chunk order. The chunks'
    weights are the same for every channel, so they are computed once and
    the loop over channels has no division (and vectorizes)."""
    cdef double na = 0.0, nb, n, w1, w2
    cdef Py_ssize_t j, c
    cdef Moments r
    r.n = 0.0               # chan_step reads only mean and m2
    for c in range(c0, c1):
        mean[c] = 0.0
        m2[c] = 0.0
    for j in range(K):
        nb = <double>(rstart(j + 1, K, N) - rstart(j, K, N)) * S
        if nb == 0.0:
            continue
        n = na + nb
        w1 = nb / n
        w2 = na * nb / n
        for c in range(c0, c1):
            r.mean = mean[c]
            r.m2 = m2[c]
            r = chan_step(r, pmean[j * C + c], pm2[j * C + c], w1, w2)
            mean[c] = r.mean
            m2[c] = r.m2
        na = n
    for c in range(c0, c1):
        mean[c] = mean[c] + shift[c]


cdef inline void chunk_sums(const double* part, Py_ssize_t K, Py_ssize_t C, Py_ssize_t c0,
                            Py_ssize_t c1, f64_out out) noexcept nogil:
    # channels [c0, c1)'s K partial sums of a (K, C) buffer, merged in chunk
    # order: the same order for any thread count; the loop over channels
    # inside vectorizes
    cdef Py_ssize_t j, c
    for c in range(c0, c1):
        out[c] = 0.0
    for j in range(K):
        for c in range(c0, c1):
            out[c] = out[c] + part[j * C + c]


cdef inline void normalize_rows(const floating* x, Py_ssize_t C, Py_ssize_t S,
                                const floating* gamma, const floating* beta,
                                const double* m, const double* iv,
                                floating* out, floating* xmu,
                                floating* xhat, bint keep_nodes,
                                Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                                Py_ssize_t c1, bint stream, floating* xc) noexcept nogil:
    # out = gamma * ((x - mu) * ivar) + beta in float64, rounded once, over
    # rows [r0, r1) and channels [c0, c1); with keep_nodes also xmu and xhat;
    # with xc, x's rows are copied there too (copy_row). ``stream`` (outputs
    # past the caches): float64 rows are stored non-temporally from the
    # registers (norm_nt_f64). The fused forward streams only without the
    # nodes, and its float32 rows then go through _affine_rows_f32 instead.
    cdef Py_ssize_t n, c, s, k
    cdef double d, mc, ic, gc, bc
    cdef const floating* xr
    cdef floating* orow
    cdef floating* mrow = NULL
    cdef floating* hrow = NULL
    for n in range(r0, r1):
        xr = x + (n * C + c0) * S
        orow = out + (n * C + c0) * S
        if floating is double:
            if stream and not keep_nodes:
                if S == 1:
                    norm_nt_f64(orow, xr, gamma + c0, m + c0, iv + c0, beta + c0, 1, c1 - c0)
                else:
                    for c in range(c1 - c0):
                        norm_nt_f64(orow + c * S, xr + c * S, gamma + c0 + c, m + c0 + c,
                                    iv + c0 + c, beta + c0 + c, 0, S)
                if xc != NULL:
                    copy_row(xc + (n * C + c0) * S, xr, (c1 - c0) * S * sizeof(floating), True)
                continue
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
        if xc != NULL:
            copy_row(xc + (n * C + c0) * S, xr, (c1 - c0) * S * sizeof(floating), stream)


cdef inline void dx_rows(const floating* dout, const floating* src, Py_ssize_t C,
                         Py_ssize_t S, bint from_x, const double* m, const double* iv,
                         const double* A, const double* B,
                         const double* E, floating* dx,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0,
                         Py_ssize_t c1, bint stream) noexcept nogil:
    # dx = A * dout + E * xhat + B, per channel constants, over rows [r0, r1)
    # and channels [c0, c1); xhat is src itself, or (src - m) * iv when
    # from_x. ``stream`` (dx past the caches): float64 rows from x are stored
    # non-temporally from the registers (dx_nt_f64); rows from a full cache's
    # xhat go through tmp, an L1 row buffer streamed out (stream_copy). (The
    # fused backward's float32 rows from x go through _dx_rows_f32 instead.)
    cdef Py_ssize_t n, c, s, k
    cdef const floating* gr
    cdef const floating* hr
    cdef floating* dr
    cdef floating* tmp = NULL
    cdef double ac, bc, ec, mc, ic
    cdef bint direct = False
    if floating is double:
        direct = from_x
    if stream and not direct:
        # a failed allocation only costs the streaming: plain stores
        tmp = <floating*>malloc((c1 - c0) * S * sizeof(floating))
    for n in range(r0, r1):
        gr = dout + (n * C + c0) * S
        hr = src + (n * C + c0) * S
        if floating is double:
            if stream and from_x:
                # dx past the caches: non-temporal stores from the registers
                dr = dx + (n * C + c0) * S
                if S == 1:
                    dx_nt_f64(dr, gr, hr, A + c0, E + c0, m + c0, iv + c0, B + c0, 1, c1 - c0)
                else:
                    for c in range(c1 - c0):
                        dx_nt_f64(dr + c * S, gr + c * S, hr + c * S, A + c0 + c, E + c0 + c,
                                  m + c0 + c, iv + c0 + c, B + c0 + c, 0, S)
                continue
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
    free(tmp)
