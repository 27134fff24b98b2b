"""The staged backward, planned: the walk :func:`cybatchnorm.graph.backward`
takes, worked out once (:func:`plan`) and run over validated arrays
(:func:`walk`), every node's compiled kernel through its unchecked operation.

What :func:`cybatchnorm.batchnorm_backward` runs after validating its
arguments; bitwise the textbook walk's results, with one buffer the size of
x where the textbook walk makes one per full-size gradient.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import _engine, graph
from ._node_ops import branch_add
from ._typing import AnyArray
from .graph import Node, in_view

__all__ = ["plan", "walk"]


@functools.cache
def plan(
    nodes: tuple[Node, ...],
    constants: frozenset[str],
) -> tuple[tuple[Any, ...], tuple[Any, Any, Any], int]:
    """The staged walk over ``nodes`` (:data:`cybatchnorm.graph.NODES`) with
    ``constants`` (a frozenset of node names), worked out once for the fixed
    graph: the nodes :func:`cybatchnorm.graph.backward` visits, in its order,
    with its branch sums and its reuse of dead buffers.

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


def walk(
    g3: AnyArray,
    cache: Any,
    nt: int,
    dx3: AnyArray | None = None,
    views: dict[str, tuple[int, int, int]] | None = None,
) -> tuple[AnyArray, AnyArray, AnyArray]:
    """The staged backward of validated arguments, by :func:`plan`: every
    node's unchecked operation (its compiled kernel) in the order and with
    the buffers of the plan; bitwise :func:`cybatchnorm.graph.backward`'s results.

    ``g3`` is dout's (N, C, S) view of the cache's shape, ``dx3`` None or the
    view to write dx into. Returns ``(dx3, dgamma, dbeta)``. The walk's one
    buffer the size of x becomes dx.

    ``views`` (layer and group norm, :meth:`cybatchnorm.graph.Reduction.views`):
    the (N, C, S) view each node's kernel reads, by the node's ``view``
    (``"stats"``: rows reduced per "channel"; ``"affine"``: gamma and beta
    per channel); ``g3`` and ``dx3`` then come in the ``"stats"`` view. None:
    batch norm, one view for every node.
    """
    steps, (dx_loc, dgamma_loc, dbeta_loc), nbuf = plan(
        graph.NODES, frozenset(("mu", "ivar")) if cache.mode == "eval" else frozenset())
    shape3 = g3.shape
    bufs = [dx3 if (i == dx_loc and dx3 is not None) else _engine.empty(shape3, g3.dtype)
            for i in range(nbuf)]
    vals = {"dout": g3}

    def at(loc: int | str) -> AnyArray:
        return bufs[loc] if isinstance(loc, int) else vals[loc]

    def saved(name: str, view: tuple[int, int, int]) -> Any:
        return view if name == "shape" else in_view(getattr(cache, name), view)

    for n, a, b, c in steps:
        view = shape3 if views is None else views["stats" if n is None else n.view]
        if n is None:
            branch_add(in_view(at(a), view), in_view(at(b), view), nt, in_view(bufs[c], view))
            continue
        kw = {k: in_view(bufs[v], view) for k, v in b.items()}
        res = n.backward_op(in_view(at(a), view), *(saved(s, view) for s in n.saved), nt, **kw)
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
