"""The functional API: batchnorm_forward, batchnorm_backward (staged) and
batchnorm_backward_fused; the Cache they pass along lives in ``_cache``.

This is where user input is validated (through ``_validation``) before any
kernel runs; the kernels themselves never check anything.
"""

import numpy as np

from . import graph
from ._cache import CHANNEL as _CHANNEL, FULL as _FULL, KINDS as _KINDS, Cache
from ._cache import check_cache as _check_cache
from ._kernels import fused as _fused
from ._threads import effective_num_threads
from ._validation import (DEFAULT_EPS, as_array, channel_axis, check_batch_count, check_eps,
                          computation_dtype, feature, full, view3d)

__all__ = ["Cache", "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_fused"]



def _row_chunks(view, dtype):
    # row chunks of the kernels' work grid: a function of the shape and dtype
    # alone, never of the thread count (see _common.pxd)
    return _fused.row_chunks(*view, np.dtype(dtype).itemsize)


def _check_output(name, arr, shape, dtype, inputs):
    """Validate a preallocated output (``out=``, ``dx=``); return its (N, C, S) view."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype or arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected a {dtype} array of shape {tuple(shape)}, "
                         f"got {arr.dtype} {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    if not arr.flags.writeable:
        raise ValueError(f"{name}: expected a writable array")
    for other in inputs:
        if other is not None and np.may_share_memory(arr, other):
            raise ValueError(f"{name}: must not share memory with an input or the cache")
    return arr.reshape(view3d(shape))


def _forward(x, gamma, beta, eps, num_threads, stats=None, cache="full", out=None, axis=1):
    """Validate, run the fused forward kernel, wrap the results.

    ``stats`` None computes the batch statistics (training); a pair
    ``(mean, var)`` normalizes with those instead (eval mode). ``axis=-1``:
    channels-last input, computed as the (N*H*W, C) matrix it already is.
    """
    if not (type(axis) is int and axis == 1):
        arr = as_array("x", x)
        # an array of fewer than 2 dimensions is refused below, by name
        if channel_axis(axis, max(arr.ndim, 2)) == -1:
            return _forward_channels_last(arr, gamma, beta, eps, num_threads, stats, cache, out)
    x_in, gamma_in, beta_in = x, gamma, beta
    x3, shape, dt = full("x", x)
    C = shape[1]
    if stats is None:
        check_batch_count(shape)
    gamma = feature("gamma", gamma, C, dt).copy()
    beta = feature("beta", beta, C, dt).copy()
    eps = check_eps(eps)
    if cache not in _KINDS:
        raise ValueError(f"cache: expected 'full' or 'minimal', got {cache!r}")
    nt = effective_num_threads(num_threads, x3.size)
    if out is None:
        out3 = np.empty(x3.shape, dt)
    else:
        out3 = _check_output("out", out, shape, dt,
                             (x_in, x3, gamma_in, beta_in)
                             + (tuple(stats) if stats is not None else ()))
    keep = cache == "full"
    xmu = np.empty(x3.shape, dt) if keep else out3
    xhat = np.empty(x3.shape, dt) if keep else out3
    if stats is None:
        mu, var = np.empty(C, dt), np.empty(C, dt)
    else:
        mu = feature("running_mean", stats[0], C, dt).copy()
        var = feature("running_var", stats[1], C, dt).copy()
    sqrtvar, ivar = np.empty(C, dt), np.empty(C, dt)
    mu64, ivar64 = np.empty(C), np.empty(C)
    K = _row_chunks(x3.shape, dt)
    _fused.forward(x3, gamma, beta, eps, out3, xmu, xhat, keep, mu, var, sqrtvar, ivar,
                   mu64, ivar64, stats is not None, np.empty((K, C)), np.empty((K, C)),
                   np.empty(C), nt)
    arrays = dict(mu=mu, var=var, sqrtvar=sqrtvar, ivar=ivar, gamma=gamma, beta=beta,
                  mu64=mu64, ivar64=ivar64)
    if keep:
        arrays.update(xmu=xmu.reshape(shape), xhat=xhat.reshape(shape))
    else:
        arrays.update(x=x3.reshape(shape))
    c = Cache(shape=shape, dtype=dt, eps=eps, mode="train" if stats is None else "eval",
              kind=cache, **arrays)
    return (out if out is not None else out3.reshape(shape)), c


def _forward_channels_last(arr, gamma, beta, eps, num_threads, stats, cache, out):
    # (N, *spatial, C) is, in memory, the (N*S, C) matrix of N*S rows: the
    # kernels reduce it in place (a reshape, no transpose) and the cache
    # holds that matrix; x_shape and axis tell the backward how dout comes
    shape = arr.shape
    if 0 in shape[:-1]:
        raise ValueError(f"x: the batch is empty (a size 0 in shape {shape} before the "
                         f"channel axis)")
    C = shape[-1]
    out2 = None
    if out is not None:
        _check_output("out", out, shape, computation_dtype("x", arr), (arr,))
        out2 = out.reshape(-1, C)
    o2, c = _forward(arr.reshape(-1, C), gamma, beta, eps, num_threads, stats, cache, out2)
    object.__setattr__(c, "axis", -1)
    object.__setattr__(c, "x_shape", tuple(shape))
    return (out if out is not None else o2.reshape(shape)), c


def batchnorm_forward(x, gamma, beta, eps=DEFAULT_EPS, *, axis=1, num_threads=None, cache="full",
                      out=None):
    """Batch normalization, training mode: normalize each channel over the batch.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, C, spatial...)
        The batch. For more than two dimensions each channel (axis 1) is
        normalized over the batch and all spatial axes. float32 and float64
        are computed in their own precision, float16 in float32, integers and
        bools in float64.
    gamma, beta : array_like, shape (C,)
        Scale and shift, cast to the computation dtype.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    axis : int, keyword-only, default 1
        The channel axis: 1 for ``(N, C, *spatial)``, -1 (the last) for
        channels-last ``(N, *spatial, C)`` data, which is reduced in place as
        an ``(N*H*W, C)`` matrix, never transposed; gamma and beta have shape
        ``(C,) = (x.shape[axis],)``.
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores (honouring ``OMP_NUM_THREADS`` and
        threadpoolctl). Results are bitwise identical for any value.
    cache : str, keyword-only
        ``"full"`` (the default) keeps ``xmu`` and ``xhat`` (two arrays the size of x);
        ``"minimal"`` keeps only a reference to x and the (C,) statistics,
        enough for :func:`batchnorm_backward_fused` (the staged backward then
        recomputes ``xmu`` and ``xhat``).
    out : ndarray, keyword-only
        Where to write the output: C-contiguous, writable, x's shape and
        computation dtype, sharing no memory with the inputs.

    Returns
    -------
    out : ndarray, shape of x
        ``gamma * (x - mu) / sqrt(var + eps) + beta`` (``out`` itself if given).
    cache : Cache
        The node values the backward passes need.

    Raises
    ------
    TypeError
        An argument is not an array of real numbers, or eps is not a number.
    ValueError
        Wrong shapes, N == 0, a single value per channel, eps not finite or
        not > 0, num_threads < 1, an unknown cache kind, a bad ``out``.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> out, cache = bn.batchnorm_forward(x, np.ones(2), np.zeros(2))
    >>> cache.mu
    array([ 2., 20.])
    >>> np.round(out, 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    return _forward(x, gamma, beta, eps, num_threads, cache=cache, out=out, axis=axis)


def _prepare_backward(dout, cache, num_threads, dx):
    _check_cache(cache)
    if cache.axis == -1:
        # channels last: dout (and dx) of x's shape, read as the cache's matrix
        arr = as_array("dout", dout)
        if arr.shape != cache.x_shape:
            raise ValueError(f"dout: expected shape {cache.x_shape}, got {arr.shape}")
        dout = arr.reshape(cache.shape)
        if dx is not None:
            _check_output("dx", dx, cache.x_shape, cache.dtype, [arr])
            dx = dx.reshape(cache.shape)
    g3 = full("dout", dout, cache.dtype, cache.shape)[0]
    nt = effective_num_threads(num_threads, g3.size)
    if dx is not None:
        held = [getattr(cache, n) for n in _CHANNEL + ("x",)] + [cache._xmu, cache._xhat]
        dx = _check_output("dx", dx, cache.shape, cache.dtype, [dout, g3] + held)
    return g3, nt, dx


def batchnorm_backward(dout, cache, *, num_threads=None, dx=None):
    """Staged backward pass: walk the graph in reverse, one compiled kernel per node.

    Parameters
    ----------
    dout : array_like, shape of x
        Gradient of the loss with respect to ``out``; cast to the cache's dtype.
    cache : Cache
        From :func:`batchnorm_forward` (or a :class:`BatchNorm` forward).
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.
    dx : ndarray, keyword-only
        Where to write ``dx``: C-contiguous, writable, of x's shape and the
        cache's dtype, sharing no memory with ``dout`` or the cache.

    Returns
    -------
    dx : ndarray, shape of x
        (``dx`` itself if given). A minimal cache has no ``xmu``/``xhat``: they
        are recomputed first by a forward pass over the cached x.
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError
        ``cache`` is not a Cache, or ``dout`` is not an array of real numbers.
    ValueError
        ``dout``'s shape differs from the forward input's, the cache is
        damaged, or ``dx`` is not a suitable output.

    See Also
    --------
    batchnorm_backward_fused : the same gradients in two passes over memory.
    cybatchnorm.graph.backward : the walk itself, with every intermediate gradient.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [8.0, 20.0]])
    >>> out, cache = bn.batchnorm_forward(x, np.ones(2), np.zeros(2))
    >>> dx, dgamma, dbeta = bn.batchnorm_backward(np.ones_like(x), cache)
    >>> dbeta
    array([3., 3.])
    >>> bool(np.abs(dx).max() < 1e-12)     # a constant dout does not move a normalized output
    True
    """
    g3, nt, dx3 = _prepare_backward(dout, cache, num_threads, dx)
    constants = ("mu", "ivar") if cache.mode == "eval" else ()
    saved = cache
    if cache.kind == "minimal":
        # the walk reads xmu and xhat: rerun the forward on x for a full
        # cache. Same shape and dtype give bitwise the same statistics, and
        # xmu comes from the float64 mean (x minus the mean rounded to x's
        # dtype would lose digits to cancellation for data far from zero)
        saved = _forward(cache.x, cache.gamma, cache.beta, cache.eps, nt,
                         stats=(cache.mu, cache.var) if cache.mode == "eval" else None)[1]
    grads = graph.backward(g3.reshape(cache.shape), saved, num_threads=nt,
                           constants=constants,
                           dx=None if dx3 is None else dx3.reshape(cache.shape))
    return (dx if dx is not None else grads["dx"].reshape(cache.x_shape)), grads["dgamma"], \
        grads["dbeta"]


def batchnorm_backward_fused(dout, cache, *, num_threads=None, dx=None):
    """Closed-form backward pass in two passes over memory.

    ``dx = (gamma * ivar / M) * (M * dout - sum(dout) - xhat * sum(dout * xhat))``
    with sums over the M = N x spatial values of each channel,
    ``dgamma = sum(dout * xhat)``, ``dbeta = sum(dout)``. Equal to
    :func:`batchnorm_backward` to rounding. For an eval-mode cache
    ``dx = gamma * ivar * dout``.

    Parameters
    ----------
    dout : array_like, shape of x
        Gradient of the loss with respect to ``out``; cast to the cache's dtype.
    cache : Cache
        From :func:`batchnorm_forward` (or a :class:`BatchNorm` forward).
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.
    dx : ndarray, keyword-only
        Where to write ``dx``: C-contiguous, writable, of x's shape and the
        cache's dtype, sharing no memory with ``dout`` or the cache.

    Returns
    -------
    dx : ndarray, shape of x
        (``dx`` itself if given)
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError
        ``cache`` is not a Cache, or ``dout`` is not an array of real numbers.
    ValueError
        ``dout``'s shape differs from the forward input's, the cache is
        damaged, or ``dx`` is not a suitable output.

    Notes
    -----
    Two passes over memory: ``dout`` and ``xhat`` (or, from a minimal cache,
    ``x``) are read twice and ``dx`` written once. Nothing the size of x is
    allocated except ``dx`` (and not even that when ``dx`` is given).

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> rng = np.random.default_rng(0)
    >>> x, dout = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    >>> out, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    >>> staged = bn.batchnorm_backward(dout, cache)
    >>> fused = bn.batchnorm_backward_fused(dout, cache)
    >>> all(np.allclose(s, f, rtol=1e-12, atol=1e-14) for s, f in zip(staged, fused))
    True
    """
    g3, nt, dx3 = _prepare_backward(dout, cache, num_threads, dx)
    shape, dt, C = cache.shape, cache.dtype, cache.shape[1]
    if dx3 is None:
        dx3 = np.empty(g3.shape, dt)
    dgamma, dbeta = np.empty(C, dt), np.empty(C, dt)
    from_x = cache.kind == "minimal"
    src = (cache.x if from_x else cache.xhat).reshape(g3.shape)
    K = _row_chunks(g3.shape, dt)
    _fused.backward(g3, src, from_x, cache.mu64, cache.ivar64, cache.gamma, dx3, dgamma,
                    dbeta, cache.mode == "train", np.empty((K, C)), np.empty((K, C)),
                    np.empty((3, C)), nt)
    return (dx if dx is not None else dx3.reshape(cache.x_shape)), dgamma, dbeta
