"""The batch-norm computational graph, as data, and the walks over it.

Forward, for x of shape (N, D) (or (N, C, spatial...), each channel normalized
over the batch and the spatial axes)::

    mu      = mean(x)            (C,)
    xmu     = x - mu             full
    sq      = xmu ** 2           full
    var     = mean(sq)           (C,)
    sqrtvar = sqrt(var + eps)    (C,)
    ivar    = 1 / sqrtvar        (C,)
    xhat    = xmu * ivar         full
    gammax  = gamma * xhat       full
    out     = gammax + beta      full

Gradients that are one value per channel (``dbeta``, ``dgamma``, ``divar``,
``dsqrtvar``, ``dvar``, the vectors behind ``dsq`` and ``dx2``, ``dmu``)
are float64 whatever x's dtype: for float32 data of std above ~1e19 or below
~1e-19 (with a tiny eps) ``dvar``, which scales as ``ivar**3``, leaves
float32's range, and the walk would lose the variance branch. Full-size
values and gradients are in x's dtype; in float32, ``sq = xmu ** 2`` (so
``var_forward``'s input) overflows to inf where ``|xmu| > 1.8e19``: the
fused forward (:func:`cybatchnorm.batchnorm_forward`) computes the variance
in float64 and has no such limit.

:data:`NODES` lists these nodes in forward order. Each :class:`Node` carries
the node's compiled kernels, wrapped so that they take and return plain numpy
arrays: ``<node>_forward`` computes the node, ``<node>_backward`` turns the
node's gradient ``d<node>`` into the gradients of its inputs. :func:`backward`
walks the list in reverse and adds gradients where branches meet (``xmu``
feeds both ``sq`` and ``xhat``; ``x`` feeds both ``mu`` and ``xmu``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
import functools
import re
from typing import Any, Tuple

import numpy as np

from . import _engine
from ._typing import AnyArray, ArrayLike, F64Array
from ._validation import (DEFAULT_EPS, check_batch_count, check_eps, check_num_threads,
                          check_out, computation_dtype, feature, full, grad_shape, vector,
                          view3d, walk_args)

__all__ = [
    "Node", "NODES", "node", "forward", "backward",
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


# ------------------------------------------------------- unchecked operations
# One per node and direction, over validated (N, C, S) views and (C,) vectors,
# calling that node's compiled kernel: the public functions below validate
# and call these; the staged walk of the functional API calls them directly.
# Full-size results go into ``out`` when given (else a new array); a gradient
# that is one value per channel broadcast over the batch (var_backward's dsq,
# mu_backward's dx2) is returned as its (C,) vector.


def _new(like: AnyArray, out: AnyArray | None = None) -> AnyArray:
    return _engine.empty(like.shape, like.dtype) if out is None else out


def _vec(like: AnyArray) -> AnyArray:
    return np.empty(like.shape[1] if like.ndim == 3 else like.shape[0], like.dtype)


def _gvec(like: AnyArray) -> F64Array:
    # a per-channel gradient: float64 whatever x's dtype (see _nodes.pyx)
    return np.empty(like.shape[1] if like.ndim == 3 else like.shape[0])


def _mu_fwd(x3: AnyArray, nt: int) -> AnyArray:
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
    op.__name__ = op.__qualname__ = "_" + kernel
    return op


def _channel_op(kernel: str, grad: bool = False) -> Callable[..., AnyArray]:
    # a node between (C,) vectors (sqrtvar, ivar and their backward):
    # ``op(v, *others, nt)``, the result shaped like v (a gradient: float64)
    def op(v: AnyArray, *rest: Any) -> AnyArray:
        res = np.empty(v.shape) if grad else np.empty_like(v)
        getattr(_engine.nodes, kernel)(v, *rest[:-1], res, rest[-1])
        return res
    op.__name__ = op.__qualname__ = "_" + kernel
    return op


_xmu_fwd = _broadcast_op("xmu_forward")
_xhat_fwd = _broadcast_op("xhat_forward")
_gammax_fwd = _broadcast_op("gammax_forward")
_out_fwd = _broadcast_op("out_forward")
_sqrtvar_fwd = _channel_op("sqrtvar_forward")      # (var, eps, nt)
_ivar_fwd = _channel_op("ivar_forward")            # (sqrtvar, nt)
_ivar_bwd = _channel_op("ivar_backward", True)     # (divar, sqrtvar, nt)
_sqrtvar_bwd = _channel_op("sqrtvar_backward", True)  # (dsqrtvar, sqrtvar, nt)


def _sq_fwd(xmu3: AnyArray, nt: int, out: AnyArray | None = None) -> AnyArray:
    res = _new(xmu3, out)
    _engine.nodes.sq_forward(xmu3, res, nt)
    return res


def _var_fwd(sq3: AnyArray, nt: int) -> AnyArray:
    var = _vec(sq3)
    _engine.nodes.var_forward(sq3, var, nt)
    return var


def _out_bwd(dout3: AnyArray, nt: int) -> tuple[AnyArray, AnyArray]:
    dbeta = _gvec(dout3)
    _engine.nodes.out_backward(dout3, dbeta, nt)
    return dbeta, dout3


def _gammax_bwd(
    dgammax3: AnyArray,
    xhat3: AnyArray,
    gamma: AnyArray,
    nt: int,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    dgamma, dxhat = _gvec(dgammax3), _new(dgammax3, out)
    _engine.nodes.gammax_backward(dgammax3, xhat3, gamma, dgamma, dxhat, nt)
    return dgamma, dxhat


def _xhat_bwd(
    dxhat3: AnyArray,
    xmu3: AnyArray,
    ivar: AnyArray,
    nt: int,
    out: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray]:
    divar, dxmu1 = _gvec(dxhat3), _new(dxhat3, out)
    _engine.nodes.xhat_backward(dxhat3, xmu3, ivar, divar, dxmu1, nt)
    return divar, dxmu1


def _var_bwd(dvar: AnyArray, shape3: Sequence[int], nt: int) -> AnyArray:
    dsq = np.empty(dvar.shape)
    _engine.nodes.var_backward(dvar, float(shape3[0] * shape3[2]), dsq, nt)
    return dsq


def _sq_bwd(
    dsq: AnyArray,
    xmu3: AnyArray,
    nt: int,
    out: AnyArray | None = None,
    add_to: AnyArray | None = None,
) -> AnyArray:
    # dsq: a full (N, C, S) gradient, or the (C,) vector of a broadcast one
    res = add_to if add_to is not None else _new(xmu3, out)
    if dsq.ndim == 1:
        _engine.nodes.sq_backward_channel(dsq, xmu3, res, add_to is not None, nt)
    else:
        _engine.nodes.sq_backward(dsq, xmu3, res, add_to is not None, nt)
    return res


def _xmu_bwd(dxmu3: AnyArray, nt: int) -> tuple[AnyArray, AnyArray]:
    dmu = _gvec(dxmu3)
    _engine.nodes.xmu_backward(dxmu3, dmu, nt)
    return dxmu3, dmu


def _mu_bwd(dmu: AnyArray, shape3: Sequence[int], nt: int) -> AnyArray:
    dx2 = np.empty(dmu.shape)
    _engine.nodes.mu_backward(dmu, float(shape3[0] * shape3[2]), dx2, nt)
    return dx2


def _branch_sum(a3: AnyArray, b: AnyArray, nt: int, out: AnyArray | None = None) -> AnyArray:
    # b: a full gradient, or the (C,) vector of a broadcast one
    res = _new(a3, out)
    if b.ndim == 1:
        _engine.nodes.branch_sum_channel(a3, b, res, nt)
    else:
        _engine.nodes.branch_sum(a3, b, res, nt)
    return res


# ------------------------------------------------------------------ forward

def mu_forward(x: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``mu = mean(x)`` over the batch (and spatial axes): shape (C,)."""
    x3, shape, dt = full("x", x)
    return _mu_fwd(x3, check_num_threads(num_threads, x3.size))


