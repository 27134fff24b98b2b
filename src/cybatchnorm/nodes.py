"""The graph's nodes as public functions: validate the arguments, run the
node's compiled kernel.

One function per node and direction, named after the node
(``<node>_forward``, ``<node>_backward``) and :func:`branch_sum`, where two
branches' gradients meet. Each validates its arguments once, then calls the
node's unchecked operation in :mod:`cybatchnorm._node_ops`. They take and
return plain numpy arrays of any shape (N, C, *spatial); a gradient that is
one value per channel broadcast over the batch (``var_backward``'s dsq,
``mu_backward``'s dx2) is a read-only zero-stride view. :data:`cybatchnorm.graph.NODES`
lists them with the graph's edges; the docs' chapters call them one by one.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _engine
from . import _node_ops as ops
from ._typing import AnyArray, ArrayLike
from ._validation import (
    check_eps,
    check_num_threads,
    check_out,
    computation_dtype,
    feature,
    full,
    grad_shape,
    vector,
    view3d,
)

__all__ = [
    "mu_forward", "mu_backward", "xmu_forward", "xmu_backward",
    "sq_forward", "sq_backward", "var_forward", "var_backward",
    "sqrtvar_forward", "sqrtvar_backward", "ivar_forward", "ivar_backward",
    "xhat_forward", "xhat_backward", "gammax_forward", "gammax_backward",
    "out_forward", "out_backward", "branch_sum",
]


def _full_out(out: AnyArray | None, shape: Sequence[int], dtype: Any, inputs: tuple[Any, ...],
              allow: tuple[Any, ...] = ()) -> AnyArray:
    # a fresh (N, C, S) array, or the caller's ``out`` (the backward walk
    # passes dead buffers it made, or the incoming gradient itself), checked:
    # x's shape and the computation dtype, C-contiguous, writable, sharing no
    # memory with an input unless it is one of ``allow`` (elementwise kernels
    # read each value before writing the same place)
    if out is None:
        return _engine.empty(view3d(shape), dtype)
    return check_out("out", out, shape, dtype, inputs, allow)


# ------------------------------------------------------------------ forward

def mu_forward(x: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``mu = mean(x)`` over the batch (and spatial axes): shape (C,)."""
    x3, shape, dt = full("x", x)
    return ops.mu_fwd(x3, check_num_threads(num_threads, x3.size))


