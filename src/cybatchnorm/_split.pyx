"""Split kernels: batch norm cut where the graph's reductions are.

Batch norm over a batch split across processes needs only its reductions to
cross the process boundary: ``mu`` and ``var`` in the forward, ``sum(dout)``
and ``sum(dout * xmu)`` in the backward. These kernels compute each side of
that cut for one shard (the same cut PyTorch's SyncBatchNorm makes with its
batch_norm_stats / gather_stats / backward_reduce / backward_elemt ops):

* ``batch_stats``: per-channel mean and m2 (sum of squared deviations) of the
  local shard, one read (shifted sums per task, merged by Chan; never
  E[x^2] - E[x]^2 around zero);
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

from cybatchnorm._common cimport (fblock as _fblock,
                                  Task, task_bounds, n_tasks, chunk_sums, Moments, f64_out,
                                  chan_merge, merge_chunks, MERGE_BLOCK, run_sum, run_dot_centred,
                                  stats_pass,
                                  normalize_rows, dx_rows)
cimport cybatchnorm._openmp
from cybatchnorm._openmp cimport CYBN_SIMD, CYBN_BUILD_CFLAGS

SIMD = CYBN_SIMD.decode()   # which instruction set this module was compiled for
BUILD_CFLAGS = CYBN_BUILD_CFLAGS.decode()   # and with which flags


# ------------------------------------------------------------ forward side

def batch_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] m2,
                double[:, ::1] pmean, double[:, ::1] pm2, double[::1] shift,
                int n_threads):
    """Per-channel mean and m2 = sum((x - mean)**2) of one shard, in float64.

    ``pmean``/``pm2`` (K, C) receive the per-chunk partial statistics, K
    being the number of row chunks; ``shift`` (C,) is scratch.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t K = pmean.shape[0], b
    if C == 0:
        return
    with nogil:
        stats_pass(&x[0, 0, 0], N, C, S, &shift[0], &pmean[0, 0], &pm2[0, 0], K, n_threads)
        for b in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                        num_threads=n_threads):
            merge_chunks(N, S, K, C, b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK), &shift[0],
                         &pmean[0, 0], &pm2[0, 0], &mean[0], &m2[0])


cdef inline Moments _merge_shards(Py_ssize_t P, Py_ssize_t C, Py_ssize_t c,
                                  const double* counts, const double* means,
                                  const double* m2s) noexcept nogil:
    # channel c over P shards, merged by Chan's update shard by shard in
    # index order (empty shards change nothing)
    cdef Moments r
    cdef Py_ssize_t p
    r.n = 0.0
    r.mean = 0.0
    r.m2 = 0.0
    for p in range(P):
        r = chan_merge(r, counts[p], means[p * C + c], m2s[p * C + c])
    return r


def merge(const double[::1] counts, const double[:, ::1] means,
          const double[:, ::1] m2s, double[::1] mean, double[::1] m2,
          int n_threads):
    """Global mean and m2 per channel from P shards' (count, mean, m2).

    ``counts`` (P,), ``means`` and ``m2s`` (P, C); shards are merged in index
    order, so the result depends only on the inputs, not on who merges them.
    """
    cdef Py_ssize_t P = means.shape[0], C = means.shape[1], c
    cdef Moments r
    if C == 0 or P == 0:
        return
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        r = _merge_shards(P, C, c, &counts[0], &means[0, 0], &m2s[0, 0])
        mean[c] = r.mean
        m2[c] = r.m2


def normalize(const floating[:, :, ::1] x, const double[::1] mean,
              const double[::1] ivar, const floating[::1] gamma,
              const floating[::1] beta, floating[:, :, ::1] out,
              Py_ssize_t K, int n_threads):
    """``out = gamma * (x - mean) * ivar + beta`` over a grid of K row chunks."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t FB = _fblock(S), t
    cdef Task w
    for t in prange(n_tasks(K, C, FB), nogil=True, schedule='static', num_threads=n_threads):
        w = task_bounds(t, K, N, C, FB)
        normalize_rows(&x[0, 0, 0], C, S, &gamma[0], &beta[0], &mean[0], &ivar[0], &out[0, 0, 0],
                       &out[0, 0, 0], &out[0, 0, 0], False,
                       w.r0, w.r1, w.c0, w.c1, False, NULL)


# ----------------------------------------------------------- backward side

cdef inline void _shard_sums_rows(const floating[:, :, ::1] dout,
                                  const floating[:, :, ::1] x,
                                  const double[::1] m, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
                                  f64_out sd, f64_out sdx) noexcept nogil:
    # sd = sum(dout), sdx = sum(dout * (x - mean)) over rows [r0, r1) (the
    # accumulators restrict-qualified, as the fused sums')
    cdef Py_ssize_t S = dout.shape[2], n, c, k
    cdef const floating* gr
    cdef const floating* xr
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
                sdx[c] += run_dot_centred(gr + k, xr + k, m[c0 + c], S)


def backward_reduce(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                    const double[::1] mean, double[::1] sum_dout,
                    double[::1] sum_dout_xmu, double[:, ::1] psum,
                    double[:, ::1] pdot, int n_threads):
    """Per-channel ``sum(dout)`` and ``sum(dout * (x - mean))`` of one shard.

    ``psum``/``pdot`` (K, C) receive the per-chunk partial sums, merged
    afterwards in chunk order.
    """
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], S = dout.shape[2]
    cdef Py_ssize_t K = psum.shape[0], FB = _fblock(S), t, b
    cdef Task w
    if C == 0:
        return
    with nogil:
        for t in prange(n_tasks(K, C, FB), schedule='static', num_threads=n_threads):
            w = task_bounds(t, K, N, C, FB)
            _shard_sums_rows(dout, x, mean, w.r0, w.r1, w.c0, w.c1, &psum[w.k, w.c0],
                             &pdot[w.k, w.c0])
        for b in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                        num_threads=n_threads):
            chunk_sums(&psum[0, 0], K, C, b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK),
                       &sum_dout[0])
            chunk_sums(&pdot[0, 0], K, C, b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK),
                       &sum_dout_xmu[0])


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
    cdef Py_ssize_t FB = _fblock(S), t, c
    cdef Task w
    cdef double a
    if C == 0:
        return
    with nogil:
        for c in range(C):
            a = gamma[c] * ivar[c]
            coef[0, c] = a
            coef[1, c] = -a * sum_dout[c] / count
            coef[2, c] = -a * (sum_dout_xmu[c] * ivar[c]) / count
        for t in prange(n_tasks(K, C, FB), schedule='static', num_threads=n_threads):
            w = task_bounds(t, K, N, C, FB)
            dx_rows(&dout[0, 0, 0], &x[0, 0, 0], C, S, True, &mean[0], &ivar[0], &coef[0, 0],
                    &coef[1, 0], &coef[2, 0], &dx[0, 0, 0],
                    w.r0, w.r1, w.c0, w.c1, False)
