"""Compiled kernels, one per node of the batch-norm graph and direction.

Every kernel works on the (N, C, S) view of C-contiguous data (S = 1 for
(N, D) input), writes into outputs the caller allocated, and runs without the
GIL with OpenMP over blocks of channels. The kernels trust their caller:
shapes, dtypes and contiguity are checked once, in Python, by the public
node functions (``cybatchnorm.nodes``) or the functional API before any
kernel runs; ``cybatchnorm._node_ops`` calls them.

Naming: ``<node>_forward`` computes the node's value from its inputs,
``<node>_backward`` maps the gradient of the node (``d<node>``) to the
gradients of its inputs. Gradients that are one value per channel (dbeta,
dgamma, divar, dsqrtvar, dvar, dsq, dmu, dx2) are float64 whatever x's
dtype: for float32 data of std above 1e19 or below 1e-19 they leave
float32's range (dvar ~ ivar**3), and the full-size gradients made from them
would be lost.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

from cybatchnorm._common cimport (n_blocks, block_start, run_sum, run_dot,
                                  row_chunks, grid_block, Task, task_bounds, n_tasks,
                                  chunk_sums, merge_chunks, MERGE_BLOCK, f64_out,
                                  stats_pass)
# The shim makes prange serial, not broken, in a build without OpenMP.
cimport cybatchnorm._openmp
from cybatchnorm._openmp cimport CYBN_SIMD, CYBN_BUILD_CFLAGS

SIMD = CYBN_SIMD.decode()   # which instruction set this module was compiled for
BUILD_CFLAGS = CYBN_BUILD_CFLAGS.decode()   # and with which flags

cdef enum:
    OP_ADD = 0
    OP_SUB = 1
    OP_MUL = 2
    OP_MUL2 = 3     # 2 * x * p, as sq_backward writes it
    # o + 2 * x * p: sq_backward adding into the other branch's gradient (the
    # product rounded first, as branch_sum sees it)
    OP_ADD_MUL2 = 4


# ---------------------------------------------------------------- helpers

cdef inline void _node_sum_rows(const floating[:, :, ::1] a,
                                const floating[:, :, ::1] b, bint with_b,
                                const floating* p, floating* out,
                                bint with_out, Py_ssize_t r0, Py_ssize_t r1,
                                Py_ssize_t c0, Py_ssize_t c1,
                                f64_out acc) noexcept nogil:
    # acc[c] = sum of a (or a * b) over rows [r0, r1) of channel c0 + c and,
    # in the same pass, out = a * p[channel] when with_out (out may be a);
    # acc restrict-qualified, as the fused sums' (float64 data cannot alias it)
    cdef Py_ssize_t C = a.shape[1], S = a.shape[2], nc = c1 - c0, n, q, c, s, k
    cdef const floating* ra
    cdef const floating* rb
    cdef floating* ro
    cdef floating pc
    for c in range(nc):
        acc[c] = 0.0
    if S == 1:
        # four rows a quarter apart per update (see _common.pxd), then the rest
        q = (r1 - r0) // 4
        for n in range(r0, r0 + q):
            ra = &a[n, c0, 0]
            rb = &b[n, c0, 0]
            if with_b:
                for c in range(nc):
                    acc[c] += ((<double>ra[c] * rb[c] + <double>ra[q * C + c] * rb[q * C + c])
                               + (<double>ra[2 * q * C + c] * rb[2 * q * C + c]
                                  + <double>ra[3 * q * C + c] * rb[3 * q * C + c]))
            else:
                for c in range(nc):
                    acc[c] += ((<double>ra[c] + ra[q * C + c])
                               + (<double>ra[2 * q * C + c] + ra[3 * q * C + c]))
            if with_out:
                for k in range(4):
                    ro = out + (n + k * q) * C + c0
                    for c in range(nc):
                        ro[c] = ra[k * q * C + c] * p[c0 + c]
        for n in range(r0 + 4 * q, r1):
            ra = &a[n, c0, 0]
            rb = &b[n, c0, 0]
            if with_b:
                for c in range(nc):
                    acc[c] += <double>ra[c] * rb[c]
            else:
                for c in range(nc):
                    acc[c] += ra[c]
            if with_out:
                ro = out + n * C + c0
                for c in range(nc):
                    ro[c] = ra[c] * p[c0 + c]
        return
    for n in range(r0, r1):
        ra = &a[n, c0, 0]
        rb = &b[n, c0, 0]
        for c in range(nc):
            k = c * S
            if with_b:
                acc[c] += run_dot(ra + k, rb + k, S)
            else:
                acc[c] += run_sum(ra + k, S)
            if with_out:
                ro = out + (n * C + c0) * S
                pc = p[c0 + c]
                for s in range(S):
                    ro[k + s] = ra[k + s] * pc


cdef int _reduce(const floating[:, :, ::1] a, const floating[:, :, ::1] b,
                 bint with_b, double scale, double* res,
                 const floating* p, floating* out, bint with_out,
                 int n_threads) noexcept nogil:
    """res[c] = scale * sum(a[:, c]) (or of a * b when with_b), in float64;
    with_out also
    writes out = a * p[channel] in the same pass. Returns 1 when the partial
    sums could not be allocated."""
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], S = a.shape[2]
    cdef Py_ssize_t K = row_chunks(N, C, S, sizeof(floating))
    cdef Py_ssize_t FB = grid_block(N, C, S, sizeof(floating)), t, c, b_
    cdef Task w
    cdef double* part
    if C == 0:
        return 0
    # one partial sum per (chunk, channel): each task owns its own slots, so
    # there is no shared-array += inside prange
    part = <double*>malloc(K * C * sizeof(double))
    if part == NULL:
        return 1
    for t in prange(n_tasks(K, C, FB), schedule='static', num_threads=n_threads):
        w = task_bounds(t, K, N, C, FB)
        _node_sum_rows(a, b, with_b, p, out, with_out, w.r0, w.r1, w.c0, w.c1,
                       part + w.k * C + w.c0)
    # merged in chunk order per block of channels (chunk_sums: a vector loop)
    for b_ in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                     num_threads=n_threads):
        chunk_sums(part, K, C, b_ * MERGE_BLOCK, min(C, (b_ + 1) * MERGE_BLOCK), res)
    for c in range(C):
        res[c] = scale * res[c]
    free(part)
    return 0


# the type of a per-channel operand: x's own (a node value: the operation in
# x's dtype) or float64 (a per-channel gradient: the operation in float64,
# rounded once to x's dtype)
ctypedef fused channel_t:
    float
    double


cdef inline void _per_channel_run(const floating* x, const channel_t* p,
                                  floating* o, Py_ssize_t nc, Py_ssize_t S,
                                  int op) noexcept nogil:
    # o = x (op) p[channel] over nc channels of one row; S == 1 gets its own
    # loops so the compiler vectorizes along the channels. o may be x itself.
    cdef Py_ssize_t c, s
    cdef channel_t pc
    if S == 1:
        if op == OP_ADD:
            for c in range(nc):
                o[c] = x[c] + p[c]
        elif op == OP_SUB:
            for c in range(nc):
                o[c] = x[c] - p[c]
        elif op == OP_MUL:
            for c in range(nc):
                o[c] = x[c] * p[c]
        elif op == OP_MUL2:
            for c in range(nc):
                o[c] = 2 * x[c] * p[c]
        else:
            for c in range(nc):
                o[c] = o[c] + <floating>(2 * x[c] * p[c])
    else:
        for c in range(nc):
            pc = p[c]
            if op == OP_ADD:
                for s in range(S):
                    o[c * S + s] = x[c * S + s] + pc
            elif op == OP_SUB:
                for s in range(S):
                    o[c * S + s] = x[c * S + s] - pc
            elif op == OP_MUL:
                for s in range(S):
                    o[c * S + s] = x[c * S + s] * pc
            elif op == OP_MUL2:
                for s in range(S):
                    o[c * S + s] = 2 * x[c * S + s] * pc
            else:
                for s in range(S):
                    o[c * S + s] = o[c * S + s] + <floating>(2 * x[c * S + s] * pc)


cdef void _per_channel(const floating[:, :, ::1] x, const channel_t[::1] p,
                       floating[:, :, ::1] out, int op,
                       int n_threads) noexcept nogil:
    # One task per (row, block of channels): every task writes a contiguous
    # run, and small batches still spread over the threads.
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nb = n_blocks(C, n_threads), t, n, b_, c0, c1
    for t in prange(N * nb, schedule='static', num_threads=n_threads):
        n = t // nb
        b_ = t % nb
        c0 = block_start(b_, nb, C)
        c1 = block_start(b_ + 1, nb, C)
        _per_channel_run(&x[n, c0, 0], &p[c0], &out[n, c0, 0], c1 - c0, S, op)


cdef inline void _divide(const double[::1] p, double divisor,
                         double[::1] out) noexcept nogil:
    # out = p / divisor, per-channel gradients in float64
    cdef Py_ssize_t c
    for c in range(p.shape[0]):
        out[c] = p[c] / divisor


cdef Py_ssize_t _count(const floating[:, :, ::1] a) noexcept nogil:
    # values per channel: the batch times the spatial size
    return a.shape[0] * a.shape[2]


# ------------------------------------------------------------ forward

def mu_forward(const floating[:, :, ::1] x, floating[::1] mu, int n_threads):
    """mu = mean(x) per channel, by the same one-read statistics as the fused path."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t K = row_chunks(N, C, S, sizeof(floating)), c, b
    cdef double* buf
    if C == 0:
        return
    # shift, K x C partial means and m2s, then the merged means and m2s
    buf = <double*>malloc((2 * K + 3) * C * sizeof(double))
    if buf == NULL:
        raise MemoryError("mu_forward: no memory for partial statistics")
    with nogil:
        stats_pass(&x[0, 0, 0], N, C, S, buf, buf + C, buf + C + K * C, K, n_threads)
        for b in prange((C + MERGE_BLOCK - 1) // MERGE_BLOCK, schedule='static',
                        num_threads=n_threads):
            merge_chunks(N, S, K, C, b * MERGE_BLOCK, min(C, (b + 1) * MERGE_BLOCK), buf,
                         buf + C, buf + C + K * C, buf + (2 * K + 1) * C,
                         buf + (2 * K + 2) * C)
        for c in range(C):
            mu[c] = <floating>buf[(2 * K + 1) * C + c]
    free(buf)


