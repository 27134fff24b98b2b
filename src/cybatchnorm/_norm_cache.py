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

from ._typing import AnyArray, F64Array

__all__ = ["NormCache"]

KINDS = ("layer", "group")


def _owned(arr: AnyArray, copy: bool) -> AnyArray:
    # read-only, and so is the array it views: no view can be made writable
    if copy:
        arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    base: Any = arr.base
    while isinstance(base, np.ndarray):
        base.setflags(write=False)
        base = base.base
    return arr


class NormCache:
    """What a per-sample normalization's forward keeps for the backward.

    The normalization runs over rows: x seen as (R, M), a row the M values of
    one sample (layer norm) or of one group of one sample (group norm).

    Attributes
    ----------
    kind : str
        ``"layer"`` or ``"group"``.
    shape : tuple of int
        x's shape.
    param_shape : tuple of int
        gamma's and beta's shape (layer norm: the normalized trailing shape;
        group norm: ``(C,)``).
    groups, S : int
        Groups per sample (1 for layer norm) and values per parameter in a
        row (1 for layer norm; the spatial size for group norm).
    dtype : numpy.dtype
        The computation dtype (float32 or float64).
    eps : float
    x : ndarray, shape (R, M)
        The input's rows, a read-only copy in the computation dtype.
    gamma, beta : ndarray, shape (P,)
        Read-only copies of the scale and shift, flattened.
    mu, ivar : ndarray of float64, shape (R,)
        Each row's mean and ``1 / sqrt(var + eps)``.
    """

    __slots__ = ("kind", "shape", "param_shape", "groups", "S", "dtype", "eps", "x", "gamma",
                 "beta", "mu", "ivar")

    kind: str
    shape: tuple[int, ...]
    param_shape: tuple[int, ...]
    groups: int
    S: int
    dtype: np.dtype[Any]
    eps: float
    x: AnyArray
    gamma: AnyArray
    beta: AnyArray
    mu: F64Array
    ivar: F64Array

    def __init__(self, *, kind: str, shape: tuple[int, ...], param_shape: tuple[int, ...],
                 groups: int, S: int, dtype: Any, eps: float, x: AnyArray, copy_x: bool,
                 gamma: AnyArray, beta: AnyArray, mu: F64Array, ivar: F64Array) -> None:
        values = dict(kind=kind, shape=tuple(shape), param_shape=tuple(param_shape),
                      groups=int(groups), S=int(S), dtype=np.dtype(dtype), eps=float(eps),
                      x=_owned(x, copy_x), gamma=_owned(gamma, True), beta=_owned(beta, True),
                      mu=_owned(mu, False), ivar=_owned(ivar, False))
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:  # noqa: D105
        raise AttributeError(f"NormCache is read-only: {name} cannot be set")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and deepcopy: the fields and fresh copies of the arrays
        state = {name: getattr(self, name) for name in self.__slots__}
        return (_restore, (state,))

    def __repr__(self) -> str:
        return (f"NormCache(kind={self.kind!r}, shape={self.shape}, groups={self.groups}, "
                f"dtype={self.dtype}, eps={self.eps})")


def _restore(state: dict[str, Any]) -> NormCache:
    # a pickled or copied NormCache: its arrays copied and frozen again
    state = dict(state, mu=np.array(state["mu"]), ivar=np.array(state["ivar"]))
    return NormCache(copy_x=True, **state)
