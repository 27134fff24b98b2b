"""NormCache: what a layer-norm or group-norm forward keeps for its backward.

Made by :func:`cybatchnorm.layernorm_forward` and
:func:`cybatchnorm.groupnorm_forward`, read by their backward passes. Every
array is read-only and owned by the cache (a copy where the forward would
otherwise hold the caller's array), and no attribute can be replaced, so
what the backward reads is what the forward computed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._cache import freeze
from ._typing import AnyArray, F64Array

__all__ = ["NormCache"]

KINDS = ("layer", "group")


def _owned(arr: AnyArray, copy: bool) -> AnyArray:
    # read-only with what it views (a copy first when asked): no view of it
    # can be made writable again
    if copy:
        arr = np.array(arr, copy=True)
    freeze(arr)
    return arr


class NormCache:
    """What a per-sample normalization's forward keeps for the backward.

    The normalization runs over rows: x seen as (R, M), a row the M values of
    one sample (layer norm) or of one group of one sample (group norm). The
    attributes named after the graph's nodes are those of batch norm's
    :class:`cybatchnorm.Cache`, their per-channel values now one per row.

    Attributes
    ----------
    kind : str
        ``"layer"`` or ``"group"``; ``cache_kind``: ``"full"`` (xmu and xhat
        made by the forward) or ``"minimal"`` (made when first read, then kept).
    shape : tuple of int
        x's shape.
    param_shape : tuple of int
        gamma's and beta's shape (layer norm: the normalized trailing shape;
        group norm: ``(C,)``).
    reduction : cybatchnorm.graph.Reduction
        What the statistics reduce over (the views the staged walk reads).
    groups, S : int
        Groups per sample (1 for layer norm) and values per parameter in a
        row (1 for layer norm; the spatial size for group norm).
    dtype : numpy.dtype
        The computation dtype (float32 or float64).
    eps : float
    mode : str
        ``"train"``: the statistics are the batch's own (always, here).
    x : ndarray
        The input's rows, (R, M) (a read-only copy in the computation
        dtype); for group norm of channels-last data (``axis`` -1) its
        samples as the channels-last kernels read them, (N, S, C).
    axis : int
        The channel axis of x: 1, or -1 for channels last (group norm).
    xmu, xhat : ndarray
        ``x - mu`` and ``xmu * ivar``, in x's shape.
    gamma, beta : ndarray, shape (P,)
        Read-only copies of the scale and shift, flattened.
    mu, var, sqrtvar, ivar : ndarray, shape (R,)
        Each row's statistics in the computation dtype.
    mu64, var64, ivar64 : ndarray of float64, shape (R,)
        The mean, variance and ``1 / sqrt(var + eps)`` as the fused kernel
        computed them (the fused backward reads mu64 and ivar64).
    """

    __slots__ = ("kind", "cache_kind", "shape", "param_shape", "reduction", "groups", "S",
                 "dtype", "eps", "mode", "x", "gamma", "beta", "mu", "var", "sqrtvar", "ivar",
                 "mu64", "var64", "ivar64", "axis", "_xmu", "_xhat")

    kind: str
    cache_kind: str
    shape: tuple[int, ...]
    param_shape: tuple[int, ...]
    reduction: Any
    groups: int
    S: int
    dtype: np.dtype[Any]
    eps: float
    mode: str
    x: AnyArray
    gamma: AnyArray
    beta: AnyArray
    mu: AnyArray
    var: AnyArray
    sqrtvar: AnyArray
    ivar: AnyArray
    mu64: F64Array
    var64: F64Array
    ivar64: F64Array
    axis: int
    _xmu: AnyArray | None
    _xhat: AnyArray | None

    def __init__(self, *, kind: str, cache_kind: str, shape: tuple[int, ...],
                 param_shape: tuple[int, ...], reduction: Any, groups: int, S: int, dtype: Any,
                 eps: float, x: AnyArray, copy_x: bool, gamma: AnyArray, beta: AnyArray,
                 mu64: F64Array, var64: F64Array, ivar64: F64Array, axis: int = 1) -> None:
        dt = np.dtype(dtype)
        values: dict[str, Any] = dict(
            kind=kind, cache_kind=cache_kind, shape=tuple(shape),
            param_shape=tuple(param_shape), reduction=reduction, groups=int(groups), S=int(S),
            dtype=dt, eps=float(eps), mode="train", x=_owned(x, copy_x),
            gamma=_owned(gamma, True), beta=_owned(beta, True),
            mu=_owned(mu64.astype(dt), False), var=_owned(var64.astype(dt), False),
            sqrtvar=_owned(np.sqrt(var64 + eps).astype(dt), False),
            ivar=_owned(ivar64.astype(dt), False),
            mu64=_owned(mu64, False), var64=_owned(var64, False), ivar64=_owned(ivar64, False),
            axis=int(axis), _xmu=None, _xhat=None)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        if cache_kind == "full":
            self._nodes()

    def _nodes(self) -> None:
        # xmu = x - mu and xhat = xmu * ivar by the node kernels, in the
        # "stats" view (a channel per row), as the staged walk's graph has
        # them; kept, read-only, in x's shape
        from . import _node_ops
        from ._threads import default_num_threads
        nt = default_num_threads(self.x.size)
        x3 = self.rows()
        xmu = _node_ops.xmu_fwd(x3, self.mu, nt)
        xhat = _node_ops.xhat_fwd(xmu, self.ivar, nt)
        if self.axis == -1:
            # back from the (sample, group) rows to x's channels-last shape
            xmu, xhat = (np.ascontiguousarray(np.moveaxis(
                a.reshape((self.shape[0], self.shape[-1]) + self.shape[1:-1]), 1, -1))
                for a in (xmu, xhat))
        object.__setattr__(self, "_xmu", _owned(xmu.reshape(self.shape), False))
        object.__setattr__(self, "_xhat", _owned(xhat.reshape(self.shape), False))

    def rows(self) -> AnyArray:
        """x in the staged walk's "stats" view, (1, R, M): a row per sample
        (layer norm) or per group of a sample (group norm). A view of
        :attr:`x`, or for channels last a contiguous copy in channels-first
        order (the walk's views are those of channels-first x)."""
        if self.axis == 1:
            R, M = self.x.shape
            return self.x.reshape(1, R, M)
        N, S, C = self.x.shape
        return np.ascontiguousarray(np.swapaxes(self.x, 1, 2)).reshape(
            1, N * self.groups, (C // self.groups) * S)

    @property
    def xmu(self) -> AnyArray:
        """``x - mu``, x's shape: made by the forward of a full cache, by the
        first access to ``xmu`` or ``xhat`` of a minimal one, then kept."""
        if self._xmu is None:
            self._nodes()
        return self._xmu   # type: ignore[return-value]

    @property
    def xhat(self) -> AnyArray:
        """``xmu * ivar``, x's shape: made with :attr:`xmu`, then kept."""
        if self._xhat is None:
            self._nodes()
        return self._xhat  # type: ignore[return-value]

    def __setattr__(self, name: str, value: Any) -> None:  # noqa: D105
        raise AttributeError(f"NormCache is read-only: {name} cannot be set")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and deepcopy: what the constructor takes, the arrays copied
        state = {name: getattr(self, name) for name in (
            "kind", "cache_kind", "shape", "param_shape", "reduction", "groups", "S", "dtype",
            "eps", "x", "gamma", "beta", "mu64", "var64", "ivar64", "axis")}
        return (_restore, (state,))

    def __repr__(self) -> str:
        axis = "" if self.axis == 1 else ", axis=-1"
        return (f"NormCache(kind={self.kind!r}, shape={self.shape}, groups={self.groups}, "
                f"dtype={self.dtype}, eps={self.eps}, cache_kind={self.cache_kind!r}{axis})")


def _restore(state: dict[str, Any]) -> NormCache:
    # a pickled or copied NormCache: its arrays copied and frozen again
    for name in ("mu64", "var64", "ivar64"):
        state[name] = np.array(state[name])
    return NormCache(copy_x=True, **state)