def xmu_forward(const floating[:, :, ::1] x, const floating[::1] mu,
                floating[:, :, ::1] xmu, int n_threads):
    """xmu = x - mu, mu broadcast over the batch."""
    with nogil:
        _per_channel(x, mu, xmu, OP_SUB, n_threads)


def sq_forward(const floating[:, :, ::1] xmu, floating[:, :, ::1] sq,
               int n_threads):
    """sq = xmu ** 2, elementwise."""
    cdef Py_ssize_t N = xmu.shape[0], C = xmu.shape[1], S = xmu.shape[2]
    cdef Py_ssize_t n, i
    cdef const floating* a
    cdef floating* o
    if C == 0:           # nothing to point at, nothing to do
        return
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        a = &xmu[n, 0, 0]
        o = &sq[n, 0, 0]
        for i in range(C * S):
            o[i] = a[i] * a[i]


def var_forward(const floating[:, :, ::1] sq, floating[::1] var,
                int n_threads):
    """var = mean(sq) per channel (accumulated in float64, rounded once).
    In float32 sq itself overflows where |xmu| > 1.8e19."""
    cdef Py_ssize_t M = _count(sq), C = sq.shape[1], c
    cdef int failed = 0
    cdef double* res = <double*>malloc((C + 1) * sizeof(double))
    if res == NULL:
        raise MemoryError("var_forward: no memory for the sums")
    with nogil:
        failed = _reduce(sq, sq, False, 1.0 / M, res, NULL, NULL, False, n_threads)
        for c in range(C):
            var[c] = <floating>res[c]
    free(res)
    if failed:
        raise MemoryError("var_forward: no memory for per-thread sums")


