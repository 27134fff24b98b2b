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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
import functools
import math
import re
from typing import Any

import numpy as np

from . import _node_ops as ops
from ._typing import AnyArray, ArrayLike
from ._validation import (
    DEFAULT_EPS,
    check_batch_count,
    check_eps,
    check_num_threads,
    feature,
    full,
    param,
    walk_args,
)
from .nodes import (
    branch_sum,
    gammax_backward,
    gammax_forward,
    ivar_backward,
    ivar_forward,
    mu_backward,
    mu_forward,
    out_backward,
    out_forward,
    sq_backward,
    sq_forward,
    sqrtvar_backward,
    sqrtvar_forward,
    var_backward,
    var_forward,
    xhat_backward,
    xhat_forward,
    xmu_backward,
    xmu_forward,
)

__all__ = ["Node", "NODES", "Reduction", "BATCH", "in_view", "node", "forward", "backward"]


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
    view : str
        Which view of x the node's kernels read (:class:`Reduction`):
        ``"stats"`` for the nodes of the statistics and the normalization
        (their "channels" are what ``mu`` and ``var`` reduce over),
        ``"affine"`` for ``gammax`` and ``out`` (their channels are gamma's
        and beta's). For batch norm the two are one.
    """

    name: str
    inputs: tuple[str, ...]
    kind: str
    op: str
    forward: Callable[..., Any]
    saved: tuple[str, ...]
    grads: tuple[str, ...]
    backward: Callable[..., Any]
    writes_full: bool = False
    adds: bool = False
    forward_op: Callable[..., Any] | None = None
    backward_op: Callable[..., Any] | None = None
    view: str = "stats"

    def targets(self) -> tuple[str, ...]:
        """The input each returned gradient belongs to (``dxmu1`` -> ``xmu``)."""
        return _grad_targets(self.grads)


@functools.cache
def _grad_targets(grads: tuple[str, ...]) -> tuple[str, ...]:
    # derived once per node: the backward walk asks at every node it visits
    return tuple(re.sub(r"\d+$", "", g[1:]) for g in grads)


NODES = (
    Node("mu", ("x",), "channel", "mean(x)", mu_forward,
         ("shape",), ("dx2",), mu_backward,
         forward_op=ops.mu_fwd, backward_op=ops.mu_bwd),
    Node("xmu", ("x", "mu"), "full", "x - mu", xmu_forward,
         (), ("dx1", "dmu"), xmu_backward,
         forward_op=ops.xmu_fwd, backward_op=ops.xmu_bwd),
    Node("sq", ("xmu",), "full", "xmu ** 2", sq_forward,
         ("xmu",), ("dxmu2",), sq_backward, True, True,
         forward_op=ops.sq_fwd, backward_op=ops.sq_bwd),
    Node("var", ("sq",), "channel", "mean(sq)", var_forward,
         ("shape",), ("dsq",), var_backward,
         forward_op=ops.var_fwd, backward_op=ops.var_bwd),
    Node("sqrtvar", ("var", "eps"), "channel", "sqrt(var + eps)", sqrtvar_forward,
         ("sqrtvar",), ("dvar",), sqrtvar_backward,
         forward_op=ops.sqrtvar_fwd, backward_op=ops.sqrtvar_bwd),
    Node("ivar", ("sqrtvar",), "channel", "1 / sqrtvar", ivar_forward,
         ("sqrtvar",), ("dsqrtvar",), ivar_backward,
         forward_op=ops.ivar_fwd, backward_op=ops.ivar_bwd),
    Node("xhat", ("xmu", "ivar"), "full", "xmu * ivar", xhat_forward,
         ("xmu", "ivar"), ("divar", "dxmu1"), xhat_backward, True,
         forward_op=ops.xhat_fwd, backward_op=ops.xhat_bwd),
    Node("gammax", ("xhat", "gamma"), "full", "gamma * xhat", gammax_forward,
         ("xhat", "gamma"), ("dgamma", "dxhat"), gammax_backward, True,
         forward_op=ops.gammax_fwd, backward_op=ops.gammax_bwd, view="affine"),
    Node("out", ("gammax", "beta"), "full", "gammax + beta", out_forward,
         (), ("dbeta", "dgammax"), out_backward,
         forward_op=ops.out_fwd, backward_op=ops.out_bwd, view="affine"),
)
"""The graph's nodes in forward (topological) order."""


@dataclass(frozen=True)
class Reduction:
    """What ``mu`` and ``var`` reduce over, and what gamma and beta scale: the
    one thing that tells batch norm, layer norm and group norm apart.

    The kernels read x as an (N, C, S) array and reduce each of its C
    "channels" over N and S. :meth:`views` gives each normalization's two
    views of the same contiguous x: ``"stats"``, whose channels are what the
    statistics are taken per (batch norm: the channels; layer norm: the
    samples, as (1, R, M); group norm: the groups of each sample, as
    (1, N * G, C / G * S)), and ``"affine"``, whose channels are gamma's and
    beta's (batch and group norm: the channels, (N, C, S); layer norm: the
    normalized features, (R, M, 1)). Each :class:`Node` runs in one of them.

    Attributes
    ----------
    kind : str
        ``"batch"``, ``"layer"`` or ``"group"``.
    k : int
        Layer norm: how many trailing axes are normalized.
    groups : int
        Group norm: the number of groups G (instance norm: G = C).
    """

    kind: str
    k: int = 0
    groups: int = 1

    def views(self, shape: tuple[int, ...]) -> dict[str, tuple[int, int, int]]:
        """The ``"stats"`` and ``"affine"`` (N, C, S) views of an x of ``shape``."""
        if self.kind == "layer":
            M = math.prod(shape[len(shape) - self.k:])
            R = math.prod(shape[:len(shape) - self.k])
            return {"stats": (1, R, M), "affine": (R, M, 1)}
        N, C, S = shape[0], shape[1], math.prod(shape[2:])
        if self.kind == "group":
            return {"stats": (1, N * self.groups, C // self.groups * S), "affine": (N, C, S)}
        return {"stats": (N, C, S), "affine": (N, C, S)}


def in_view(value: Any, view: tuple[int, int, int]) -> Any:
    """A full-size value seen as ``view`` (one of :meth:`Reduction.views`'s):
    a free reshape, every full-size value of the walks being contiguous, or
    a zero-stride view already in that shape; vectors and scalars as they are."""
    if not isinstance(value, np.ndarray) or value.ndim <= 1 or value.shape == view:
        return value
    return value.reshape(view)


BATCH = Reduction("batch")
"""Batch norm's reduction: per channel, over the batch and the spatial axes."""


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
    reduction: Reduction | None = None,
) -> dict[str, Any]:
    """Walk :data:`NODES` in order; return every value by name.

    The result maps ``x``, ``gamma``, ``beta``, ``eps`` and each node name to
    its value (validated inputs, node outputs), in the order they were made.
    This is the textbook forward pass, one compiled kernel per node;
    :func:`cybatchnorm.batchnorm_forward` computes the same values in two
    fused passes.

    ``reduction`` (default ``BATCH``, batch norm): layer norm's or group norm's
    :class:`Reduction` walks the same nodes, each in its view of x; gamma and
    beta then have the shape that normalization gives them (layer norm: x's
    trailing ``k`` axes; group norm: (C,)), full-size values come in x's
    shape and the statistics one per row of the stats view.
    """
    x3, shape, dt = full("x", x)
    if reduction is None or reduction.kind == "batch":
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
    views = reduction.views(shape)
    P = views["affine"][1]
    pshape = tuple(shape[len(shape) - reduction.k:]) if reduction.kind == "layer" else (P,)
    values = {"x": x3.reshape(shape), "gamma": param("gamma", gamma, pshape, dt),
              "beta": param("beta", beta, pshape, dt), "eps": check_eps(eps)}
    nt = check_num_threads(num_threads, x3.size)
    for n in NODES:
        view = views[n.view]
        res = n.forward(*(in_view(values[i], view) for i in n.inputs), num_threads=nt)
        values[n.name] = res.reshape(shape) if res.ndim > 1 else res
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
    if getattr(cache, "axis", 1) == -1:
        raise ValueError("cache: a channels-last group norm's cache (axis=-1); the textbook walk "
                         "reads channels-first data: give groupnorm_forward np.moveaxis(x, -1, "
                         "1), or use groupnorm_backward")
    dout, shape, nt, constants = walk_args(dout, cache, num_threads, constants, dx, NODES)
    # layer and group norm (a NormCache): each node reads its view of x
    reduction = getattr(cache, "reduction", None)
    views = None if reduction is None or reduction.kind == "batch" else reduction.views(shape)

    def fit(v: Any, n: Node | None) -> Any:
        # a full-size value in node n's view (the stats view for a branch sum)
        return v if views is None else in_view(v, views["stats" if n is None else n.view])

    pending = {"out": dout}      # gradients waiting for their node, by node name
    produced: dict[str, AnyArray] = {}
    spare: list[AnyArray] = []                   # dead gradient buffers this walk made, for reuse
    for n in reversed(NODES):
        if n.name not in pending:   # nothing depends on this node via x
            continue
        g = fit(pending.pop(n.name), n)
        saved = [fit(getattr(cache, s), n) if s != "shape" or views is None
                 else views[n.view] for s in n.saved]
        kw: dict[str, Any] = {}
        other = pending.get(n.targets()[0]) if n.adds and not keep else None
        if other is not None and _walk_owned(other, dout):
            # the other branch's gradient is a buffer this walk made: the
            # node adds into it, and the branch sum costs no pass of its own
            kw["add_to"] = fit(pending.pop(n.targets()[0]), n)
        elif n.writes_full:
            # the node's new gradient is elementwise in g: it may overwrite g
            # when g is a buffer this walk made and nobody else will read
            if not keep and _walk_owned(g, dout):
                kw["out"] = g
            elif spare:
                kw["out"] = fit(spare.pop(), n)
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
                value = branch_sum(fit(first, None), fit(value, None), num_threads=nt,
                                   out=fit(dest, None))
                if keep:
                    produced["d" + target] = value
            pending[target] = value
    result = {"d" + k: pending[k] for k in ("x", "gamma", "beta")}
    # the per-channel gradients were float64 along the walk; the results are in x's dtype
    for k in ("dgamma", "dbeta"):
        result[k] = result[k].astype(dout.dtype)
    if views is not None:
        # in x's shape and gamma's, as the walk received them
        result["dx"] = result["dx"].reshape(shape)
        for k in ("dgamma", "dbeta"):
            result[k] = result[k].reshape(cache.param_shape)
        produced = {k: (v.reshape(shape) if isinstance(v, np.ndarray) and v.ndim > 1 else v)
                    for k, v in produced.items()}
    if dx is not None and result["dx"] is not dx:   # x had one path only (eval mode)
        np.copyto(dx, result["dx"])
        result["dx"] = dx
    if keep:
        produced.update(result)
        return produced
    return result
