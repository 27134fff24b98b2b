"""The Cache: what a forward pass keeps for the backward, and its check.

Made by :func:`cybatchnorm.batchnorm_forward` (and the layer), read by the
backward passes; :func:`check_cache` refuses a forged or damaged one before a
kernel reads it.
"""
import numpy as np

__all__ = ["Cache", "check_cache"]

FULL = ("xmu", "xhat")
CHANNEL = ("mu", "var", "sqrtvar", "ivar", "gamma", "beta")
KINDS = ("full", "minimal")
_FULL, _CHANNEL, _KINDS = FULL, CHANNEL, KINDS


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

    A Cache is made by the forward pass and cannot be changed afterwards.
    """

    __slots__ = ("shape", "x_shape", "axis", "dtype", "eps", "mode", "kind", "x", "mu64",
                 "ivar64", "_xmu", "_xhat") + _CHANNEL

    def __init__(self, *, shape, dtype, eps, mode, kind, axis=1, x_shape=None, **arrays):
        for name in _CHANNEL + _FULL + ("x", "mu64", "ivar64"):
            arr = arrays.get(name)
            if arr is not None:
                arr = arr.view()
                arr.flags.writeable = False
            object.__setattr__(self, "_" + name if name in _FULL else name, arr)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "x_shape", tuple(shape if x_shape is None else x_shape))
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "dtype", np.dtype(dtype))
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "kind", kind)

    def __setattr__(self, name, value):
        raise AttributeError("Cache is read-only: it holds the values of one forward pass")

    @property
    def xmu(self):
        """``x - mu``, of the cache's shape: kept by a full cache; a minimal
        cache computes it (with ``xhat``) on first access, from its x."""
        if self._xmu is None:
            self._nodes()
        return self._xmu

    @property
    def xhat(self):
        """``xmu * ivar``, of the cache's shape: kept by a full cache; a
        minimal cache computes it (with ``xmu``) on first access."""
        if self._xhat is None:
            self._nodes()
        return self._xhat

    def _nodes(self):
        # a minimal cache's xmu and xhat, computed from its x by the fused
        # forward kernel as a full-cache forward would (same x, shape and
        # dtype: bitwise the same values) and kept from then on. x must not
        # have changed since the forward
        from .api import _forward       # api makes caches: imported when first needed
        kept = _forward(self.x, self.gamma, self.beta, self.eps, None,
                        stats=(self.mu, self.var) if self.mode == "eval" else None)[1]
        object.__setattr__(self, "_xmu", kept._xmu)
        object.__setattr__(self, "_xhat", kept._xhat)

    def __repr__(self):
        last = f", axis=-1, x_shape={self.x_shape}" if self.axis == -1 else ""
        return (f"Cache(shape={self.shape}{last}, dtype={self.dtype}, kind={self.kind!r}, "
                f"mode={self.mode!r}, eps={self.eps})")

    @property
    def nbytes(self):
        """Bytes of the arrays this cache holds that the forward allocated, and
        of the ``xmu``/``xhat`` a minimal cache computed since (the referenced
        input of a minimal cache is not counted)."""
        arrays = [getattr(self, n) for n in _CHANNEL + ("mu64", "ivar64")]
        arrays += [a for a in (self._xmu, self._xhat) if a is not None]
        return sum(a.nbytes for a in arrays)


def check_cache(cache):
    """Make sure ``cache`` is a Cache whose arrays agree with each other,
    so a forged or damaged one is refused before a kernel reads it."""
    if not isinstance(cache, Cache):
        raise TypeError(
            f"cache: expected the Cache returned by batchnorm_forward, got {type(cache).__name__}"
        )
    shape, dt = cache.shape, cache.dtype
    if cache.mode not in ("train", "eval") or cache.kind not in _KINDS:
        raise ValueError(f"cache: unknown mode {cache.mode!r} or kind {cache.kind!r}")
    want = {n: (shape[1],) for n in _CHANNEL}
    want.update({n: shape for n in (_FULL if cache.kind == "full" else ("x",))})
    for name, wshape in want.items():
        arr = getattr(cache, name)
        if not (isinstance(arr, np.ndarray) and arr.dtype == dt and arr.shape == wshape
                and arr.flags.c_contiguous):
            raise ValueError(f"cache: its {name} is not a C-contiguous {dt} array of shape {wshape}")
    for name in ("mu64", "ivar64"):
        arr = getattr(cache, name)
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.float64
                and arr.shape == (shape[1],) and arr.flags.c_contiguous):
            raise ValueError(f"cache: its {name} is not a float64 array of shape ({shape[1]},)")