def sqrtvar_forward(const floating[::1] var, double eps, floating[::1] sqrtvar,
                    int n_threads):
    """sqrtvar = sqrt(var + eps). A (C,) loop: too small to share out."""
    cdef Py_ssize_t c
    with nogil:
        for c in range(var.shape[0]):
            sqrtvar[c] = <floating>sqrt(var[c] + eps)


def ivar_forward(const floating[::1] sqrtvar, floating[::1] ivar,
                 int n_threads):
    """ivar = 1 / sqrtvar."""
    cdef Py_ssize_t c
    with nogil:
        for c in range(sqrtvar.shape[0]):
            ivar[c] = <floating>(1.0 / sqrtvar[c])


def xhat_forward(const floating[:, :, ::1] xmu, const floating[::1] ivar,
                 floating[:, :, ::1] xhat, int n_threads):
    """xhat = xmu * ivar, ivar broadcast over the batch."""
    with nogil:
        _per_channel(xmu, ivar, xhat, OP_MUL, n_threads)


def gammax_forward(const floating[:, :, ::1] xhat, const floating[::1] gamma,
                   floating[:, :, ::1] gammax, int n_threads):
    """gammax = gamma * xhat, gamma broadcast over the batch."""
    with nogil:
        _per_channel(xhat, gamma, gammax, OP_MUL, n_threads)


