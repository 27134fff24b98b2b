"""Synchronized batch norm over MPI: one batch split across processes.

In data-parallel training every process holds a shard of the batch. Batch
norm's statistics must be those of the whole batch, or the output and the
gradient are wrong. Only the graph's reductions cross the process boundary:

* forward: each process computes its shard's ``(count, mean, m2)`` (the
  kernel of :func:`cybatchnorm.batch_stats`), one ``Allgather`` shares them,
  and every process merges the same list in rank order by Chan's formula (the
  kernel of :func:`cybatchnorm.merge_stats`), so the global mean and variance,
  and the running statistics, are bitwise identical on every rank;
* backward: each process computes its shard's ``sum(dout)`` and
  ``sum(dout * xmu)`` (the kernel of :func:`cybatchnorm.backward_reduce`), one
  ``Allreduce`` sums them, and the kernel of
  :func:`cybatchnorm.backward_elementwise` gives the shard's ``dx``.

The layer validates its input once per call and runs those kernels through
the engine, as the split API's functions do after validating theirs.

Communication goes through an mpi4py communicator (``pip install
cybatchnorm[mpi]``). mpi4py is imported only when a :class:`SyncBatchNorm` is
made without ``comm`` or runs its backward, never by ``import cybatchnorm``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _engine
from ._typing import AnyArray, ArrayLike
from ._validation import DEFAULT_EPS, check_num_threads, full, layer_state
from .layer import BatchNorm
from .split import inverse_std

__all__ = ["SyncBatchNorm"]


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "cybatchnorm.distributed needs mpi4py and an MPI library: "
            "pip install cybatchnorm[mpi]"
        ) from exc
    return MPI


class SyncBatchNorm(BatchNorm):
    """Batch norm whose batch is split over the processes of an MPI communicator.

    The same interface as :class:`cybatchnorm.BatchNorm` (parameters,
    running statistics, ``train``/``eval``, ``forward``/``backward``), plus
    ``comm``. Every process calls :meth:`forward` with its own shard (shards
    may differ in size, even be a single row, as long as the whole batch has
    at least two values per channel) and then :meth:`backward` with the
    gradient of its own output. The results are those of a single-process
    :class:`~cybatchnorm.BatchNorm` on the concatenated batch:

    * :meth:`forward` returns this shard's part of the output;
    * :meth:`backward` returns this shard's part of ``dx``;
    * ``dgamma`` and ``dbeta`` are the gradients of the *whole* batch, the
      same on every rank: they must not be all-reduced again;
    * ``running_mean`` and ``running_var`` are updated with the global
      statistics (unbiased variance with the global count), bitwise the same
      on every rank.

    :meth:`forward` is collective with batch statistics (training, or eval
    without ``track_running_stats``); :meth:`backward` is always collective
    (the parameter gradients are sums over the whole batch). Every rank of
    ``comm`` must call them, in the same order.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, dtype, num_threads
        As for :class:`cybatchnorm.BatchNorm`.
    comm : object, optional, keyword-only
        The ``mpi4py.MPI.Comm`` whose processes share the batch; ``None``
        (the default) is ``MPI.COMM_WORLD``.

    Raises
    ------
    ImportError
        mpi4py is not installed (``pip install cybatchnorm[mpi]``).
    TypeError
        ``comm`` is not a communicator, or a :class:`~cybatchnorm.BatchNorm`
        argument is invalid.

    Examples
    --------
    Run with ``mpirun -n 2 python script.py``::

        from mpi4py import MPI
        import numpy as np
        from cybatchnorm.distributed import SyncBatchNorm

        rank = MPI.COMM_WORLD.Get_rank()
        x = np.random.default_rng(rank).normal(size=(8 + rank, 4))   # this rank's shard
        layer = SyncBatchNorm(4)
        out = layer.forward(x)                  # normalized with the global statistics
        dx = layer.backward(np.ones_like(out))  # and layer.dgamma, layer.dbeta
    """

    # what the backward reads: x's (N, C, S) view (a copy when it views the
    # caller's x), x's shape and dtype, the mean, ivar and gamma used, the count
    _sync: tuple[AnyArray, tuple[int, ...], np.dtype[Any], AnyArray, AnyArray, AnyArray,
                 int | None] | None

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype: Any = np.float64,
                 *, comm: Any = None, num_threads: int | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         num_threads=num_threads)
        if comm is None:
            comm = _mpi().COMM_WORLD
        for method in ("Get_size", "Allgather", "Allreduce"):
            if not callable(getattr(comm, method, None)):
                raise TypeError(
                    f"comm: expected an mpi4py communicator, got {type(comm).__name__}"
                )
        self.comm = comm
        self._sync = None

    def forward(self, x: ArrayLike) -> AnyArray:
        """Normalize this rank's shard ``x`` (N, C, ...) with the statistics of the whole batch.

        Collective when batch statistics are used (training, or eval without
        ``track_running_stats``): one ``Allgather`` of ``2 C + 1`` float64
        values per rank. In eval mode with running statistics it
        communicates nothing.
        """
        momentum = layer_state(self)      # checked before anything changes
        x3, shape, dt = full("x", x)
        if shape[1] != self.num_features:
            raise ValueError(
                f"x: expected {self.num_features} channels on axis 1, got shape {shape}"
            )
        N, C, S = x3.shape
        nt = check_num_threads(self.num_threads, x3.size)
        total: int | None
        if (not self.training and self.running_mean is not None
                and self.running_var is not None):
            total = None   # the running statistics are constants of the graph
            gmean = self.running_mean.astype(np.float64)
            gvar = self.running_var.astype(np.float64)
        else:
            mean, m2 = _engine.batch_stats(x3, nt)
            # one message: [count, mean (C), m2 (C)] from every rank, in rank order
            send = np.concatenate(([float(N * S)], mean, m2))
            gathered = np.empty((self.comm.Get_size(), 2 * C + 1))
            self.comm.Allgather(send, gathered)
            total = int(gathered[:, 0].sum())   # whole numbers, exact in float64
            gmean, gm2 = _engine.merge(np.ascontiguousarray(gathered[:, 0]),
                                       np.ascontiguousarray(gathered[:, 1:C + 1]),
                                       np.ascontiguousarray(gathered[:, C + 1:]), nt)
            gvar = gm2 / total
            if total < 2:
                raise ValueError(
                    f"x: expected more than 1 value per channel over all processes, got {total}"
                )
        ivar = inverse_std(gvar, self.eps)
        gamma, beta = self._params(dt)
        out3 = _engine.empty(x3.shape, dt)
        _engine.normalize(x3, gmean, ivar, gamma, beta, out3, nt)
        if self.training and self.track_running_stats and total is not None:
            self.num_batches_tracked += 1
            f = 1.0 / self.num_batches_tracked if momentum is None else momentum
            _engine.update_running_stats(self.running_mean, self.running_var,
                                         gmean.astype(dt), gm2, total, f)
        if np.may_share_memory(x3, x):   # keep what the backward reads, as a cache would
            x3 = x3.copy()
        self._sync = (x3, shape, dt, gmean, ivar, np.array(gamma, dt), total)
        return out3.reshape(shape)

    __call__ = forward

    def backward(self, dout: ArrayLike) -> AnyArray:
        """Gradient with respect to this rank's shard of the last forward's input.

        Always collective: one ``Allreduce`` of ``2 C`` float64 values,
        ``sum(dout)`` and ``sum(dout * xmu)`` over the whole batch. Returns
        ``dx`` for this shard and sets ``dgamma`` and ``dbeta`` to the
        gradients of the whole batch (None without ``affine``). After an
        eval-mode forward with running statistics the statistics are
        constants, so ``dx = gamma * ivar * dout``.
        """
        if self._sync is None:
            raise RuntimeError("backward: call forward first")
        x3, shape, dt, mean, ivar, gamma, total = self._sync
        g3 = full("dout", dout, dt, shape)[0]
        nt = check_num_threads(self.num_threads, x3.size)
        sums = np.stack(_engine.backward_reduce(g3, x3, mean, nt))
        MPI = _mpi()
        self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        dx3 = _engine.empty(x3.shape, dt)
        if total is None:   # eval mode: no gradient through the statistics
            zeros = np.zeros_like(sums)
            _engine.backward_elementwise(g3, x3, mean, ivar, gamma, zeros[0], zeros[1], 1.0, dx3,
                                         nt)
        else:
            _engine.backward_elementwise(g3, x3, mean, ivar, gamma, sums[0], sums[1], total, dx3,
                                         nt)
        dx = dx3.reshape(shape)
        if self.affine:
            self.dgamma = (sums[1] * ivar).astype(dt)
            self.dbeta = sums[0].astype(dt)
        return dx

    def __repr__(self) -> str:
        return super().__repr__().replace("BatchNorm(", "SyncBatchNorm(", 1)[:-1] + \
            f", comm size {self.comm.Get_size()})"
