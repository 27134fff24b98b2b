"""The functional API: batchnorm_forward, batchnorm_backward (staged) and
batchnorm_backward_fused, and the Cache that carries the forward's values.

This is where user input is validated (through ``_validation``) before any
kernel runs; the kernels themselves never check anything.
"""
import numpy as np

from . import _fused, graph
from ._threads import effective_num_threads
from ._validation import check_batch_count, check_eps, feature, full, view3d

__all__ = ["Cache", "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_fused"]

_FULL = ("xmu", "xhat")
_CHANNEL = ("mu", "var", "sqrtvar", "ivar", "gamma", "beta")


class Cache:
    """What :func:`batchnorm_forward` keeps for the backward pass.

    Attributes are named after the graph's nodes, all read-only arrays in the
    computation dtype:

    ========== =============== ==============================================
    attribute  shape           value
    ========== =============== ==============================================
    mu         (C,)            batch mean per channel
    xmu        x.shape         ``x - mu``
    var        (C,)            biased batch variance
    sqrtvar    (C,)            ``sqrt(var + eps)``
    ivar       (C,)            ``1 / sqrtvar``
    xhat       x.shape         ``xmu * ivar``
    gamma      (C,)            a copy of the scale used by the forward
    beta       (C,)            a copy of the shift used by the forward
    ========== =============== ==============================================

    plus ``eps`` (float), ``shape`` (x's shape), ``dtype`` and ``mode``
    (``"train"``: batch statistics, gradients flow through mu and var;
    ``"eval"``: mu and var were the running statistics, constants).

    Memory: two arrays the size of x (``xmu`` and ``xhat``) plus six (C,)
    arrays, i.e. about ``2 * x.size * itemsize`` bytes. ``sq`` is not kept: its
    backward needs only ``xmu``.

    A Cache is made by the forward pass and cannot be changed afterwards.
    """

    __slots__ = ("shape", "dtype", "eps", "mode") + _CHANNEL + _FULL

    def __init__(self, *, shape, dtype, eps, mode, **arrays):
        for name in _CHANNEL + _FULL:
            arr = arrays[name]
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "dtype", np.dtype(dtype))
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "mode", mode)

    def __setattr__(self, name, value):
        raise AttributeError("Cache is read-only: it holds the values of one forward pass")

    def __repr__(self):
        return f"Cache(shape={self.shape}, dtype={self.dtype}, mode={self.mode!r}, eps={self.eps})"

    @property
    def nbytes(self):
        """Bytes held by the cache's arrays."""
        return sum(getattr(self, n).nbytes for n in _CHANNEL + _FULL)


def _check_cache(cache):
    """Make sure ``cache`` is a Cache whose arrays agree with each other,
    so a forged or damaged one is refused before a kernel reads it."""
    if not isinstance(cache, Cache):
        raise TypeError(
            f"cache: expected the Cache returned by batchnorm_forward, got {type(cache).__name__}"
        )
    shape, dt = cache.shape, cache.dtype
    want = {n: (shape[1],) for n in _CHANNEL}
    want.update({n: shape for n in _FULL})
    for name, wshape in want.items():
        arr = getattr(cache, name)
        if not (isinstance(arr, np.ndarray) and arr.dtype == dt and arr.shape == wshape
                and arr.flags.c_contiguous):
            raise ValueError(f"cache: its {name} is not a C-contiguous {dt} array of shape {wshape}")
    if cache.mode not in ("train", "eval"):
        raise ValueError(f"cache: unknown mode {cache.mode!r}")


