"""Check a learner's code against the compiled kernels: the textbook's
"implement it yourself" exercises.

:func:`check_node` runs a learner's numpy backward of one node of the graph
and the compiled ``nodes.<name>_backward`` on the same seeded inputs of
several shapes, and prints a table in the style of Karpathy's ``cmp``: for
each returned gradient, whether it is exactly the kernel's, whether it is
close, and the largest difference.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import inspect
import sys
from types import SimpleNamespace
from typing import Any, TextIO

import numpy as np

from . import graph

__all__ = ["check_node"]

#: The batches check_node tries: (N, D) and (N, C, H, W), small enough to read.
SHAPES = ((4, 3), (16, 5), (6, 3, 2, 2))
RTOL, ATOL = 1e-7, 1e-10


#: the normalizations check_node walks: batch norm, and layer norm over every axis but the first
REDUCTIONS = ("batch", "layer")


def _inputs(node: graph.Node, shape: Sequence[int], seed: int, reduction: str) -> list[Any]:
    # the arguments the node's backward takes on a seeded batch: its upstream
    # gradient d<name>, then what it saved, computed by the compiled kernels;
    # for layer norm each in the node's (N, C, S) view, as the walk passes them
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=tuple(shape))
    pshape = (shape[1],) if reduction == "batch" else tuple(shape[1:])
    gamma, beta = rng.uniform(0.5, 2.0, pshape), rng.normal(size=pshape)
    dout = rng.normal(size=x.shape)
    if reduction == "batch":
        values = graph.forward(x, gamma, beta)
        cache = SimpleNamespace(shape=x.shape, **values)
        grads = graph.backward(dout, cache, keep=True)
        upstream = dout if node.name == "out" else grads["d" + node.name]
        return [upstream] + [getattr(cache, s) for s in node.saved]
    red = graph.Reduction("layer", k=len(shape) - 1)
    view = red.views(x.shape)[node.view]
    values = graph.forward(x, gamma, beta, reduction=red)
    cache = SimpleNamespace(shape=x.shape, reduction=red, param_shape=pshape, **values)
    grads = graph.backward(dout, cache, keep=True)
    upstream = dout if node.name == "out" else grads["d" + node.name]
    return [graph.in_view(upstream, view)] + [
        view if s == "shape" else graph.in_view(values[s], view) for s in node.saved]


def _signature(node: graph.Node) -> str:
    return f"backward(d{node.name}" + "".join(f", {s}" for s in node.saved) + ")"


def check_node(name: str, backward: Callable[..., Any], *, seed: int = 0,
               shapes: Sequence[Sequence[int]] = SHAPES, file: TextIO | None = None,
               reduction: str = "batch") -> bool:
    """Check your backward of one node against the compiled kernel.

    Your function is called exactly as the compiled ``nodes.<name>_backward``
    is: with the node's upstream gradient ``d<name>`` and what the node saved
    in the forward pass (for example ``sq_backward(dsq, xmu)``), and must
    return the same gradients, in the same order, of the same shapes (one
    array, or a tuple when the node has two inputs). Both run on the same
    seeded batches, one per shape in ``shapes``, with copies of the inputs
    (so your function cannot change what the kernel sees). A table is
    printed: for every gradient of every batch, *exact* (bit for bit the
    kernel's), *close* (within rtol 1e-7, atol 1e-10) and the largest
    absolute difference.

    Parameters
    ----------
    name : str
        A node of :data:`cybatchnorm.graph.NODES`: ``"mu"``, ``"xmu"``,
        ``"sq"``, ``"var"``, ``"sqrtvar"``, ``"ivar"``, ``"xhat"``,
        ``"gammax"`` or ``"out"``.
    backward : callable
        Your implementation, numpy arrays in, numpy arrays out.
    seed : int, default 0
        Seed of the generated batches.
    shapes : iterable of tuple, default ((4, 3), (16, 5), (6, 3, 2, 2))
        x's shapes: (N, D) or (N, C, H, W, ...).
    file : file-like, optional
        Where the table goes (default: standard output).
    reduction : str, default "batch"
        ``"batch"`` or ``"layer"``: the graph walked is batch norm's, or layer norm's
        over every axis of x but the first (gamma of x's trailing shape). The
        nodes are the same; with ``"layer"`` every array comes in the view
        of x the node runs in (see :class:`cybatchnorm.graph.Reduction`): a
        3-D (N, C, S) array whose "channels" are the samples, as (1, N, M),
        for ``mu`` ... ``xhat``, and the features, as (N, M, 1), for
        ``gammax`` and ``out``; a ``shape`` argument is that view. A
        backward written for (N, C, S) arrays, reducing over axes 0 and 2,
        passes for both.

    Returns
    -------
    bool
        True when every gradient of every batch is close to the kernel's.

    Raises
    ------
    ValueError
        An unknown ``name`` or ``reduction``; a result of the wrong number of
        arrays or of the wrong shape (the message says what was expected).
    TypeError
        ``backward`` is not callable, or does not take the node's arguments.

    Examples
    --------
    >>> import cybatchnorm as bn
    >>> def sq_backward(dsq, xmu):          # d(xmu**2)/dxmu = 2 * xmu
    ...     return 2 * xmu * dsq
    >>> bn.check_node("sq", sq_backward, shapes=[(4, 3)])
    sq: backward(dsq, xmu) -> dxmu2
      x shape       gradient   exact  close  max abs diff
      (4, 3)        dxmu2      True   True   0.0e+00
    all 1 gradients close to the compiled kernel's
    True
    """
    names = [n.name for n in graph.NODES]
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"name: expected one of {names}, got {name!r}")
    node = graph.node(name)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
    if not callable(backward):
        raise TypeError(f"backward: expected a function {_signature(node)}, "
                        f"got {type(backward).__name__}")
    nargs = 1 + len(node.saved)
    try:
        inspect.signature(backward).bind(*range(nargs))
    except TypeError as err:
        raise TypeError(f"backward: check_node({name!r}, ...) calls {_signature(node)}, as "
                        f"nodes.{name}_backward is called; your function cannot take "
                        f"{nargs} argument{'s' if nargs > 1 else ''}: {err}") from None
    except ValueError:
        pass        # no signature to read (a builtin): the call itself will tell
    out = file if file is not None else sys.stdout
    print(f"{name}{'' if reduction == 'batch' else ' (layer norm)'}: {_signature(node)} -> "
          f"{', '.join(node.grads)}", file=out)
    print(f"  {'x shape':13s} {'gradient':10s} {'exact':6s} {'close':6s} max abs diff", file=out)
    ok, count = True, 0
    for k, shape in enumerate(shapes):
        args = _inputs(node, shape, seed + k, reduction)
        want = node.backward(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = backward(*[np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                         for a in args])
        got = got if isinstance(got, tuple) else (got,)
        if len(got) != len(want):
            raise ValueError(f"backward: returned {len(got)} array{'s' if len(got) != 1 else ''}"
                             f"; {name}'s backward returns {len(want)}: "
                             f"({', '.join(node.grads)})")
        for gname, g, w in zip(node.grads, got, want):
            g = np.asarray(g, dtype=np.float64)
            if g.shape != np.shape(w):
                raise ValueError(f"backward: {gname} has shape {g.shape}, expected "
                                 f"{np.shape(w)} (x of shape {tuple(shape)})")
            exact = bool(np.array_equal(g, w))
            close = bool(np.allclose(g, w, rtol=RTOL, atol=ATOL))
            diff = float(np.max(np.abs(g - w))) if g.size else 0.0
            ok &= close
            count += 1
            print(f"  {str(tuple(shape)):13s} {gname:10s} {str(exact):6s} {str(close):6s} "
                  f"{diff:.1e}", file=out)
    print(f"all {count} gradients close to the compiled kernel's" if ok else
          "NOT all gradients are close to the compiled kernel's: see the rows with close False",
          file=out)
    return ok
