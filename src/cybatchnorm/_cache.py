"""The Cache: what a forward pass keeps for the backward.

Made by :func:`cybatchnorm.batchnorm_forward` (and the layer), read by the
backward passes; :meth:`Cache.check_readable` refuses a forged or damaged one
before a kernel reads it.
"""
from __future__ import annotations

import math
import operator
from typing import Any, cast

import numpy as np

from . import _engine
from ._threads import default_num_threads
from ._typing import AnyArray, F64Array

__all__ = ["Cache"]

FULL = ("xmu", "xhat")
CHANNEL = ("mu", "var", "sqrtvar", "ivar", "gamma", "beta")
KINDS = ("full", "minimal")
# the arrays a minimal (False) or full (True) cache holds, read in one call
_HELD = {False: operator.attrgetter(*CHANNEL, "mu64", "ivar64", "x"),
         True: operator.attrgetter(*CHANNEL, "mu64", "ivar64", "_xmu", "_xhat")}
_FIELDS = operator.attrgetter("shape", "x_shape", "axis", "dtype", "eps", "mode", "kind")
_VECTORS = CHANNEL + ("mu64", "ivar64")
_SLOTS = tuple((n, "_" + n if n in FULL else n) for n in CHANNEL + FULL + ("x", "mu64", "ivar64"))


