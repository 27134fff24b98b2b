"""Layer norm and group norm (instance norm: one channel per group): the
batch-norm graph with the reductions moved.

The nodes are batch norm's, ``mu -> xmu -> sq -> var -> sqrtvar -> ivar ->
xhat -> gammax -> out``; only the values ``mu`` and ``var`` reduce over
change. Batch norm reduces each channel over the batch (and the spatial
axes); layer norm reduces each sample over its normalized trailing axes;
group norm reduces each group of channels of each sample (with the spatial
axes). gamma and beta scale and shift per feature (layer norm: of the
normalized shape; group norm: per channel). Per-sample statistics need no
other sample, so results are the same whatever the batch holds.

Each function validates its arguments once (``_validation``) and runs the
compiled kernels of ``_norms.pyx`` through the engine: one task per row for
the forward, the closed-form backward with the parameter gradients summed
over fixed chunks of rows in order, float64 sums throughout, bitwise the
same for any thread count and SIMD build.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from . import _engine, staged
from ._norm_cache import NormCache
from ._typing import AnyArray, ArrayLike
from ._validation import (
    DEFAULT_EPS,
    NormArgs,
    cache_kind,
    groupnorm_args,
    layernorm_args,
    norm_backward_args,
)
from .graph import Reduction

__all__ = ["NormCache", "layernorm_forward", "layernorm_backward", "layernorm_backward_fused",
           "groupnorm_forward", "groupnorm_backward", "groupnorm_backward_fused"]

#: what a forward keeps: ``"full"`` (xmu and xhat too) or ``"minimal"``
CacheKind = Literal["full", "minimal"]


def _forward(kind: str, a: NormArgs, cache: str) -> tuple[AnyArray, NormCache]:
    out2 = a.out2 if a.out2 is not None else _engine.empty(a.x2.shape, a.dtype)
    xcopy = None
    if a.axis == -1:
        # channels last: the (N, S, C) kernels; the cache copies x afterwards
        mean, var, ivar = _engine.norm_forward_nhwc(a.x2, a.gamma, a.beta, a.eps, a.groups,
                                                    out2, a.nt)
    else:
        # the cache's own x: written by the kernel as it reads each row when
        # x2 is the caller's memory (a conversion already made one of its own)
        xcopy = _engine.empty(a.x2.shape, a.dtype) if a.copy_x else None
        # a minimal cache: float32 output in float32 where exact enough (the
        # batch-norm kernels' float32 path); a full one: float64, rounded once
        mean, var, ivar = _engine.norm_forward(a.x2, a.gamma, a.beta, a.eps, a.groups, a.S,
                                               out2, a.nt, xcopy, fast=cache == "minimal")
    reduction = (Reduction("layer", k=len(a.param_shape)) if kind == "layer"
                 else Reduction("group", groups=a.groups))
    nc = NormCache(kind=kind, cache_kind=cache, shape=a.shape, param_shape=a.param_shape,
                   reduction=reduction, groups=a.groups, S=a.S, dtype=a.dtype, eps=a.eps,
                   x=a.x2 if xcopy is None else xcopy,
                   copy_x=a.axis == -1 and a.copy_x, gamma=a.gamma, beta=a.beta, mu64=mean,
                   var64=var, ivar64=ivar, axis=a.axis)
    return (a.out if a.out is not None else out2.reshape(a.shape)), nc


def channels_first(cache: NormCache) -> NormCache:
    """The cache of a channels-last group norm (``axis=-1``) in channels-first
    order: x transposed to (N, C, *spatial) (a copy), the same statistics.
    What the staged walk reads (its views are those of channels-first x)."""
    N, C = cache.shape[0], cache.shape[-1]
    shape = (N, C) + tuple(cache.shape[1:-1])
    rows = cache.rows()
    return NormCache(kind=cache.kind, cache_kind="minimal", shape=shape,
                     param_shape=cache.param_shape, reduction=cache.reduction,
                     groups=cache.groups, S=cache.S, dtype=cache.dtype, eps=cache.eps,
                     x=rows.reshape(rows.shape[1:]), copy_x=False, gamma=cache.gamma,
                     beta=cache.beta, mu64=cache.mu64, var64=cache.var64,
                     ivar64=cache.ivar64)


def _staged(kind: str, dout: ArrayLike, cache: NormCache, num_threads: int | None,
            dx: AnyArray | None) -> tuple[AnyArray, AnyArray, AnyArray]:
    g2, nt, dx2 = norm_backward_args(kind, dout, cache, num_threads, dx)
    last = cache.axis == -1
    walked = channels_first(cache) if last else cache
    views = walked.reduction.views(walked.shape)
    stats = views["stats"]
    if last:
        # channels last: the walk runs on channels-first copies of dout (and dx)
        g2 = np.ascontiguousarray(np.swapaxes(g2, 1, 2))
    dx3, dgamma, dbeta = staged.walk(g2.reshape(stats), walked, nt,
                                     None if dx2 is None or last else dx2.reshape(stats),
                                     views)
    shape = cache.param_shape
    if last:
        N, S, C = cache.x.shape
        back = np.swapaxes(dx3.reshape(N, C, S), 1, 2)
        if dx2 is None:
            dx3 = np.ascontiguousarray(back)
        else:
            np.copyto(dx2, back)
            dx3 = dx2
    return ((dx if dx is not None else dx3.reshape(cache.shape)), dgamma.reshape(shape),
            dbeta.reshape(shape))


def _backward(kind: str, dout: ArrayLike, cache: NormCache, num_threads: int | None,
              dx: AnyArray | None) -> tuple[AnyArray, AnyArray, AnyArray]:
    g2, nt, dx2 = norm_backward_args(kind, dout, cache, num_threads, dx)
    if dx2 is None:
        dx2 = _engine.empty(g2.shape, cache.dtype)
    if cache.axis == -1:
        dgamma, dbeta = _engine.norm_backward_nhwc(g2, cache.x, cache.mu64, cache.ivar64,
                                                   cache.gamma, cache.groups, dx2, nt)
    else:
        dgamma, dbeta = _engine.norm_backward(g2, cache.x, cache.mu64, cache.ivar64,
                                              cache.gamma, cache.groups, cache.S, dx2, nt,
                                              fast=cache.cache_kind == "minimal")
    shape = cache.param_shape
    return ((dx if dx is not None else dx2.reshape(cache.shape)),
            dgamma.astype(cache.dtype).reshape(shape), dbeta.astype(cache.dtype).reshape(shape))


def layernorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, eps: float = DEFAULT_EPS,
                      *, num_threads: int | None = None, cache: CacheKind = "full",
                      out: AnyArray | None = None) -> tuple[AnyArray, NormCache]:
    """Layer normalization: normalize each sample over its trailing axes.

    Parameters
    ----------
    x : array_like, shape (batch..., normalized_shape...)
        float32 and float64 are computed in their own precision (sums in
        float64), float16 in float32, integers and bools in float64.
    gamma, beta : array_like, shape normalized_shape
        Scale and shift per normalized feature; their shape is what
        ``torch.nn.LayerNorm``'s ``normalized_shape`` says: x's trailing axes.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores. Bitwise the same for any value.
    cache : str, keyword-only
        ``"full"`` (the default) also keeps xmu and xhat, what the staged
        backward reads; ``"minimal"`` keeps x and the statistics, enough for
        the fused backward (the staged one then computes xmu and xhat, once,
        and the cache keeps them). With a minimal cache float32 data take the
        float32 path of the batch-norm kernels, in this forward and the fused
        backward: ``(x - fl(mu)) * a + b`` and dx in float32 (twice the SIMD
        width), the sums still float64, within about 2e-6 of the float64
        result relative to the largest value however far x sits from zero;
        rows whose factors float32 cannot hold are computed in float64.
    out : ndarray, optional, keyword-only
        Where to write the output: C-contiguous, writable, x's shape and
        computation dtype, sharing no memory with the inputs.

    Returns
    -------
    out : ndarray, x's shape
        ``gamma * (x - mu) / sqrt(var + eps) + beta``, mu and var (biased)
        of each sample's normalized values, each value computed in float64
        and rounded once (a minimal cache's float32 path: see ``cache``).
    cache : NormCache
        What :func:`layernorm_backward` and :func:`layernorm_backward_fused` need.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    >>> out, cache = bn.layernorm_forward(x, np.ones(3), np.zeros(3))
    >>> out.round(4)
    array([[-1.2247,  0.    ,  1.2247],
           [-0.7071, -0.7071,  1.4142]])
    """
    return _forward("layer", layernorm_args(x, gamma, beta, eps, num_threads, out),
                    cache_kind(cache))


def layernorm_backward(dout: ArrayLike, cache: NormCache, *, num_threads: int | None = None,
                       dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Layer norm's staged backward: ``(dx, dgamma, dbeta)``, node by node.

    Batch norm's graph walked in reverse with its own node kernels: the nodes
    of the statistics and the normalization read x as one "channel" per
    sample, ``gammax`` and ``out`` read it with a channel per normalized
    feature (:class:`cybatchnorm.graph.Reduction`). Equal to
    :func:`layernorm_backward_fused` to rounding; arguments as there.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    >>> out, cache = bn.layernorm_forward(x, np.ones(3), np.zeros(3))
    >>> dout = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> staged = bn.layernorm_backward(dout, cache)
    >>> fused = bn.layernorm_backward_fused(dout, cache)
    >>> all(np.allclose(s, f, rtol=1e-12, atol=1e-14) for s, f in zip(staged, fused))
    True
    """
    return _staged("layer", dout, cache, num_threads, dx)


def layernorm_backward_fused(dout: ArrayLike, cache: NormCache, *,
                             num_threads: int | None = None,
                             dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Layer norm's backward in closed form: ``(dx, dgamma, dbeta)``.

    With dxhat = dout * gamma and M values per sample,
    ``dx = ivar * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, the
    means over the sample's normalized values; ``dgamma = sum(dout * xhat)``
    and ``dbeta = sum(dout)`` over the samples. ``dx`` (optional) receives
    the input's gradient as ``out`` does the forward's output; dgamma and
    dbeta come in gamma's shape and the computation dtype.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    >>> out, cache = bn.layernorm_forward(x, np.ones(3), np.zeros(3))
    >>> dx, dgamma, dbeta = bn.layernorm_backward_fused(np.ones_like(x), cache)
    >>> bool(np.abs(dx).max() < 1e-12), dbeta
    (True, array([2., 2., 2.]))
    """
    return _backward("layer", dout, cache, num_threads, dx)


def groupnorm_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, num_groups: int,
                      eps: float = DEFAULT_EPS, *, axis: int = 1, num_threads: int | None = None,
                      cache: CacheKind = "full",
                      out: AnyArray | None = None) -> tuple[AnyArray, NormCache]:
    """Group normalization: normalize each group of channels of each sample.

    Parameters
    ----------
    x : array_like, shape (N, C, spatial...), or (N, spatial..., C) with ``axis=-1``
        Computed as :func:`layernorm_forward` computes.
    gamma, beta : array_like, shape (C,)
        Scale and shift per channel.
    num_groups : int
        G, a divisor of C: each sample's channels are cut into G groups of
        C / G consecutive channels, each normalized over its channels and the
        spatial axes. ``num_groups=C`` is instance norm, ``1`` normalizes
        each sample as a whole (layer norm over (C, spatial...) with per-channel
        gamma and beta).
    eps : float, default 1e-5
    axis : int, keyword-only, default 1
        The channel axis: 1 for ``(N, C, *spatial)``, -1 (the last) for
        channels-last ``(N, *spatial, C)`` data, read in place by kernels of
        its own (one sample per task; the same statistics and results to
        rounding, not the same bits). The staged backward of channels-last
        data walks a channels-first copy.
    num_threads, cache, out
        As for :func:`layernorm_forward`.

    Returns
    -------
    out : ndarray, x's shape
    cache : NormCache
        What :func:`groupnorm_backward` and :func:`groupnorm_backward_fused` need.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.arange(8.0).reshape(1, 4, 2)          # one sample, 4 channels, 2 positions
    >>> out, cache = bn.groupnorm_forward(x, np.ones(4), np.zeros(4), num_groups=2)
    >>> out.round(4)[0]
    array([[-1.3416, -0.4472],
           [ 0.4472,  1.3416],
           [-1.3416, -0.4472],
           [ 0.4472,  1.3416]])
    """
    return _forward("group", groupnorm_args(x, gamma, beta, num_groups, eps, num_threads, out,
                                            axis), cache_kind(cache))


def groupnorm_backward(dout: ArrayLike, cache: NormCache, *, num_threads: int | None = None,
                       dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Group norm's staged backward: ``(dx, dgamma, dbeta)``, node by node.

    As :func:`layernorm_backward`, the statistics' nodes reading x with one
    "channel" per group of each sample, ``gammax`` and ``out`` with gamma's
    channels. Equal to :func:`groupnorm_backward_fused` to rounding.
    """
    return _staged("group", dout, cache, num_threads, dx)


def groupnorm_backward_fused(dout: ArrayLike, cache: NormCache, *,
                             num_threads: int | None = None,
                             dx: AnyArray | None = None) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Group norm's backward in closed form: ``(dx, dgamma, dbeta)``.

    As :func:`layernorm_backward_fused`, the means taken over each group's
    values (its C / G channels and the spatial axes) and dgamma, dbeta (C,)
    summed over the samples and the spatial axes.
    """
    return _backward("group", dout, cache, num_threads, dx)
