"""Fused kernels: the whole forward pass and the closed-form backward pass.

The staged kernels in ``_nodes`` follow the graph one node at a time and make
one pass over memory per node. These do the same arithmetic in as few passes
as the maths allows:

* forward: one pass for the statistics (Welford/Chan, never E[x^2] - E[x]^2),
  one pass that writes ``out`` (and, for a full cache, ``xmu`` and ``xhat``);
* backward: one pass for ``sum(dout)`` and ``sum(dout * xhat)``, one pass that
  writes ``dx = (gamma * ivar / M) * (M * dout - sum(dout) - xhat * sum(dout * xhat))``.

A thread owns a block of channels for both passes, so the block's statistics
never leave the thread and no barrier is needed between the passes.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from cybatchnorm._common cimport (n_blocks, block_start, run_sum, run_dot,
                                  welford_block)
cimport cybatchnorm._openmp


cdef int _forward_block(const floating[:, :, ::1] x, const floating[::1] gamma,
                        const floating[::1] beta, double eps,
                        floating[:, :, ::1] out, floating[:, :, ::1] xmu,
                        floating[:, :, ::1] xhat, bint keep_nodes,
                        floating[::1] mu, floating[::1] var,
                        floating[::1] sqrtvar, floating[::1] ivar,
                        bint given_stats, Py_ssize_t c0,
                        Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], S = x.shape[2], nc = c1 - c0
    cdef Py_ssize_t n, c, s, k
    cdef double* buf = <double*>malloc(4 * nc * sizeof(double))
    cdef double* m
    cdef double* iv
    cdef double* g
    cdef double* bt
    cdef double v, sd, d, gc, ic, mc, bc
    cdef const floating* xr
    cdef floating* orow
    cdef floating* mrow = NULL
    cdef floating* hrow = NULL
    if buf == NULL:
        return 1
    m = buf
    iv = buf + nc
    g = buf + 2 * nc
    bt = buf + 3 * nc
    # pass 1: statistics (iv holds m2 until it is turned into ivar), unless
    # they are given (eval mode: the running statistics)
    if not given_stats:
        welford_block(x, c0, c1, m, iv, g)   # g: scratch until filled below
    for c in range(nc):
        if given_stats:
            m[c] = mu[c0 + c]
            v = var[c0 + c]
        else:
            v = iv[c] / (N * S)
            mu[c0 + c] = <floating>m[c]
            var[c0 + c] = <floating>v
        sd = sqrt(v + eps)
        sqrtvar[c0 + c] = <floating>sd
        ivar[c0 + c] = <floating>(1.0 / sd)
        iv[c] = 1.0 / sd
        g[c] = gamma[c0 + c]
        bt[c] = beta[c0 + c]
    # pass 2: normalize, in float64, rounding once per stored value
    for n in range(N):
        xr = &x[n, c0, 0]
        orow = &out[n, c0, 0]
        if keep_nodes:
            mrow = &xmu[n, c0, 0]
            hrow = &xhat[n, c0, 0]
        if S == 1:
            if keep_nodes:
                for c in range(nc):
                    d = xr[c] - m[c]
                    mrow[c] = <floating>d
                    hrow[c] = <floating>(d * iv[c])
                    orow[c] = <floating>(g[c] * (d * iv[c]) + bt[c])
            else:
                for c in range(nc):
                    orow[c] = <floating>(g[c] * ((xr[c] - m[c]) * iv[c]) + bt[c])
        else:
            for c in range(nc):
                mc = m[c]
                ic = iv[c]
                gc = g[c]
                bc = bt[c]
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
    free(buf)
    return 0


def forward(const floating[:, :, ::1] x, const floating[::1] gamma,
            const floating[::1] beta, double eps, floating[:, :, ::1] out,
            floating[:, :, ::1] xmu, floating[:, :, ::1] xhat,
            bint keep_nodes, floating[::1] mu, floating[::1] var,
            floating[::1] sqrtvar, floating[::1] ivar, bint given_stats,
            int n_threads):
    """Batch statistics and normalized output in two passes over ``x``.

    ``xmu`` and ``xhat`` are written only when ``keep_nodes`` is true (pass
    ``out`` for both otherwise; it is then never touched through them). With
    ``given_stats`` the statistics pass is skipped: ``mu`` and ``var`` are
    read (eval mode) and only ``sqrtvar`` and ``ivar`` are written.
    """
    cdef Py_ssize_t C = x.shape[1], nb = n_blocks(C, n_threads), b_
    cdef int failed = 0
    for b_ in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        failed += _forward_block(x, gamma, beta, eps, out, xmu, xhat,
                                 keep_nodes, mu, var, sqrtvar, ivar,
                                 given_stats, block_start(b_, nb, C),
                                 block_start(b_ + 1, nb, C))
    if failed:
        raise MemoryError("forward: no memory for per-thread statistics")


cdef int _backward_block(const floating[:, :, ::1] dout,
                         const floating[:, :, ::1] xhat,
                         const floating[::1] gamma, const floating[::1] ivar,
                         floating[:, :, ::1] dx, floating[::1] dgamma,
                         floating[::1] dbeta, bint batch_stats,
                         Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t N = dout.shape[0], S = dout.shape[2], nc = c1 - c0
    cdef Py_ssize_t n, c, s, k
    cdef double M = <double>(N * S)
    cdef double* buf = <double*>malloc(3 * nc * sizeof(double))
    cdef double* a
    cdef double* b
    cdef double* e
    cdef double k_, ac, bc, ec
    cdef const floating* gr
    cdef const floating* hr
    cdef floating* dr
    if buf == NULL:
        return 1
    a = buf
    b = buf + nc
    e = buf + 2 * nc
    # pass 1: the two reductions, sum(dout) -> b and sum(dout * xhat) -> e
    for c in range(nc):
        b[c] = 0.0
        e[c] = 0.0
    for n in range(N):
        gr = &dout[n, c0, 0]
        hr = &xhat[n, c0, 0]
        if S == 1:
            for c in range(nc):
                b[c] += gr[c]
                e[c] += <double>gr[c] * hr[c]
        else:
            for c in range(nc):
                b[c] += run_sum(gr + c * S, S)
                e[c] += run_dot(gr + c * S, hr + c * S, S)
    # dx = a * dout + e' * xhat + b' with, per channel, k = gamma * ivar / M,
    # a = k * M, b' = -k * sum(dout), e' = -k * sum(dout * xhat)
    for c in range(nc):
        dbeta[c0 + c] = <floating>b[c]
        dgamma[c0 + c] = <floating>e[c]
        k_ = <double>gamma[c0 + c] * ivar[c0 + c] / M
        a[c] = k_ * M
        if batch_stats:
            b[c] = -k_ * b[c]
            e[c] = -k_ * e[c]
        else:
            # eval mode: mu and ivar are constants, so dx = gamma * ivar * dout
            b[c] = 0.0
            e[c] = 0.0
    # pass 2: dx
    for n in range(N):
        gr = &dout[n, c0, 0]
        hr = &xhat[n, c0, 0]
        dr = &dx[n, c0, 0]
        if S == 1:
            for c in range(nc):
                dr[c] = <floating>(a[c] * gr[c] + e[c] * hr[c] + b[c])
        else:
            for c in range(nc):
                ac = a[c]
                bc = b[c]
                ec = e[c]
                k = c * S
                for s in range(S):
                    dr[k + s] = <floating>(ac * gr[k + s] + ec * hr[k + s] + bc)
    free(buf)
    return 0


def backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] xhat,
             const floating[::1] gamma, const floating[::1] ivar,
             floating[:, :, ::1] dx, floating[::1] dgamma, floating[::1] dbeta,
             bint batch_stats, int n_threads):
    """Closed-form gradients dx, dgamma, dbeta in two passes over the data.

    ``batch_stats`` false gives the eval-mode gradient, where mu and ivar are
    constants rather than functions of the batch.
    """
    cdef Py_ssize_t C = dout.shape[1], nb = n_blocks(C, n_threads), b_
    cdef int failed = 0
    for b_ in prange(nb, nogil=True, schedule='static', num_threads=n_threads):
        failed += _backward_block(dout, xhat, gamma, ivar, dx, dgamma, dbeta,
                                  batch_stats, block_start(b_, nb, C),
                                  block_start(b_ + 1, nb, C))
    if failed:
        raise MemoryError("backward: no memory for per-thread sums")