def out_forward(const floating[:, :, ::1] gammax, const floating[::1] beta,
                floating[:, :, ::1] out, int n_threads):
    """out = gammax + beta, beta broadcast over the batch."""
    with nogil:
        _per_channel(gammax, beta, out, OP_ADD, n_threads)


# ------------------------------------------------------------ backward

def out_backward(const floating[:, :, ::1] dout, double[::1] dbeta,
                 int n_threads):
    """dbeta = sum(dout) over the batch (float64); dgammax is dout itself (not computed)."""
    cdef int failed
    cdef double* r = &dbeta[0] if dbeta.shape[0] > 0 else NULL
    with nogil:
        failed = _reduce(dout, dout, False, 1.0, r, NULL, NULL, False, n_threads)
    if failed:
        raise MemoryError("out_backward: no memory for per-thread sums")


def gammax_backward(const floating[:, :, ::1] dgammax,
                    const floating[:, :, ::1] xhat, const floating[::1] gamma,
                    double[::1] dgamma, floating[:, :, ::1] dxhat,
                    int n_threads):
    """dgamma = sum(dgammax * xhat) (float64); dxhat = dgammax * gamma."""
    cdef int failed
    cdef const floating* p = NULL
    cdef floating* o = NULL
    cdef double* r = NULL
    if dgammax.shape[1] > 0:      # no element to point at when there are no channels
        p = &gamma[0]
        o = &dxhat[0, 0, 0]
        r = &dgamma[0]
    with nogil:
        failed = _reduce(dgammax, xhat, True, 1.0, r, p, o, True, n_threads)
    if failed:
        raise MemoryError("gammax_backward: no memory for per-thread sums")


def xhat_backward(const floating[:, :, ::1] dxhat, const floating[:, :, ::1] xmu,
                  const floating[::1] ivar, double[::1] divar,
                  floating[:, :, ::1] dxmu1, int n_threads):
    """divar = sum(dxhat * xmu) (float64); dxmu1 = dxhat * ivar."""
    cdef int failed
    cdef const floating* p = NULL
    cdef floating* o = NULL
    cdef double* r = NULL
    if dxhat.shape[1] > 0:
        p = &ivar[0]
        o = &dxmu1[0, 0, 0]
        r = &divar[0]
    with nogil:
        failed = _reduce(dxhat, xmu, True, 1.0, r, p, o, True, n_threads)
    if failed:
        raise MemoryError("xhat_backward: no memory for per-thread sums")


def ivar_backward(const double[::1] divar, const floating[::1] sqrtvar,
                  double[::1] dsqrtvar, int n_threads):
    """dsqrtvar = -divar / sqrtvar**2 (derivative of 1/t is -1/t**2), in
    float64: sqrtvar**2 leaves float32's range for std above 1.8e19 or
    below 1e-19."""
    cdef Py_ssize_t c
    cdef double t
    with nogil:
        for c in range(divar.shape[0]):
            t = sqrtvar[c]
            dsqrtvar[c] = -divar[c] / (t * t)