def _forward(x, gamma, beta, eps, num_threads, stats=None):
    """Validate, run the fused forward kernel, wrap the results.

    ``stats`` None computes the batch statistics (training); a pair
    ``(mean, var)`` normalizes with those instead (eval mode).
    """
    x3, shape, dt = full("x", x)
    C = shape[1]
    if stats is None:
        check_batch_count(shape)
    gamma = feature("gamma", gamma, C, dt).copy()
    beta = feature("beta", beta, C, dt).copy()
    eps = check_eps(eps)
    nt = effective_num_threads(num_threads)
    out = np.empty(x3.shape, dt)
    xmu = np.empty(x3.shape, dt)
    xhat = np.empty(x3.shape, dt)
    if stats is None:
        mu, var = np.empty(C, dt), np.empty(C, dt)
    else:
        mu = feature("running_mean", stats[0], C, dt).copy()
        var = feature("running_var", stats[1], C, dt).copy()
    sqrtvar, ivar = np.empty(C, dt), np.empty(C, dt)
    _fused.forward(x3, gamma, beta, eps, out, xmu, xhat, True, mu, var,
                   sqrtvar, ivar, stats is not None, nt)
    cache = Cache(shape=shape, dtype=dt, eps=eps, mode="train" if stats is None else "eval",
                  mu=mu, var=var, sqrtvar=sqrtvar, ivar=ivar, gamma=gamma, beta=beta,
                  xmu=xmu.reshape(shape), xhat=xhat.reshape(shape))
    return out.reshape(shape), cache


def batchnorm_forward(x, gamma, beta, eps=1e-5, *, num_threads=None):
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
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores (honouring ``OMP_NUM_THREADS`` and
        threadpoolctl). Results are bitwise identical for any value.

    Returns
    -------
    out : ndarray, shape of x
        ``gamma * (x - mu) / sqrt(var + eps) + beta``.
    cache : Cache
        The node values the backward passes need.

    Raises
    ------
    TypeError
        An argument is not an array of real numbers, or eps is not a number.
    ValueError
        Wrong shapes, N == 0, a single value per channel, eps not finite or
        not > 0, num_threads < 1.

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
    return _forward(x, gamma, beta, eps, num_threads)


def _prepare_backward(dout, cache, num_threads):
    _check_cache(cache)
    g3 = full("dout", dout, cache.dtype, cache.shape)[0]
    return g3, effective_num_threads(num_threads)


def batchnorm_backward(dout, cache, *, num_threads=None):
    """Staged backward pass: walk the graph in reverse, one compiled kernel per node.

    Parameters
    ----------
    dout : array_like, shape of x
        Gradient of the loss with respect to ``out``; cast to the cache's dtype.
    cache : Cache
        From :func:`batchnorm_forward` (or a :class:`BatchNorm` forward).
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.

    Returns
    -------
    dx : ndarray, shape of x
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError
        ``cache`` is not a Cache, or ``dout`` is not an array of real numbers.
    ValueError
        ``dout``'s shape differs from the forward input's, or the cache is damaged.

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
    g3, nt = _prepare_backward(dout, cache, num_threads)
    constants = ("mu", "ivar") if cache.mode == "eval" else ()
    grads = graph.backward(g3.reshape(cache.shape), cache, num_threads=nt,
                           constants=constants)
    return grads["dx"], grads["dgamma"], grads["dbeta"]


def batchnorm_backward_fused(dout, cache, *, num_threads=None):
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

    Returns
    -------
    dx : ndarray, shape of x
    dgamma, dbeta : ndarray, shape (C,)

    Raises
    ------
    TypeError
        ``cache`` is not a Cache, or ``dout`` is not an array of real numbers.
    ValueError
        ``dout``'s shape differs from the forward input's, or the cache is damaged.

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
    g3, nt = _prepare_backward(dout, cache, num_threads)
    shape, dt, C = cache.shape, cache.dtype, cache.shape[1]
    dx = np.empty(g3.shape, dt)
    dgamma, dbeta = np.empty(C, dt), np.empty(C, dt)
    _fused.backward(g3, cache.xhat.reshape(view3d(shape)), cache.gamma, cache.ivar,
                    dx, dgamma, dbeta, cache.mode == "train", nt)
    return dx.reshape(shape), dgamma, dbeta