def xmu_forward(x: ArrayLike, mu: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``xmu = x - mu``, mu broadcast along the batch: shape of x."""
    x3, shape, dt = full("x", x)
    mu = feature("mu", mu, shape[1], dt)
    return ops.xmu_fwd(x3, mu, check_num_threads(num_threads, x3.size)).reshape(shape)


def sq_forward(xmu: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``sq = xmu ** 2``, elementwise: shape of xmu. In float32 it overflows
    to inf where ``|xmu| > 1.8e19``."""
    a3, shape, dt = full("xmu", xmu)
    return ops.sq_fwd(a3, check_num_threads(num_threads, a3.size)).reshape(shape)


def var_forward(sq: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``var = mean(sq)`` over the batch: shape (C,). The biased variance,
    summed in float64; a float32 result overflows where it exceeds 3.4e38."""
    a3, shape, dt = full("sq", sq)
    return ops.var_fwd(a3, check_num_threads(num_threads, a3.size))


def sqrtvar_forward(var: ArrayLike, eps: float, *, num_threads: int | None = None) -> AnyArray:
    """``sqrtvar = sqrt(var + eps)``: shape (C,)."""
    var, dt = vector("var", var)
    return ops.sqrtvar_fwd(var, check_eps(eps), check_num_threads(num_threads, var.size))


def ivar_forward(sqrtvar: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``ivar = 1 / sqrtvar``: shape (C,)."""
    sqrtvar, dt = vector("sqrtvar", sqrtvar)
    return ops.ivar_fwd(sqrtvar, check_num_threads(num_threads, sqrtvar.size))


def xhat_forward(xmu: ArrayLike, ivar: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``xhat = xmu * ivar``, ivar broadcast along the batch: shape of xmu."""
    a3, shape, dt = full("xmu", xmu)
    ivar = feature("ivar", ivar, shape[1], dt)
    return ops.xhat_fwd(a3, ivar, check_num_threads(num_threads, a3.size)).reshape(shape)


def gammax_forward(
    xhat: ArrayLike,
    gamma: ArrayLike,
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """``gammax = gamma * xhat``, gamma broadcast along the batch."""
    a3, shape, dt = full("xhat", xhat)
    gamma = feature("gamma", gamma, shape[1], dt)
    return ops.gammax_fwd(a3, gamma, check_num_threads(num_threads, a3.size)).reshape(shape)


def out_forward(gammax: ArrayLike, beta: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``out = gammax + beta``, beta broadcast along the batch."""
    a3, shape, dt = full("gammax", gammax)
    beta = feature("beta", beta, shape[1], dt)
    return ops.out_fwd(a3, beta, check_num_threads(num_threads, a3.size)).reshape(shape)


# ----------------------------------------------------------------- backward

def out_backward(dout: ArrayLike, *, num_threads: int | None = None) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``out = gammax + beta``: returns ``(dbeta, dgammax)``.

    ``dbeta = sum(dout)`` over the batch (beta was broadcast, so its gradient
    collects every row); ``dgammax`` is ``dout`` itself, an addition passes
    the gradient through unchanged (the same array is returned).
    """
    g3, shape, dt = full("dout", dout)
    return ops.out_bwd(g3, check_num_threads(num_threads, g3.size))[0], g3.reshape(shape)


def gammax_backward(
    dgammax: ArrayLike,
    xhat: ArrayLike,
    gamma: ArrayLike,
    *,
    num_threads: int | None = None,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``gammax = gamma * xhat``: returns ``(dgamma, dxhat)``.

    ``dgamma = sum(dgammax * xhat)`` over the batch, ``dxhat = dgammax * gamma``.
    ``out`` may be ``dgammax`` itself: the product is then taken in place.
    """
    g3, shape, dt = full("dgammax", dgammax)
    h3 = full("xhat", xhat, dt, shape)[0]
    gamma = feature("gamma", gamma, shape[1], dt)
    dxhat = _full_out(out, shape, dt, (dgammax, g3, xhat, h3), allow=(dgammax,))
    dgamma, dxhat = ops.gammax_bwd(g3, h3, gamma, check_num_threads(num_threads, g3.size), dxhat)
    return dgamma, dxhat.reshape(shape)


def xhat_backward(
    dxhat: ArrayLike,
    xmu: ArrayLike,
    ivar: ArrayLike,
    *,
    num_threads: int | None = None,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``xhat = xmu * ivar``: returns ``(divar, dxmu1)``.

    ``divar = sum(dxhat * xmu)`` over the batch, ``dxmu1 = dxhat * ivar`` (the
    first of the two gradients that reach xmu). ``out`` may be ``dxhat``
    itself: the product is then taken in place.
    """
    g3, shape, dt = full("dxhat", dxhat)
    m3 = full("xmu", xmu, dt, shape)[0]
    ivar = feature("ivar", ivar, shape[1], dt)
    dxmu1 = _full_out(out, shape, dt, (dxhat, g3, xmu, m3), allow=(dxhat,))
    divar, dxmu1 = ops.xhat_bwd(g3, m3, ivar, check_num_threads(num_threads, g3.size), dxmu1)
    return divar, dxmu1.reshape(shape)


def ivar_backward(
    divar: ArrayLike,
    sqrtvar: ArrayLike,
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """Gradient of ``ivar = 1 / sqrtvar``: ``dsqrtvar = -divar / sqrtvar**2``,
    computed and returned in float64 (a per-channel gradient)."""
    divar = np.ascontiguousarray(vector("divar", divar)[0], np.float64)
    sqrtvar = vector("sqrtvar", sqrtvar)[0]
    _same_channels("sqrtvar", sqrtvar, divar)
    return ops.ivar_bwd(divar, sqrtvar, check_num_threads(num_threads, divar.size))


def sqrtvar_backward(
    dsqrtvar: ArrayLike,
    sqrtvar: ArrayLike,
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """Gradient of ``sqrtvar = sqrt(var + eps)``: ``dvar = 0.5 * dsqrtvar /
    sqrtvar``, computed and returned in float64 (a per-channel gradient)."""
    dsqrtvar = np.ascontiguousarray(vector("dsqrtvar", dsqrtvar)[0], np.float64)
    sqrtvar = vector("sqrtvar", sqrtvar)[0]
    _same_channels("sqrtvar", sqrtvar, dsqrtvar)
    return ops.sqrtvar_bwd(dsqrtvar, sqrtvar, check_num_threads(num_threads, dsqrtvar.size))


def _same_channels(name: str, v: AnyArray, grad: AnyArray) -> None:
    if v.shape != grad.shape:
        raise ValueError(f"{name}: expected shape {grad.shape}, one value per channel, "
                         f"got {v.shape}")


def _per_channel_view(vec: AnyArray, shape: tuple[int, ...]) -> AnyArray:
    # a (C,) vector repeated over the batch and spatial axes: a read-only,
    # zero-stride view, so nothing the size of x is written
    return np.broadcast_to(vec.reshape((1, -1) + (1,) * (len(shape) - 2)), shape)


def _channel_vector(arr: Any) -> AnyArray | None:
    """The (C,) vector behind a gradient that is one value per channel held as
    a zero-stride view (what var_backward and mu_backward return); None for
    any other array."""
    if (not isinstance(arr, np.ndarray) or arr.ndim < 2 or arr.size == 0
            or any(st != 0 for i, st in enumerate(arr.strides) if i != 1)):
        return None
    return arr[(0, slice(None)) + (0,) * (arr.ndim - 2)]


def var_backward(
    dvar: ArrayLike,
    shape: Sequence[int],
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """Gradient of ``var = mean(sq)``: ``dsq = dvar / M`` broadcast to ``shape``.

    ``M`` is the number of values averaged per channel (N times the spatial
    size); every one of them moved var by 1/M of its own change. All values
    of a channel share one gradient, so the kernel computes the (C,) vector
    ``dvar / M`` and ``dsq`` is a read-only view of it with stride 0 along
    the batch and spatial axes: nothing the size of x is written.
    """
    dvar = np.ascontiguousarray(vector("dvar", dvar)[0], np.float64)
    shape = grad_shape(shape, dvar)
    dsq = ops.var_bwd(dvar, view3d(shape), check_num_threads(num_threads, dvar.size))
    return _per_channel_view(dsq, shape)


def sq_backward(
    dsq: Any,
    xmu: ArrayLike,
    *,
    num_threads: int | None = None,
    out: AnyArray | None = None,
    add_to: AnyArray | None = None,
) -> AnyArray:
    """Gradient of ``sq = xmu ** 2``: ``dxmu2 = 2 * xmu * dsq``.

    When ``dsq`` is one value per channel broadcast over the batch (as
    :func:`var_backward` returns it), only ``xmu`` is read from memory.
    ``out`` may be a full-size ``dsq`` itself (in place). ``add_to``, the
    gradient of ``xmu`` that arrived by the other branch (``dxmu1``), makes
    it return ``add_to + dxmu2`` written into ``add_to``: the branch sum of
    :func:`branch_sum`, bit for bit, without a pass of its own.
    """
    vec = _channel_vector(dsq)
    inputs: tuple[Any, ...]
    allow: tuple[Any, ...]
    if vec is None:
        g3, shape, dt = full("dsq", dsq)
        m3 = full("xmu", xmu, dt, shape)[0]
        inputs, allow = (dsq, g3, xmu, m3), (dsq,)
    else:
        computation_dtype("dsq", dsq)
        m3, shape, dt = full("xmu", xmu, None, dsq.shape)   # xmu's dtype, dsq float64
        inputs, allow = (dsq, xmu, m3), ()
    if add_to is not None:
        if out is not None:
            raise ValueError("out: give out or add_to, not both")
        res = check_out("add_to", add_to, shape, dt, inputs)
    else:
        res = _full_out(out, shape, dt, inputs, allow=allow)
    nt = check_num_threads(num_threads, m3.size)
    dsq3 = g3 if vec is None else np.ascontiguousarray(vec, np.float64)
    if add_to is not None:
        return ops.sq_bwd(dsq3, m3, nt, add_to=res).reshape(shape)
    return ops.sq_bwd(dsq3, m3, nt, out=res).reshape(shape)


def xmu_backward(dxmu: ArrayLike, *, num_threads: int | None = None) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``xmu = x - mu``: returns ``(dx1, dmu)``.

    ``dx1`` is ``dxmu`` itself (the same array); ``dmu = -sum(dxmu)`` over the
    batch, because mu was broadcast and subtracted.
    """
    g3, shape, dt = full("dxmu", dxmu)
    return g3.reshape(shape), ops.xmu_bwd(g3, check_num_threads(num_threads, g3.size))[1]


def mu_backward(
    dmu: ArrayLike,
    shape: Sequence[int],
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """Gradient of ``mu = mean(x)``: ``dx2 = dmu / M`` broadcast to ``shape``.

    Like :func:`var_backward`, a read-only zero-stride view of the (C,)
    vector ``dmu / M``.
    """
    dmu = np.ascontiguousarray(vector("dmu", dmu)[0], np.float64)
    shape = grad_shape(shape, dmu)
    dx2 = ops.mu_bwd(dmu, view3d(shape), check_num_threads(num_threads, dmu.size))
    return _per_channel_view(dx2, shape)


def branch_sum(
    a: ArrayLike,
    b: Any,
    *,
    num_threads: int | None = None,
    out: AnyArray | None = None,
) -> AnyArray:
    """``a + b`` for two gradients of the same node arriving by two branches.

    ``out`` may be ``a`` (a C-contiguous float array) to sum in place. When
    ``b`` is one value per channel broadcast over the batch (as
    :func:`mu_backward` returns it), only ``a`` is read from memory.
    """
    a3, shape, dt = full("a", a)
    bvec = _channel_vector(b)
    if bvec is None:
        b3 = full("b", b, dt, shape)[0]
    else:
        computation_dtype("b", b)
        if b.shape != shape:
            raise ValueError(f"b: expected shape {shape}, got {b.shape}")
        bvec = np.ascontiguousarray(bvec, np.float64)
    # out may be a or b itself (elementwise, in place), never a partial overlap
    o3 = _full_out(out, shape, dt, (a, a3, b) + ((b3,) if bvec is None else ()),
                   allow=(a, b))
    nt = check_num_threads(num_threads, a3.size)
    return ops.branch_add(a3, b3 if bvec is None else bvec, nt, o3).reshape(shape)
