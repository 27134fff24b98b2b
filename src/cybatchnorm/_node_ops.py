"""The graph's node operations, unchecked: one per node and direction.

Each takes validated (N, C, S) views and (C,) vectors and calls that node's
compiled kernel (``<node>_fwd(*inputs, nt, out=None)``, ``<node>_bwd(d<node>,
*saved, nt, ...)``, ``branch_add``); it assumes preparation completed, as
scikit-learn's private loops do. :mod:`cybatchnorm.nodes` validates and
calls these; :mod:`cybatchnorm.staged` calls them directly. Full-size results
go into ``out`` when given (else a new array); a gradient that is one value
per channel broadcast over the batch (``var_bwd``'s dsq, ``mu_bwd``'s dx2) is
returned as its (C,) vector.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _engine
from ._typing import AnyArray, F64Array

__all__ = [
    "mu_fwd", "xmu_fwd", "sq_fwd", "var_fwd", "sqrtvar_fwd", "ivar_fwd", "xhat_fwd",
    "gammax_fwd", "out_fwd", "out_bwd", "gammax_bwd", "xhat_bwd", "ivar_bwd", "sqrtvar_bwd",
    "var_bwd", "sq_bwd", "xmu_bwd", "mu_bwd", "branch_add",
]

def _new(like: AnyArray, out: AnyArray | None = None) -> AnyArray:
    return _engine.empty(like.shape, like.dtype) if out is None else out


def _vec(like: AnyArray) -> AnyArray:
    return np.empty(like.shape[1] if like.ndim == 3 else like.shape[0], like.dtype)


def _gvec(like: AnyArray) -> F64Array:
    # a per-channel gradient: float64 whatever x's dtype (see _nodes.pyx)
    return np.empty(like.shape[1] if like.ndim == 3 else like.shape[0])


def mu_fwd(x3: AnyArray, nt: int) -> AnyArray:
    """mu = mean(x3) per channel, in x's dtype (summed in float64)."""
    mu = _vec(x3)
    _engine.nodes.mu_forward(x3, mu, nt)
    return mu


def _broadcast_op(kernel: str) -> Callable[..., AnyArray]:
    # a node elementwise in a full input and a (C,) vector broadcast over the
    # batch (xmu, xhat, gammax, out): ``op(a3, p, nt, out=None)``. The kernel
    # is looked up at call time, so the SIMD build the engine holds is used
    def op(a3: AnyArray, p: AnyArray, nt: int, out: AnyArray | None = None) -> AnyArray:
        res = _new(a3, out)
        getattr(_engine.nodes, kernel)(a3, p, res, nt)
        return res
    op.__name__ = op.__qualname__ = kernel.replace("_forward", "_fwd").replace("_backward", "_bwd")
    op.__doc__ = (f"The node kernel ``{kernel}``: ``op(a3, p, nt, out=None)``, a3 full, "
                  "p a (C,) vector broadcast over the batch.")
    return op


def _channel_op(kernel: str, grad: bool = False) -> Callable[..., AnyArray]:
    # a node between (C,) vectors (sqrtvar, ivar and their backward):
    # ``op(v, *others, nt)``, the result shaped like v (a gradient: float64)
    def op(v: AnyArray, *rest: Any) -> AnyArray:
        res = np.empty(v.shape) if grad else np.empty_like(v)
        getattr(_engine.nodes, kernel)(v, *rest[:-1], res, rest[-1])
        return res
    op.__name__ = op.__qualname__ = kernel.replace("_forward", "_fwd").replace("_backward", "_bwd")
    op.__doc__ = (f"The node kernel ``{kernel}`` between (C,) vectors: ``op(v, *others, nt)``, "
                  "the result shaped like v" + (" (a gradient: float64)." if grad else "."))
    return op


xmu_fwd = _broadcast_op("xmu_forward")
xhat_fwd = _broadcast_op("xhat_forward")
gammax_fwd = _broadcast_op("gammax_forward")
out_fwd = _broadcast_op("out_forward")
sqrtvar_fwd = _channel_op("sqrtvar_forward")      # (var, eps, nt)
ivar_fwd = _channel_op("ivar_forward")            # (sqrtvar, nt)
ivar_bwd = _channel_op("ivar_backward", True)     # (divar, sqrtvar, nt)
sqrtvar_bwd = _channel_op("sqrtvar_backward", True)  # (dsqrtvar, sqrtvar, nt)


