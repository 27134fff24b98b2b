"""The split API: batch norm cut at its reductions, for batches spread over processes.

When a batch is split into shards (one per process), only the graph's
reductions need the whole batch: ``mu`` and ``var`` in the forward,
``sum(dout)`` and ``sum(dout * xmu)`` in the backward. Everything else is
elementwise and stays local. The five functions below are the two sides of
that cut; the communication between them is the caller's (see
:class:`cybatchnorm.distributed.SyncBatchNorm`, which uses MPI):

1. :func:`batch_stats` on every shard: ``(count, mean, m2)`` per channel;
2. gather those from every shard, :func:`merge_stats`: global mean and variance;
3. :func:`normalize` every shard with the global statistics;
4. backward: :func:`backward_reduce` on every shard, sum the two results over shards;
5. :func:`backward_elementwise` on every shard: its part of ``dx``.

These mirror PyTorch's SyncBatchNorm ops (``batch_norm_stats``,
``batch_norm_gather_stats_with_counts``, ``batch_norm_elemt``,
``batch_norm_backward_reduce``, ``batch_norm_backward_elemt``). All run
compiled, with OpenMP over features, for float32 and float64 data (statistics
and sums are always float64), and give bitwise identical results for any
thread count.
"""

from __future__ import annotations

import numpy as np

from . import _engine
from ._typing import AnyArray, ArrayLike, F64Array
from ._validation import (
    check_num_threads,
    f64_vector,
    feature,
    full,
    per_shard,
    positive_count,
    shard_counts,
)

__all__ = ["batch_stats", "merge_stats", "normalize", "backward_reduce", "backward_elementwise"]



def inverse_std(var: ArrayLike, eps: float) -> F64Array:
    """``1 / sqrt(var + eps)`` in float64, the operations of the compiled
    forward's own rule (``_fused.pyx``), so merged statistics normalize with
    the same bits a single process would."""
    return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)

def batch_stats(x: ArrayLike, *, num_threads: int | None = None) -> tuple[int, F64Array, F64Array]:
    """Per-channel count, mean and m2 of one shard: the forward's local reduction.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, C, spatial...)
        The local shard of the batch (N >= 1). float32 and float64 are read as
        they are (sums accumulate in float64), float16 as float32, integers
        and bools as float64.
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores. Results are bitwise identical
        for any value.

    Returns
    -------
    count : int
        Values per channel in this shard, ``N * prod(spatial)``.
    mean : ndarray of float64, shape (C,)
        Per-channel mean.
    m2 : ndarray of float64, shape (C,)
        Per-channel sum of squared deviations from ``mean``,
        ``sum((x - mean)**2)``, computed in one read of ``x`` (shifted sums
        per chunk, merged by Chan's formula; never ``E[x^2] - E[x]^2``).
        ``m2 / count`` is the biased variance.

    Raises
    ------
    TypeError
        ``x`` is not an array of real numbers.
    ValueError
        ``x`` has fewer than 2 dimensions, N == 0 or a spatial size 0;
        ``num_threads`` < 1.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> count, mean, m2 = bn.batch_stats(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> count, mean, m2
    (2, array([ 2., 20.]), array([  2., 200.]))
    """
    x3, _, _ = full("x", x)
    N, C, S = x3.shape
    nt = check_num_threads(num_threads, x3.size)
    mean, m2 = _engine.batch_stats(x3, nt)
    return N * S, mean, m2