class Cache:
    """What :func:`batchnorm_forward` keeps for the backward pass.

    Attributes are named after the graph's nodes, all read-only arrays in the
    computation dtype:

    ========== =============== ==============================================
    attribute  shape           value
    ========== =============== ==============================================
    mu         (C,)            batch mean per channel
    xmu        x.shape         ``x - mu`` (a minimal cache: computed on first access)
    var        (C,)            biased batch variance
    sqrtvar    (C,)            ``sqrt(var + eps)``
    ivar       (C,)            ``1 / sqrtvar``
    xhat       x.shape         ``xmu * ivar`` (a minimal cache: computed on first access)
    x          x.shape         the input, minimal cache only (None otherwise)
    gamma      (C,)            a copy of the scale used by the forward
    beta       (C,)            a copy of the shift used by the forward
    ========== =============== ==============================================

    plus ``mu64`` and ``ivar64``, float64 copies of ``mu`` and ``ivar`` that
    the fused kernels use, ``eps`` (float), ``shape`` (x's shape; for
    channels-last input, ``axis=-1``, the shape of the (N*H*W, C) matrix the
    kernels read, and of ``xmu``, ``xhat`` and ``x``), ``x_shape`` (x's
    shape), ``axis`` (1 or -1), ``dtype``, ``kind``
    (``"full"`` or ``"minimal"``) and ``mode`` (``"train"``: batch
    statistics, gradients flow through mu and var; ``"eval"``: mu and var
    were the running statistics, constants).

    Memory: a full cache holds two arrays the size of x (``xmu`` and
    ``xhat``) plus (C,) vectors, about ``2 * x.nbytes``. A minimal cache holds
    no new array the size of x: it keeps a *reference* to the (contiguous,
    typed) input instead, like PyTorch does, so x must not be changed in
    place between the forward and the backward (or a first read of ``xmu``
    or ``xhat``, which a minimal cache then computes from x, bitwise as a
    full cache holds them, and keeps). ``sq`` is never kept: its
    backward needs only ``xmu``.

    A Cache is made by the forward pass and cannot be changed afterwards: its
    arrays are read-only and view read-only arrays, so they cannot be made
    writable again (``cache.mu.flags.writeable = True`` raises), and a
    backward refuses a cache whose fields or arrays were replaced since the
    forward (forced past the guard with ``object.__setattr__``). Only
    reaching through ``.base`` to the memory could still change it; a
    minimal cache's ``x`` is the caller's array, which must not change. It survives
    ``copy.deepcopy`` and a pickle round trip: the copy is checked
    (:meth:`check_structure`) and gives the original's gradients, bit for bit.
    """

    __slots__ = ("shape", "x_shape", "axis", "dtype", "eps", "mode", "kind", "x", "mu64",
                 "ivar64", "_xmu", "_xhat", "_sealed") + CHANNEL
    shape: tuple[int, ...]
    x_shape: tuple[int, ...]
    axis: int
    dtype: np.dtype[Any]
    eps: float
    mode: str
    kind: str
    x: AnyArray | None
    mu64: F64Array
    ivar64: F64Array
    _xmu: AnyArray | None
    _xhat: AnyArray | None
    _sealed: tuple[Any, ...] | None
    mu: AnyArray
    var: AnyArray
    sqrtvar: AnyArray
    ivar: AnyArray
    gamma: AnyArray
    beta: AnyArray

    def __init__(self, *, shape: tuple[int, ...], dtype: Any, eps: float, mode: str, kind: str,
                 axis: int = 1, x_shape: tuple[int, ...] | None = None, _owned: bool = False,
                 **arrays: AnyArray | None) -> None:
        # every array is held read-only and views an array that is read-only
        # too, so its flag cannot be set back (only reaching through .base
        # could write it). _owned: the forward made the arrays (all but x,
        # which may be the caller's) and froze the blocks its (C,) rows view
        # (_engine.fused_forward(frozen=True)): they are frozen in place; others
        # are held as read-only views. An owned cache is sealed: check_cache
        # trusts it
        setattr_ = object.__setattr__
        for name, attr in _SLOTS:
            arr = arrays.get(name)
            if arr is not None:
                if _owned and name != "x":
                    if name in FULL:
                        freeze(arr)      # the (C,) rows came read-only
                else:
                    arr = arr.view()
                    arr.setflags(write=False)
            setattr_(self, attr, arr)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "x_shape", tuple(shape if x_shape is None else x_shape))
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "dtype", np.dtype(dtype))
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "_sealed", self._fingerprint() if _owned else None)

    def _fingerprint(self) -> tuple[Any, ...]:
        # what the forward made, cheaply: the fields and which arrays the
        # cache holds. A sealed cache whose fingerprint still matches (and
        # whose arrays are still read-only) needs no check: its arrays agree
        # by construction. Contents are not hashed (that would cost a pass
        # over them): the frozen bases guard them
        return (_FIELDS(self), tuple(map(id, _HELD[self.kind == "full"](self))))

    def _intact(self) -> bool:
        """Whether this cache is as the forward made it: sealed, with the same
        fields and arrays. Its arrays need no flag check: they cannot be made
        writable again (their bases are read-only too)."""
        return self._sealed is not None and self._sealed == self._fingerprint()

    def check_readable(self) -> None:
        """Raise ValueError unless a backward may read this cache: as the
        forward made it (sealed, no field or array replaced since: its arrays
        agree by construction and cannot be made writable), or, made by hand
        or unpickled, with fields and arrays that agree
        (:meth:`check_structure`)."""
        if self._intact():
            return
        self.check_structure()
        if self._sealed is not None:
            raise ValueError("cache: changed since the forward that made it (a field or an "
                             "array replaced); use the Cache the forward returned")

    def held_arrays(self) -> list[AnyArray]:
        """Every array this cache holds (the per-channel values, x for a
        minimal cache, xmu and xhat once made): what an output buffer must
        not overlap."""
        return [a for a in [getattr(self, n) for n in CHANNEL + ("x",)] + [self._xmu, self._xhat]
                if a is not None]

    def check_structure(self) -> None:
        """Raise ValueError unless the fields and arrays agree with each other
        (mode, kind, shapes, dtypes, C-contiguity): what a Cache made by hand
        or restored from a pickle must show before a kernel reads it."""
        shape, dt = self.shape, self.dtype
        if self.mode not in ("train", "eval") or self.kind not in KINDS:
            raise ValueError(f"cache: unknown mode {self.mode!r} or kind {self.kind!r}")
        want: dict[str, tuple[int, ...]] = {n: (shape[1],) for n in CHANNEL}
        want.update({n: shape for n in (FULL if self.kind == "full" else ("x",))})
        for name, wshape in want.items():
            arr = getattr(self, name)
            if not (isinstance(arr, np.ndarray) and arr.dtype == dt and arr.shape == wshape
                    and arr.flags.c_contiguous):
                raise ValueError(f"cache: its {name} is not a C-contiguous {dt} array of "
                                 f"shape {wshape}")
        for name in ("mu64", "ivar64"):
            arr = getattr(self, name)
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float64
                    and arr.shape == (shape[1],) and arr.flags.c_contiguous):
                raise ValueError(f"cache: its {name} is not a float64 array of shape "
                                 f"({shape[1]},)")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and deepcopy: the fields and arrays, rebuilt by _restore
        # (which checks them and seals the copy); __setattr__ would refuse
        # the default slot-by-slot restore
        arrays = {n: getattr(self, n) for n in CHANNEL + ("x", "mu64", "ivar64")}
        arrays.update(xmu=self._xmu, xhat=self._xhat)
        fields = dict(shape=self.shape, x_shape=self.x_shape, axis=self.axis,
                      dtype=self.dtype, eps=self.eps, mode=self.mode, kind=self.kind)
        return (_restore, (fields, arrays, self._sealed is not None))

    def __setattr__(self, name: str, value: Any) -> None:  # noqa: D105
        raise AttributeError("Cache is read-only: it holds the values of one forward pass")

    @property
    def xmu(self) -> AnyArray:
        """``x - mu``, of the cache's shape: kept by a full cache; a minimal
        cache computes it (with ``xhat``) on first access, from its x."""
        if self._xmu is None:
            self._nodes()
        return cast(AnyArray, self._xmu)

    @property
    def xhat(self) -> AnyArray:
        """``xmu * ivar``, of the cache's shape: kept by a full cache; a
        minimal cache computes it (with ``xmu``) on first access."""
        if self._xhat is None:
            self._nodes()
        return cast(AnyArray, self._xhat)

    def _nodes(self) -> None:
        # a minimal cache's xmu and xhat, computed from its x by the fused
        # forward kernel as a full-cache forward would (same x, shape and
        # dtype: bitwise the same values) and kept from then on. x must not
        # have changed since the forward
        if self.x is None:
            raise RuntimeError("cache: a minimal cache without its x")
        x3 = self.x.reshape(self.shape[0], self.shape[1], math.prod(self.shape[2:]))
        stats = (self.mu.copy(), self.var.copy()) if self.mode == "eval" else None
        values = _engine.fused_forward(x3, self.gamma, self.beta, self.eps,
                                       _engine.empty(x3.shape, self.dtype), True, stats,
                                       default_num_threads(x3.size))
        for name in FULL:
            arr = values[name].reshape(self.shape)
            freeze(arr)        # with its bases: it cannot be made writable again
            object.__setattr__(self, "_" + name, arr)

    def __repr__(self) -> str:
        last = f", axis=-1, x_shape={self.x_shape}" if self.axis == -1 else ""
        return (f"Cache(shape={self.shape}{last}, dtype={self.dtype}, kind={self.kind!r}, "
                f"mode={self.mode!r}, eps={self.eps})")

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this cache holds that the forward allocated, and
        of the ``xmu``/``xhat`` a minimal cache computed since (the referenced
        input of a minimal cache is not counted)."""
        arrays = [getattr(self, n) for n in CHANNEL + ("mu64", "ivar64")]
        arrays += [a for a in (self._xmu, self._xhat) if a is not None]
        return sum(a.nbytes for a in arrays)


def freeze(arr: AnyArray) -> None:
    """Make ``arr`` read-only, and every array it is a view of (a reshape's
    too): then no view of it can be made writable again."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base.setflags(write=False)
        base = base.base


def _frozen_copy(arr: AnyArray) -> AnyArray:
    # a copy held through a view of it, both read-only: as the forward's own
    copy = np.array(arr, copy=True)
    copy.setflags(write=False)
    return copy[...]            # a view of a read-only array: read-only


def _restore(fields: dict[str, Any], arrays: dict[str, AnyArray | None], sealed: bool) -> Cache:
    # a pickled or copied Cache: fresh arrays, checked, then frozen and (when
    # the original was made by a forward) sealed as the forward seals its own
    owned: dict[str, Any] = {k: (None if v is None else _frozen_copy(v))
                             for k, v in arrays.items()}
    cache = Cache(**fields, _owned=sealed, **owned)
    cache.check_structure()
    return cache

