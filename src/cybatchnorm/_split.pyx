"""Split kernels: batch norm cut where the graph's reductions are.

Batch norm over a batch split across processes needs only its reductions to
cross the process boundary: ``mu`` and ``var`` in the forward, ``sum(dout)``
and ``sum(dout * xmu)`` in the backward. These kernels compute each side of
that cut for one shard (the same cut PyTorch's SyncBatchNorm makes with its
batch_norm_stats / gather_stats / backward_reduce / backward_elemt ops):

* ``batch_stats``: per-channel mean and m2 (sum of squared deviations) of the
  local shard, one pass, shifted Welford/Chan (never E[x^2] - E[x]^2);
* ``merge``: Chan's parallel formula over the shards' (count, mean, m2), in
  shard order, so every process that merges the same list gets the same bits;
* ``normalize``: ``out = gamma * (x - mean) * ivar + beta`` with given
  statistics;
* ``backward_reduce``: per-channel ``sum(dout)`` and ``sum(dout * (x - mean))``;
* ``backward_elementwise``: dx from the (global) sums.

Reductions run over the same fixed task grid as the fused kernels (K chunks of
rows times blocks of channels, K a function of the shape alone) with float64
partials per (chunk, channel) merged in chunk order afterwards, so results are
bitwise identical for any thread count. float32 data are accumulated in
float64; the statistics and sums are returned in float64.
"""
from cython cimport floating
from cython.parallel cimport prange

from cybatchnorm._common cimport (row_chunks as _row_chunks, fblock as _fblock,
                                  rstart as _rstart, run_sum, stats_pass,
                                  merge_stats as _merge_chunks, normalize_rows,
                                  dx_rows)
cimport cybatchnorm._openmp
from cybatchnorm._openmp cimport CYBN_SIMD

SIMD = CYBN_SIMD.decode()   # which instruction set this module was compiled for


def row_chunks(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t itemsize):
    """Number of row chunks of the work grid for an (N, C, S) array of
    ``itemsize``-byte values (the fused kernels' grid, see _common.pxd)."""
    return _row_chunks(N, C, S, itemsize)


# ------------------------------------------------------------ forward side

def batch_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] m2,
                double[:, ::1] pmean, double[:, ::1] pm2, double[::1] shift,
                int n_threads):
    """Per-channel mean and m2 = sum((x - mean)**2) of one shard, in float64.

    ``pmean``/``pm2`` (K, C) receive the per-chunk partial statistics, K
    being the number of row chunks; ``shift`` (C,) is scratch.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t K = pmean.shape[0], c
    if C == 0:
        return
    with nogil:
        stats_pass(x, &shift[0], &pmean[0, 0], &pm2[0, 0], K, n_threads)
        for c in prange(C, schedule='static', num_threads=n_threads):
            _merge_chunks(N, S, K, C, c, &shift[0], &pmean[0, 0], &pm2[0, 0],
                          &mean[c], &m2[c])


cdef inline void _chan(Py_ssize_t P, Py_ssize_t C, Py_ssize_t c,
                       const double* counts, const double* means,
                       const double* m2s, double* mean,
                       double* m2) noexcept nogil:
    # Chan, Golub and LeVeque's pairwise update, shard by shard in order:
    # n = n_a + n_b, d = mean_b - mean_a, mean = mean_a + d n_b / n,
    # m2 = m2_a + m2_b + d^2 n_a n_b / n. Empty shards are skipped.
    cdef double n_a = 0.0, n_b, n, m = 0.0, q = 0.0, d
    cdef Py_ssize_t p
    for p in range(P):
        n_b = counts[p]
        if n_b == 0.0:
            continue
        n = n_a + n_b
        d = means[p * C + c] - m
        m = m + d * (n_b / n)
        q = q + m2s[p * C + c] + d * d * (n_a * n_b / n)
        n_a = n
    mean[0] = m
    m2[0] = q


def merge(const double[::1] counts, const double[:, ::1] means,
          const double[:, ::1] m2s, double[::1] mean, double[::1] m2,
          int n_threads):
    """Global mean and m2 per channel from P shards' (count, mean, m2).

    ``counts`` (P,), ``means`` and ``m2s`` (P, C); shards are merged in index
    order, so the result depends only on the inputs, not on who merges them.
    """
    cdef Py_ssize_t P = means.shape[0], C = means.shape[1], c
    if C == 0 or P == 0:
        return
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        _chan(P, C, c, &counts[0], &means[0, 0], &m2s[0, 0], &mean[c], &m2[c])


def normalize(const floating[:, :, ::1] x, const double[::1] mean,
              const double[::1] ivar, const floating[::1] gamma,
              const floating[::1] beta, floating[:, :, ::1] out,
              Py_ssize_t K, int n_threads):
    """``out = gamma * (x - mean) * ivar + beta`` over a grid of K row chunks."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t FB = _fblock(S), nfb = (C + FB - 1) // FB, t, k, c0, c1
    for t in prange(K * nfb, nogil=True, schedule='static', num_threads=n_threads):
        k = t // nfb
        c0 = (t % nfb) * FB
        c1 = min(C, c0 + FB)
        normalize_rows(x, gamma, beta, mean, ivar, out, out, out, False,
                       _rstart(k, K, N), _rstart(k + 1, K, N), c0, c1, NULL)