def merge_stats(counts: ArrayLike, means: ArrayLike, m2s: ArrayLike, *,
                num_threads: int | None = None) -> tuple[int, F64Array, F64Array]:
    """Global statistics from every shard's :func:`batch_stats`, by Chan's parallel formula.

    Shards are merged one after the other, in index order (rank order when
    the inputs come from an MPI allgather): merging shard ``b`` into the
    running ``a`` with :math:`n = n_a + n_b` and :math:`\\delta = \\bar x_b - \\bar x_a`,

    .. math::

        \\bar x = \\bar x_a + \\delta\\,\\frac{n_b}{n}, \\qquad
        M_2 = M_{2,a} + M_{2,b} + \\delta^2\\,\\frac{n_a n_b}{n} .

    This is exact algebra for any shard sizes (unequal ones included), and
    since the order is fixed, every process that merges the same gathered
    lists gets bitwise identical results.

    Parameters
    ----------
    counts : array_like of int
        Shape (P,) for P shards: values per channel in each shard (whole
        numbers >= 0, not all 0; empty shards are skipped).
    means, m2s : array_like
        Shape (P, C): each shard's per-channel mean and m2, as
        :func:`batch_stats` returns them (read as float64).
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.

    Returns
    -------
    count : int
        Total values per channel, ``sum(counts)``.
    mean : ndarray of float64, shape (C,)
        Global per-channel mean.
    var : ndarray of float64, shape (C,)
        Global *biased* variance ``M2 / count`` (what normalization uses;
        the unbiased one is ``var * count / (count - 1)``).

    Raises
    ------
    TypeError
        An argument is not an array of real numbers.
    ValueError
        Wrong shapes, negative or fractional counts, all counts 0, negative m2.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.arange(10.0).reshape(5, 2) ** 2
    >>> shards = [bn.batch_stats(x[:2]), bn.batch_stats(x[2:])]
    >>> count, mean, var = bn.merge_stats(*zip(*shards))
    >>> count, bool(np.allclose(mean, x.mean(0))), bool(np.allclose(var, x.var(0)))
    (5, True, True)
    """
    total, mean, m2 = merge_m2(counts, means, m2s, num_threads=num_threads)
    return total, mean, m2 / total


def merge_m2(counts: ArrayLike, means: ArrayLike, m2s: ArrayLike, *,
             num_threads: int | None = None) -> tuple[int, F64Array, F64Array]:
    """:func:`merge_stats`, returning the merged sums of squared deviations
    ``m2`` instead of the variance (what the running variance is updated
    from: ``m2 / count * count`` is not ``m2`` to the last bit)."""
    counts, total = shard_counts(counts)
    P = counts.shape[0]
    means = per_shard("means", means, P)
    m2s = per_shard("m2s", m2s, P, like=means)
    C = means.shape[1]
    nt = check_num_threads(num_threads, P * C)
    mean, m2 = _engine.merge(counts, means, m2s, nt)
    return total, mean, m2


def normalize(x: ArrayLike, mean: ArrayLike, ivar: ArrayLike, gamma: ArrayLike, beta: ArrayLike, *,
              num_threads: int | None = None) -> AnyArray:
    """``out = gamma * (x - mean) * ivar + beta`` with given (global) statistics.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, C, spatial...)
        The local shard.
    mean, ivar : array_like, shape (C,)
        Per-channel mean and ``1 / sqrt(var + eps)``, read as float64.
    gamma, beta : array_like, shape (C,)
        Scale and shift, cast to x's computation dtype.
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.

    Returns
    -------
    out : ndarray, shape and computation dtype of x
        Computed in float64 per value and rounded once.

    Raises
    ------
    TypeError
        An argument is not an array of real numbers.
    ValueError
        Wrong shapes, N == 0, ``num_threads`` < 1.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> bn.normalize(np.array([[1.0, 10.0], [3.0, 30.0]]), mean=[2.0, 20.0],
    ...              ivar=[1.0, 0.1], gamma=[1.0, 2.0], beta=[0.0, 1.0])
    array([[-1., -1.],
           [ 1.,  3.]])
    """
    x3, shape, dt = full("x", x)
    C = shape[1]
    mean, ivar = f64_vector("mean", mean, C), f64_vector("ivar", ivar, C)
    gamma, beta = feature("gamma", gamma, C, dt), feature("beta", beta, C, dt)
    nt = check_num_threads(num_threads, x3.size)
    out = _engine.empty(x3.shape, dt)
    _engine.normalize(x3, mean, ivar, gamma, beta, out, nt)
    return out.reshape(shape)


