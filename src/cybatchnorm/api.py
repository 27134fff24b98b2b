"""The functional API: batchnorm_forward, batchnorm_backward (staged) and
batchnorm_backward_fused; the Cache they pass along lives in ``_cache``.

Each function validates its arguments once (``_validation``), then runs the
unchecked engine (``_engine``, the only importer of the compiled kernels) and
wraps the results. A call goes: this file -> ``_validation`` (returns) ->
``_engine`` -> the kernel; the staged backward: this file -> ``staged`` ->
``_node_ops`` -> each node's kernel.
"""
from __future__ import annotations

from typing import Literal

from . import _engine, staged
from ._cache import Cache
from ._typing import AnyArray, ArrayLike, F64Array
from ._validation import DEFAULT_EPS, ForwardArgs, backward_args, forward_args

#: what a forward keeps: ``"full"`` (xmu and xhat too) or ``"minimal"``
CacheKind = Literal["full", "minimal"]

__all__ = ["Cache", "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_fused"]


def run_forward(a: ForwardArgs) -> tuple[AnyArray, Cache]:
    """The fused forward of a validated call (``_validation.ForwardArgs``), for
    :func:`batchnorm_forward`; returns ``(out, cache)``, out of x's shape
    (the caller's ``out`` if given)."""
    out, cache, _ = run_forward_m2(a)
    return out, cache


def run_forward_m2(a: ForwardArgs) -> tuple[AnyArray, Cache, F64Array]:
    """:func:`run_forward`, and the float64 sums of squared deviations of the
    batch statistics (what the running variance is updated from)."""
    keep = a.kind == "full"
    out3 = a.out3 if a.out3 is not None else _engine.empty(a.x3.shape, a.dtype)
    values = _engine.fused_forward(a.x3, a.gamma, a.beta, a.eps, out3, keep, a.stats, a.nt,
                                   frozen=True, copy_x=a.copy_x)
    if keep:
        values["xmu"] = values["xmu"].reshape(a.shape)
        values["xhat"] = values["xhat"].reshape(a.shape)
    else:
        values["x"] = values.get("x", a.x3).reshape(a.shape)
    cache = Cache(shape=a.shape, dtype=a.dtype, eps=a.eps,
                  mode="train" if a.stats is None else "eval", kind=a.kind, axis=a.axis,
                  x_shape=a.x_shape, _owned=True, **values)
    return (a.out if a.out is not None else out3.reshape(a.x_shape)), cache, values["m2"]


def batchnorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, eps: float = DEFAULT_EPS, *,
                      axis: int = 1, num_threads: int | None = None, cache: CacheKind = "full",
                      out: AnyArray | None = None) -> tuple[AnyArray, Cache]:
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
    return run_forward(forward_args(x, gamma, beta, eps, axis=axis, num_threads=num_threads,
                                    cache=cache, out=out))


def batchnorm_backward(dout: ArrayLike, cache: Cache, *, num_threads: int | None = None,
                       dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
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
    g3, nt, dx3 = backward_args(dout, cache, num_threads, dx)
    dx3, dgamma, dbeta = staged.walk(g3, cache, nt, dx3)
    return (dx if dx is not None else dx3.reshape(cache.x_shape)), dgamma, dbeta


def batchnorm_backward_fused(dout: ArrayLike, cache: Cache, *, num_threads: int | None = None,
                             dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
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
    g3, nt, dx3 = backward_args(dout, cache, num_threads, dx)
    if dx3 is None:
        dx3 = _engine.empty(g3.shape, cache.dtype)
    from_x = cache.x is not None       # a minimal cache (check_cache saw it hold x)
    src = (cache.x if cache.x is not None else cache.xhat).reshape(g3.shape)
    dgamma, dbeta = _engine.fused_backward(g3, src, from_x, cache.mu64, cache.ivar64,
                                           cache.gamma, dx3, cache.mode == "train", nt)
    return (dx if dx is not None else dx3.reshape(cache.x_shape)), dgamma, dbeta