# ----------------------------------------------------------- backward side

cdef inline void _reduce_rows(const floating[:, :, ::1] dout,
                              const floating[:, :, ::1] x,
                              const double[::1] m, Py_ssize_t r0,
                              Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                              double* sd, double* sdx) noexcept nogil:
    # sd = sum(dout), sdx = sum(dout * (x - mean)) over rows [r0, r1)
    cdef Py_ssize_t S = dout.shape[2], n, c, s, k
    cdef const floating* gr
    cdef const floating* xr
    cdef double a0, a1, mc
    for c in range(c1 - c0):
        sd[c] = 0.0
        sdx[c] = 0.0
    for n in range(r0, r1):
        gr = &dout[n, c0, 0]
        xr = &x[n, c0, 0]
        if S == 1:
            for c in range(c1 - c0):
                sd[c] += gr[c]
                sdx[c] += gr[c] * (xr[c] - m[c0 + c])
        else:
            for c in range(c1 - c0):
                k = c * S
                sd[c] += run_sum(gr + k, S)
                mc = m[c0 + c]
                a0 = 0.0
                a1 = 0.0
                s = 0
                while s + 2 <= S:
                    a0 += gr[k + s] * (xr[k + s] - mc)
                    a1 += gr[k + s + 1] * (xr[k + s + 1] - mc)
                    s += 2
                if s < S:
                    a0 += gr[k + s] * (xr[k + s] - mc)
                sdx[c] += a0 + a1


def backward_reduce(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                    const double[::1] mean, double[::1] sum_dout,
                    double[::1] sum_dout_xmu, double[:, ::1] psum,
                    double[:, ::1] pdot, int n_threads):
    """Per-channel ``sum(dout)`` and ``sum(dout * (x - mean))`` of one shard.

    ``psum``/``pdot`` (K, C) receive the per-chunk partial sums, merged
    afterwards in chunk order.
    """
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], S = dout.shape[2]
    cdef Py_ssize_t K = psum.shape[0], FB = _fblock(S)
    cdef Py_ssize_t nfb = (C + FB - 1) // FB, t, k, c0, c1, c, j
    cdef double sd, sdx
    if C == 0:
        return
    with nogil:
        for t in prange(K * nfb, schedule='static', num_threads=n_threads):
            k = t // nfb
            c0 = (t % nfb) * FB
            c1 = min(C, c0 + FB)
            _reduce_rows(dout, x, mean, _rstart(k, K, N), _rstart(k + 1, K, N),
                         c0, c1, &psum[k, c0], &pdot[k, c0])
        for c in prange(C, schedule='static', num_threads=n_threads):
            sd = 0.0
            sdx = 0.0
            for j in range(K):
                sd = sd + psum[j, c]
                sdx = sdx + pdot[j, c]
            sum_dout[c] = sd
            sum_dout_xmu[c] = sdx


def backward_elementwise(const floating[:, :, ::1] dout,
                         const floating[:, :, ::1] x, const double[::1] mean,
                         const double[::1] ivar, const floating[::1] gamma,
                         const double[::1] sum_dout,
                         const double[::1] sum_dout_xmu, double count,
                         floating[:, :, ::1] dx, double[:, ::1] coef,
                         Py_ssize_t K, int n_threads):
    """dx of batch norm from the global sums over ``count`` values per channel.

    ``dx = A * dout + E * xhat + B`` with ``A = gamma * ivar``,
    ``B = -A * sum_dout / count``, ``E = -A * ivar * sum_dout_xmu / count``
    (``ivar * sum_dout_xmu`` is ``sum(dout * xhat)``, i.e. dgamma).
    ``coef`` (3, C) is scratch; the grid has K row chunks.
    """
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], S = dout.shape[2]
    cdef Py_ssize_t FB = _fblock(S), nfb = (C + FB - 1) // FB, t, k, c0, c1, c
    cdef double a
    if C == 0:
        return
    with nogil:
        for c in range(C):
            a = gamma[c] * ivar[c]
            coef[0, c] = a
            coef[1, c] = -a * sum_dout[c] / count
            coef[2, c] = -a * (sum_dout_xmu[c] * ivar[c]) / count
        for t in prange(K * nfb, schedule='static', num_threads=n_threads):
            k = t // nfb
            c0 = (t % nfb) * FB
            c1 = min(C, c0 + FB)
            dx_rows(dout, x, True, mean, ivar, &coef[0, 0], &coef[1, 0], &coef[2, 0], dx,
                    _rstart(k, K, N), _rstart(k + 1, K, N), c0, c1, NULL)