def sqrtvar_backward(const double[::1] dsqrtvar, const floating[::1] sqrtvar,
                     double[::1] dvar, int n_threads):
    """dvar = 0.5 * dsqrtvar / sqrtvar (derivative of sqrt(var + eps)), in float64."""
    cdef Py_ssize_t c
    with nogil:
        for c in range(dsqrtvar.shape[0]):
            dvar[c] = 0.5 * dsqrtvar[c] / sqrtvar[c]


def var_backward(const double[::1] dvar, double M, double[::1] dsq,
                 int n_threads):
    """dsq = dvar / M per channel: each of the M = N * S values of a channel
    gets the same gradient, so one value per channel is all there is to
    compute (the caller broadcasts it over the batch as a zero-stride view)."""
    _divide(dvar, M, dsq)


def sq_backward(const floating[:, :, ::1] dsq, const floating[:, :, ::1] xmu,
                floating[:, :, ::1] dxmu2, bint accumulate, int n_threads):
    """dxmu2 = 2 * xmu * dsq, elementwise; with ``accumulate``,
    dxmu2 = dxmu2 + 2 * xmu * dsq (adding into the other branch's gradient)."""
    cdef Py_ssize_t N = xmu.shape[0], C = xmu.shape[1], S = xmu.shape[2]
    cdef Py_ssize_t n, i
    cdef const floating* a
    cdef const floating* g
    cdef floating* o
    if C == 0:           # nothing to point at, nothing to do
        return
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        a = &xmu[n, 0, 0]
        g = &dsq[n, 0, 0]
        o = &dxmu2[n, 0, 0]
        if accumulate:
            for i in range(C * S):
                o[i] = o[i] + <floating>(2 * a[i] * g[i])
        else:
            for i in range(C * S):
                o[i] = 2 * a[i] * g[i]


def sq_backward_channel(const double[::1] dsq, const floating[:, :, ::1] xmu,
                        floating[:, :, ::1] dxmu2, bint accumulate, int n_threads):
    """dxmu2 = 2 * xmu * dsq (or dxmu2 + 2 * xmu * dsq with ``accumulate``)
    for a dsq that is one float64 value per channel (what var_backward
    gives; float32 cannot hold it for std above 1e19): the product is taken
    in float64 and rounded once. Only xmu (and dxmu2 when accumulating) is
    read from memory."""
    with nogil:
        _per_channel(xmu, dsq, dxmu2, OP_ADD_MUL2 if accumulate else OP_MUL2, n_threads)


def xmu_backward(const floating[:, :, ::1] dxmu, double[::1] dmu,
                 int n_threads):
    """dmu = -sum(dxmu) over the batch (float64); dx1 is dxmu itself (not computed)."""
    cdef int failed
    cdef double* r = &dmu[0] if dmu.shape[0] > 0 else NULL
    with nogil:
        failed = _reduce(dxmu, dxmu, False, -1.0, r, NULL, NULL, False, n_threads)
    if failed:
        raise MemoryError("xmu_backward: no memory for per-thread sums")


def mu_backward(const double[::1] dmu, double M, double[::1] dx2,
                int n_threads):
    """dx2 = dmu / M per channel (broadcast over the batch by the caller)."""
    _divide(dmu, M, dx2)


def branch_sum(const floating[:, :, ::1] a, const floating[:, :, ::1] b,
               floating[:, :, ::1] out, int n_threads):
    """out = a + b: where two branches of the graph meet, gradients add.

    ``out`` may be ``a`` itself (the sum is then taken in place).
    """
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], S = a.shape[2]
    cdef Py_ssize_t n, i
    cdef const floating* pa
    cdef const floating* pb
    cdef floating* o
    if C == 0:           # nothing to point at, nothing to do
        return
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        pa = &a[n, 0, 0]
        pb = &b[n, 0, 0]
        o = &out[n, 0, 0]
        for i in range(C * S):
            o[i] = pa[i] + pb[i]


def branch_sum_channel(const floating[:, :, ::1] a, const double[::1] b,
                       floating[:, :, ::1] out, int n_threads):
    """out = a + b[channel]: a branch sum whose second gradient is one float64
    value per channel (mu_backward's dx2), added in float64 and rounded
    once. ``out`` may be ``a`` itself."""
    with nogil:
        _per_channel(a, b, out, OP_ADD, n_threads)