def xmu_forward(x: ArrayLike, mu: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``xmu = x - mu``, mu broadcast along the batch: shape of x."""
    x3, shape, dt = full("x", x)
    mu = feature("mu", mu, shape[1], dt)
    return _xmu_fwd(x3, mu, check_num_threads(num_threads, x3.size)).reshape(shape)


def sq_forward(xmu: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``sq = xmu ** 2``, elementwise: shape of xmu. In float32 it overflows
    to inf where ``|xmu| > 1.8e19``."""
    a3, shape, dt = full("xmu", xmu)
    return _sq_fwd(a3, check_num_threads(num_threads, a3.size)).reshape(shape)


def var_forward(sq: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``var = mean(sq)`` over the batch: shape (C,). The biased variance,
    summed in float64; a float32 result overflows where it exceeds 3.4e38."""
    a3, shape, dt = full("sq", sq)
    return _var_fwd(a3, check_num_threads(num_threads, a3.size))


def sqrtvar_forward(var: ArrayLike, eps: float, *, num_threads: int | None = None) -> AnyArray:
    """``sqrtvar = sqrt(var + eps)``: shape (C,)."""
    var, dt = vector("var", var)
    return _sqrtvar_fwd(var, check_eps(eps), check_num_threads(num_threads, var.size))


def ivar_forward(sqrtvar: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``ivar = 1 / sqrtvar``: shape (C,)."""
    sqrtvar, dt = vector("sqrtvar", sqrtvar)
    return _ivar_fwd(sqrtvar, check_num_threads(num_threads, sqrtvar.size))


def xhat_forward(xmu: ArrayLike, ivar: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``xhat = xmu * ivar``, ivar broadcast along the batch: shape of xmu."""
    a3, shape, dt = full("xmu", xmu)
    ivar = feature("ivar", ivar, shape[1], dt)
    return _xhat_fwd(a3, ivar, check_num_threads(num_threads, a3.size)).reshape(shape)


def gammax_forward(
    xhat: ArrayLike,
    gamma: ArrayLike,
    *,
    num_threads: int | None = None,
) -> AnyArray:
    """``gammax = gamma * xhat``, gamma broadcast along the batch."""
    a3, shape, dt = full("xhat", xhat)
    gamma = feature("gamma", gamma, shape[1], dt)
    return _gammax_fwd(a3, gamma, check_num_threads(num_threads, a3.size)).reshape(shape)


def out_forward(gammax: ArrayLike, beta: ArrayLike, *, num_threads: int | None = None) -> AnyArray:
    """``out = gammax + beta``, beta broadcast along the batch."""
    a3, shape, dt = full("gammax", gammax)
    beta = feature("beta", beta, shape[1], dt)
    return _out_fwd(a3, beta, check_num_threads(num_threads, a3.size)).reshape(shape)


# ----------------------------------------------------------------- backward

def out_backward(dout: ArrayLike, *, num_threads: int | None = None) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``out = gammax + beta``: returns ``(dbeta, dgammax)``.

    ``dbeta = sum(dout)`` over the batch (beta was broadcast, so its gradient
    collects every row); ``dgammax`` is ``dout`` itself, an addition passes
    the gradient through unchanged (the same array is returned).
    """
    g3, shape, dt = full("dout", dout)
    return _out_bwd(g3, check_num_threads(num_threads, g3.size))[0], g3.reshape(shape)


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
    dgamma, dxhat = _gammax_bwd(g3, h3, gamma, check_num_threads(num_threads, g3.size), dxhat)
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
    divar, dxmu1 = _xhat_bwd(g3, m3, ivar, check_num_threads(num_threads, g3.size), dxmu1)
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
    return _ivar_bwd(divar, sqrtvar, check_num_threads(num_threads, divar.size))


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
    return _sqrtvar_bwd(dsqrtvar, sqrtvar, check_num_threads(num_threads, dsqrtvar.size))


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
    dsq = _var_bwd(dvar, view3d(shape), check_num_threads(num_threads, dvar.size))
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
        return _sq_bwd(dsq3, m3, nt, add_to=res).reshape(shape)
    return _sq_bwd(dsq3, m3, nt, out=res).reshape(shape)


def xmu_backward(dxmu: ArrayLike, *, num_threads: int | None = None) -> tuple[AnyArray, AnyArray]:
    """Gradients of ``xmu = x - mu``: returns ``(dx1, dmu)``.

    ``dx1`` is ``dxmu`` itself (the same array); ``dmu = -sum(dxmu)`` over the
    batch, because mu was broadcast and subtracted.
    """
    g3, shape, dt = full("dxmu", dxmu)
    return g3.reshape(shape), _xmu_bwd(g3, check_num_threads(num_threads, g3.size))[1]


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
    dx2 = _mu_bwd(dmu, view3d(shape), check_num_threads(num_threads, dmu.size))
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
    return _branch_sum(a3, b3 if bvec is None else bvec, nt, o3).reshape(shape)


# -------------------------------------------------------------------- graph

@dataclass(frozen=True)
class Node:
    """One node of the batch-norm graph.

    Attributes
    ----------
    name : str
        The node's name, the name of its value everywhere in the package.
    inputs : tuple of str
        Names of the forward inputs, in the order ``forward`` takes them.
    kind : str
        ``"full"`` for values shaped like x, ``"channel"`` for (C,) values.
    op : str
        The operation, as written in the docs.
    forward : callable
        Computes the node from its inputs.
    saved : tuple of str
        What ``backward`` needs besides the upstream gradient, by cache name.
    grads : tuple of str
        Names of the gradients ``backward`` returns, in order; each one is
        ``d<input>`` plus a branch number where an input gets two.
    backward : callable
        ``backward(d<name>, *saved) -> grads``.
    adds : bool
        Whether ``backward`` accepts ``add_to=``: a gradient of its input
        that arrived by another branch, to add its own into in the same pass.
    writes_full : bool
        Whether ``backward`` makes a new gradient the size of x (it then
        accepts ``out=``, a buffer to write it into).
    forward_op, backward_op : callable
        The same computations unchecked, on the (N, C, S) views the kernels
        read (``op(*values, nt, ...)``): what ``batchnorm_backward`` runs. A
        gradient that is one value per channel broadcast over the batch is
        passed and returned as its (C,) vector.
    """

    name: str
    inputs: Tuple[str, ...]
    kind: str
    op: str
    forward: Callable[..., Any]
    saved: Tuple[str, ...]
    grads: Tuple[str, ...]
    backward: Callable[..., Any]
    writes_full: bool = False
    adds: bool = False
    forward_op: Callable[..., Any] | None = None
    backward_op: Callable[..., Any] | None = None

    def targets(self) -> tuple[str, ...]:
        """The input each returned gradient belongs to (``dxmu1`` -> ``xmu``)."""
        return _grad_targets(self.grads)


@functools.lru_cache(maxsize=None)
def _grad_targets(grads: tuple[str, ...]) -> tuple[str, ...]:
    # derived once per node: the backward walk asks at every node it visits
    return tuple(re.sub(r"\d+$", "", g[1:]) for g in grads)


NODES = (
    Node("mu", ("x",), "channel", "mean(x)", mu_forward,
         ("shape",), ("dx2",), mu_backward,
         forward_op=_mu_fwd, backward_op=_mu_bwd),
    Node("xmu", ("x", "mu"), "full", "x - mu", xmu_forward,
         (), ("dx1", "dmu"), xmu_backward,
         forward_op=_xmu_fwd, backward_op=_xmu_bwd),
    Node("sq", ("xmu",), "full", "xmu ** 2", sq_forward,
         ("xmu",), ("dxmu2",), sq_backward, True, True,
         forward_op=_sq_fwd, backward_op=_sq_bwd),
    Node("var", ("sq",), "channel", "mean(sq)", var_forward,
         ("shape",), ("dsq",), var_backward,
         forward_op=_var_fwd, backward_op=_var_bwd),
    Node("sqrtvar", ("var", "eps"), "channel", "sqrt(var + eps)", sqrtvar_forward,
         ("sqrtvar",), ("dvar",), sqrtvar_backward,
         forward_op=_sqrtvar_fwd, backward_op=_sqrtvar_bwd),
    Node("ivar", ("sqrtvar",), "channel", "1 / sqrtvar", ivar_forward,
         ("sqrtvar",), ("dsqrtvar",), ivar_backward,
         forward_op=_ivar_fwd, backward_op=_ivar_bwd),
    Node("xhat", ("xmu", "ivar"), "full", "xmu * ivar", xhat_forward,
         ("xmu", "ivar"), ("divar", "dxmu1"), xhat_backward, True,
         forward_op=_xhat_fwd, backward_op=_xhat_bwd),
    Node("gammax", ("xhat", "gamma"), "full", "gamma * xhat", gammax_forward,
         ("xhat", "gamma"), ("dgamma", "dxhat"), gammax_backward, True,
         forward_op=_gammax_fwd, backward_op=_gammax_bwd),
    Node("out", ("gammax", "beta"), "full", "gammax + beta", out_forward,
         (), ("dbeta", "dgammax"), out_backward,
         forward_op=_out_fwd, backward_op=_out_bwd),
)
"""The graph's nodes in forward (topological) order."""


def node(name: str) -> Node:
    """Return the :class:`Node` called ``name``."""
    for n in NODES:
        if n.name == name:
            return n
    raise KeyError(f"name: no node {name!r}; the nodes are {[n.name for n in NODES]}")


def forward(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    eps: float = DEFAULT_EPS,
    *,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Walk :data:`NODES` in order; return every value by name.

    The result maps ``x``, ``gamma``, ``beta``, ``eps`` and each node name to
    its value (validated inputs, node outputs), in the order they were made.
    This is the textbook forward pass, one compiled kernel per node;
    :func:`cybatchnorm.batchnorm_forward` computes the same values in two
    fused passes.
    """
    x3, shape, dt = full("x", x)
    check_batch_count(shape)
    values = {
        "x": x3.reshape(shape),
        "gamma": feature("gamma", gamma, shape[1], dt),
        "beta": feature("beta", beta, shape[1], dt),
        "eps": check_eps(eps),
    }
    nt = check_num_threads(num_threads, x3.size)
    for n in NODES:
        values[n.name] = n.forward(*(values[i] for i in n.inputs), num_threads=nt)
    return values


def _walk_owned(g: Any, dout: Any) -> bool:
    # a gradient buffer the walk made (not dout, nor a view of it): the walk
    # may overwrite it once its consumer has read it
    return (isinstance(g, np.ndarray) and g.flags.writeable and g.flags.c_contiguous
            and not np.may_share_memory(g, dout))


def backward(dout: ArrayLike, cache: Any, *, num_threads: int | None = None,
             constants: Iterable[str] = (), keep: bool = False,
             dx: AnyArray | None = None) -> dict[str, AnyArray]:
    """Walk :data:`NODES` in reverse, from ``dout`` to ``dx``, ``dgamma``, ``dbeta``.

    Parameters
    ----------
    dout : ndarray
        Gradient of the loss with respect to ``out``.
    cache : object
        Gives each name in a node's ``saved`` as an attribute (a
        :class:`cybatchnorm.Cache`, or any object holding the values of a
        :func:`forward` walk).
    num_threads : int or None
        Threads for every kernel; None uses all cores.
    constants : iterable of str
        Values treated as constants: gradients sent to them are dropped and
        the nodes that made them are not visited. Eval mode uses
        ``("mu", "ivar")``: the running statistics do not depend on x.
    keep : bool
        Keep every intermediate gradient; otherwise only the final ones.
    dx : ndarray, optional
        A writable C-contiguous array of dout's shape and computation dtype
        to write ``dx`` into, sharing no memory with dout or the cache.

    Returns
    -------
    dict
        ``"dx"``, ``"dgamma"``, ``"dbeta"`` and, with ``keep``, every gradient
        by name in the order it was produced, including the branch sums
        ``dxmu = dxmu1 + dxmu2`` and ``dx = dx1 + dx2``.
    """
    dout, shape, nt, constants = walk_args(dout, cache, num_threads, constants, dx, NODES)
    pending = {"out": dout}      # gradients waiting for their node, by node name
    produced: dict[str, AnyArray] = {}
    spare: list[AnyArray] = []                   # dead gradient buffers this walk made, for reuse
    for n in reversed(NODES):
        if n.name not in pending:   # nothing depends on this node via x
            continue
        g = pending.pop(n.name)
        saved = [getattr(cache, s) for s in n.saved]
        kw: dict[str, Any] = {}
        other = pending.get(n.targets()[0]) if n.adds and not keep else None
        if other is not None and _walk_owned(other, dout):
            # the other branch's gradient is a buffer this walk made: the
            # node adds into it, and the branch sum costs no pass of its own
            kw["add_to"] = pending.pop(n.targets()[0])
        elif n.writes_full:
            # the node's new gradient is elementwise in g: it may overwrite g
            # when g is a buffer this walk made and nobody else will read
            if not keep and _walk_owned(g, dout):
                kw["out"] = g
            elif spare:
                kw["out"] = spare.pop()
        res = n.backward(g, *saved, num_threads=nt, **kw)
        if len(n.grads) == 1:
            res = (res,)
        # g is dead once its node has run, unless it is dout, was passed
        # through (dgammax, dx1) or is being kept
        if (not keep and g.ndim > 1 and _walk_owned(g, dout)
                and not any(np.may_share_memory(g, r) for r in res)):
            spare.append(g)
        for gname, target, value in zip(n.grads, n.targets(), res):
            if keep:
                produced[gname] = value
            if target in constants or target == "eps":
                continue
            if target in pending:
                # two branches meet: their gradients add. In place only into a
                # buffer this walk made and nobody else has seen.
                first = pending[target]
                inplace = not keep and not np.may_share_memory(first, dout)
                dest = first if inplace else None
                if target == "x" and dx is not None:
                    dest = dx
                value = branch_sum(first, value, num_threads=nt, out=dest)
                if keep:
                    produced["d" + target] = value
            pending[target] = value
    result = {"d" + k: pending[k] for k in ("x", "gamma", "beta")}
    # the per-channel gradients were float64 along the walk; the results are in x's dtype
    for k in ("dgamma", "dbeta"):
        result[k] = result[k].astype(dout.dtype)
    if dx is not None and result["dx"] is not dx:   # x had one path only (eval mode)
        np.copyto(dx, result["dx"])
        result["dx"] = dx
    if keep:
        produced.update(result)
        return produced
    return result


# --------------------------------------------------- the staged walk, planned

@functools.lru_cache(maxsize=None)
def _plan(
    nodes: tuple[Node, ...],
    constants: frozenset[str],
) -> tuple[tuple[Any, ...], tuple[Any, Any, Any], int]:
    """The staged walk over ``nodes`` (:data:`NODES`) with ``constants`` (a
    frozenset of node names), worked out once for the fixed graph: the nodes :func:`backward` visits, in its
    order, with its branch sums and its reuse of dead buffers.

    Each gradient is named by where it lives: ``"dout"`` (the caller's,
    read-only), an int (a walk buffer the size of x) or its own name (a (C,)
    vector: a per-channel gradient, or one value per channel broadcast over
    the batch). Returns ``(steps, locations of dx, dgamma and dbeta, number
    of buffers)``; a step is ``(node, gradient, keywords, results)`` or
    ``(None, a, b, destination)`` for a branch sum.
    """
    steps: list[Any] = []
    pending: dict[str, Any] = {"out": "dout"}
    spare: list[int] = []
    nbuf = 0

    def buffer() -> int:
        nonlocal nbuf
        if spare:
            return spare.pop()
        nbuf += 1
        return nbuf - 1

    full_values = {"x"} | {n.name for n in nodes if n.kind == "full"}
    for n in reversed(nodes):
        if n.name not in pending:       # nothing depends on this node via x
            continue
        g = pending.pop(n.name)
        kw: dict[str, Any] = {}
        if n.adds and isinstance(pending.get(n.targets()[0]), int):
            # the other branch's gradient is a walk buffer: add into it
            kw["add_to"] = pending.pop(n.targets()[0])
        elif n.writes_full:
            kw["out"] = g if isinstance(g, int) else buffer()
        results: list[Any] = []
        for gname, target in zip(n.grads, n.targets()):
            if target not in full_values:
                results.append(gname)                          # a (C,) gradient
            elif n.writes_full:
                results.append(kw.get("add_to", kw.get("out")))
            else:
                # a reduction node broadcasts its (C,) gradient; an addition
                # passes its gradient through unchanged
                results.append(gname if n.kind == "channel" else g)
        steps.append((n, g, kw, tuple(results)))
        if isinstance(g, int) and g not in results:
            spare.append(g)
        for target, loc in zip(n.targets(), results):
            if target in constants or target == "eps":
                continue
            if target in pending:
                # two branches meet: their gradients add, into a walk buffer
                a, b = pending[target], loc
                if not (isinstance(a, int) or a == "dout"):
                    a, b = b, a                 # the full-size one first
                dest = a if isinstance(a, int) else buffer()
                steps.append((None, a, b, dest))
                if isinstance(b, int) and b != dest:
                    spare.append(b)
                loc = dest
            pending[target] = loc
    return tuple(steps), (pending["x"], pending["gamma"], pending["beta"]), nbuf


def _staged_backward(
    g3: AnyArray,
    cache: Any,
    nt: int,
    dx3: AnyArray | None = None,
) -> tuple[AnyArray, AnyArray, AnyArray]:
    """The staged backward of validated arguments, by :func:`_plan`: every
    node's unchecked operation (its compiled kernel) in the order and with
    the buffers of the plan; bitwise :func:`backward`'s results.

    ``g3`` is dout's (N, C, S) view of the cache's shape, ``dx3`` None or the
    view to write dx into. Returns ``(dx3, dgamma, dbeta)``. The walk's one
    buffer the size of x becomes dx.
    """
    steps, (dx_loc, dgamma_loc, dbeta_loc), nbuf = _plan(
        NODES, frozenset(("mu", "ivar")) if cache.mode == "eval" else frozenset())
    shape3 = g3.shape
    bufs = [dx3 if (i == dx_loc and dx3 is not None) else _engine.empty(shape3, g3.dtype)
            for i in range(nbuf)]
    vals = {"dout": g3}

    def at(loc: int | str) -> AnyArray:
        return bufs[loc] if isinstance(loc, int) else vals[loc]

    def saved(name: str) -> Any:
        if name == "shape":
            return shape3
        v = getattr(cache, name)
        return v.reshape(shape3) if v.ndim > 1 else v

    for n, a, b, c in steps:
        if n is None:
            _branch_sum(at(a), at(b), nt, bufs[c])
            continue
        kw = {k: bufs[v] for k, v in b.items()}
        res = n.backward_op(at(a), *(saved(s) for s in n.saved), nt, **kw)
        for loc, value in zip(c, res if len(n.grads) > 1 else (res,)):
            if not isinstance(loc, int) and loc != "dout":
                vals[loc] = value
    dx = at(dx_loc)
    if dx3 is not None and dx is not dx3:
        np.copyto(dx3, dx)
        dx = dx3
    elif not isinstance(dx_loc, int):
        dx = dx.copy()              # never hand back the caller's own dout
    return dx, at(dgamma_loc).astype(g3.dtype), at(dbeta_loc).astype(g3.dtype)