def sq_fwd(xmu3: AnyArray, nt: int, out: AnyArray | None = None) -> AnyArray:
    """sq = xmu3 ** 2, into ``out`` when given."""
    res = _new(xmu3, out)
    _engine.nodes.sq_forward(xmu3, res, nt)
    return res


def var_fwd(sq3: AnyArray, nt: int) -> AnyArray:
    """var = mean(sq3) per channel, in sq's dtype (summed in float64)."""
    var = _vec(sq3)
    _engine.nodes.var_forward(sq3, var, nt)
    return var


def out_bwd(dout3: AnyArray, nt: int) -> tuple[AnyArray, AnyArray]:
    """(dbeta, dgammax): dbeta = sum(dout3) per channel (float64); dgammax is dout3."""
    dbeta = _gvec(dout3)
    _engine.nodes.out_backward(dout3, dbeta, nt)
    return dbeta, dout3


def gammax_bwd(
    dgammax3: AnyArray,
    xhat3: AnyArray,
    gamma: AnyArray,
    nt: int,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    """(dgamma, dxhat): dgamma = sum(dgammax3 * xhat3) (float64), dxhat = dgammax3 * gamma."""
    dgamma, dxhat = _gvec(dgammax3), _new(dgammax3, out)
    _engine.nodes.gammax_backward(dgammax3, xhat3, gamma, dgamma, dxhat, nt)
    return dgamma, dxhat


def xhat_bwd(
    dxhat3: AnyArray,
    xmu3: AnyArray,
    ivar: AnyArray,
    nt: int,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    """(divar, dxmu1): divar = sum(dxhat3 * xmu3) (float64), dxmu1 = dxhat3 * ivar."""
    divar, dxmu1 = _gvec(dxhat3), _new(dxhat3, out)
    _engine.nodes.xhat_backward(dxhat3, xmu3, ivar, divar, dxmu1, nt)
    return divar, dxmu1


def var_bwd(dvar: AnyArray, shape3: Sequence[int], nt: int) -> AnyArray:
    """dsq as its (C,) float64 vector: dvar / M, M = N * S values per channel."""
    dsq = np.empty(dvar.shape)
    _engine.nodes.var_backward(dvar, float(shape3[0] * shape3[2]), dsq, nt)
    return dsq


def sq_bwd(
    dsq: AnyArray,
    xmu3: AnyArray,
    nt: int,
    out: AnyArray | None = None,
    add_to: AnyArray | None = None,
) -> AnyArray:
    """dxmu2 = 2 * xmu3 * dsq (dsq full, or its (C,) vector); with ``add_to``, added into it."""
    # dsq: a full (N, C, S) gradient, or the (C,) vector of a broadcast one
    res = add_to if add_to is not None else _new(xmu3, out)
    if dsq.ndim == 1:
        _engine.nodes.sq_backward_channel(dsq, xmu3, res, add_to is not None, nt)
    else:
        _engine.nodes.sq_backward(dsq, xmu3, res, add_to is not None, nt)
    return res


def xmu_bwd(dxmu3: AnyArray, nt: int) -> tuple[AnyArray, AnyArray]:
    """(dx1, dmu): dx1 is dxmu3, dmu = -sum(dxmu3) per channel (float64)."""
    dmu = _gvec(dxmu3)
    _engine.nodes.xmu_backward(dxmu3, dmu, nt)
    return dxmu3, dmu


def mu_bwd(dmu: AnyArray, shape3: Sequence[int], nt: int) -> AnyArray:
    """dx2 as its (C,) float64 vector: dmu / M, M = N * S values per channel."""
    dx2 = np.empty(dmu.shape)
    _engine.nodes.mu_backward(dmu, float(shape3[0] * shape3[2]), dx2, nt)
    return dx2


def branch_add(a3: AnyArray, b: AnyArray, nt: int, out: AnyArray | None = None) -> AnyArray:
    """a3 + b, two gradients of one value (b full, or the (C,) vector of a broadcast one)."""
    # b: a full gradient, or the (C,) vector of a broadcast one
    res = _new(a3, out)
    if b.ndim == 1:
        _engine.nodes.branch_sum_channel(a3, b, res, nt)
    else:
        _engine.nodes.branch_sum(a3, b, res, nt)
    return res