def backward_reduce(dout: ArrayLike, x: ArrayLike, mean: ArrayLike,
                    ivar: ArrayLike | None = None, *,
                    num_threads: int | None = None) -> tuple[F64Array, F64Array]:
    """The backward's local reduction: per-channel ``sum(dout)`` and ``sum(dout * (x - mean))``.

    Summed over all shards, these are all the backward needs from other
    processes: ``dbeta = sum_dout``, ``dgamma = ivar * sum_dout_xmu``, and
    :func:`backward_elementwise` turns them into each shard's ``dx``.

    Parameters
    ----------
    dout : array_like, shape of x
        Gradient of the loss with respect to the shard's output; cast to x's
        computation dtype.
    x : array_like, shape (N, D) or (N, C, spatial...)
        The shard that was normalized.
    mean : array_like, shape (C,)
        The (global) mean the forward used, read as float64.
    ivar : array_like, shape (C,), optional
        The forward's ``1 / sqrt(var + eps)``. The two sums do not depend on
        it; it is accepted (and validated) so the call mirrors PyTorch's
        ``batch_norm_backward_reduce`` and :func:`backward_elementwise`.
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.

    Returns
    -------
    sum_dout, sum_dout_xmu : ndarray of float64, shape (C,)
        Accumulated in float64 over a fixed work grid (bitwise the same for
        any thread count).

    Raises
    ------
    TypeError
        An argument is not an array of real numbers.
    ValueError
        Wrong shapes (``dout`` must have x's shape), N == 0.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.array([[1.0], [3.0]])
    >>> bn.backward_reduce(np.array([[1.0], [2.0]]), x, mean=[2.0])
    (array([3.]), array([1.]))
    """
    x3, shape, dt = full("x", x)
    g3 = full("dout", dout, dt, shape)[0]
    C = shape[1]
    mean = f64_vector("mean", mean, C)
    if ivar is not None:
        f64_vector("ivar", ivar, C)
    nt = check_num_threads(num_threads, x3.size)
    return _engine.backward_reduce(g3, x3, mean, nt)


def backward_elementwise(dout: ArrayLike, x: ArrayLike, mean: ArrayLike, ivar: ArrayLike,
                         gamma: ArrayLike, sum_dout: ArrayLike, sum_dout_xmu: ArrayLike, count: int,
                         *, num_threads: int | None = None) -> AnyArray:
    """The shard's ``dx`` from the global sums of :func:`backward_reduce`.

    With :math:`M` = ``count`` values per channel over all shards and
    :math:`\\hat x = (x - \\mu)\\,\\text{ivar}`,

    .. math::

        dx = \\frac{\\gamma\\,\\text{ivar}}{M}\\Big(M\\,\\text{dout}
        - \\textstyle\\sum \\text{dout}
        - \\hat x\\;\\text{ivar} \\sum \\text{dout}\\,(x-\\mu)\\Big),

    the fused closed form of the single-process backward with its two sums
    taken over the whole batch. Zero sums give the eval-mode gradient
    ``gamma * ivar * dout``.

    Parameters
    ----------
    dout : array_like, shape of x
        Gradient with respect to the shard's output; cast to x's computation dtype.
    x : array_like, shape (N, D) or (N, C, spatial...)
        The shard.
    mean, ivar : array_like, shape (C,)
        The global statistics the forward used (float64).
    gamma : array_like, shape (C,)
        Scale, cast to x's computation dtype.
    sum_dout, sum_dout_xmu : array_like, shape (C,)
        :func:`backward_reduce`'s results summed over all shards (float64).
    count : int
        Values per channel over all shards (the ``count`` of :func:`merge_stats`).
    num_threads : int or None, keyword-only
        OpenMP threads; None uses all cores.

    Returns
    -------
    dx : ndarray, shape and computation dtype of x

    Raises
    ------
    TypeError
        An argument is not an array of real numbers, or count is not an int.
    ValueError
        Wrong shapes, N == 0, count < 1.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x, dout = np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]])
    >>> sd, sdx = bn.backward_reduce(dout, x, mean=[2.0])
    >>> bn.backward_elementwise(dout, x, [2.0], [1.0], [1.0], sd, sdx, count=2)
    array([[0.],
           [0.]])
    """
    x3, shape, dt = full("x", x)
    g3 = full("dout", dout, dt, shape)[0]
    C = shape[1]
    mean, ivar = f64_vector("mean", mean, C), f64_vector("ivar", ivar, C)
    gamma = feature("gamma", gamma, C, dt)
    sd, sdx = f64_vector("sum_dout", sum_dout, C), f64_vector("sum_dout_xmu", sum_dout_xmu, C)
    count = positive_count(count)
    nt = check_num_threads(num_threads, x3.size)
    dx = _engine.empty(x3.shape, dt)
    _engine.backward_elementwise(g3, x3, mean, ivar, gamma, sd, sdx, count, dx, nt)
    return dx.reshape(shape)
