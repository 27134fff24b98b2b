"""``SyncBatchNorm``: batch norm over a batch split across torch.distributed
processes, on CPU tensors (``torch.nn.SyncBatchNorm`` accepts only GPU input).

Only the graph's two reductions cross the process boundary, through any
backend with ``all_gather`` and ``all_reduce`` (gloo on CPU):

* forward: each rank computes its shard's ``(count, mean, m2)`` in float64
  (the split kernel ``batch_stats``); one ``all_gather`` shares them and
  every rank merges the same list by Chan's formula in rank order (the
  kernel ``merge``), so statistics, output and running statistics are the
  same on every rank; empty shards take part with a count of 0;
* backward: each rank computes its shard's ``sum(dout)`` and
  ``sum(dout * (x - mean))`` (2C float64 values); one ``all_reduce`` sums
  them and the kernel ``backward_elementwise`` gives the shard's ``dx``.

``weight`` and ``bias`` gradients follow torch.nn.SyncBatchNorm: each rank
holds its own shard's contribution (zeros for an empty shard), so their sum
over ranks, what DDP's gradient averaging times the world size gives, is the
single-process gradient.
"""
from typing import Any

import numpy as np
import torch
from torch import Tensor
import torch.distributed as dist

from .. import _engine
from ..split import inverse_std
from ._checks import check_batch_norm, check_transforms
from ._layout import (
    F64,
    channel_array,
    compute_dtype,
    in_layout,
    kernel_threads,
    out_like,
    prepare,
    view3,
)
from ._ops import update_running_stats
from .functional import threads_arg
from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, DropInBatchNorm

__all__ = ["SyncBatchNorm"]


def _gather_stats(x: Any, cdt: Any, num_threads: Any, group: Any, world: Any) -> Any:
    """The whole batch's float64 (count, mean, m2) from every rank's shard."""
    C = x.shape[1]
    local = torch.zeros(3, C, dtype=F64)
    xc, layout = prepare(x, cdt)
    if x.numel():
        x3 = view3(xc, layout)
        mean, m2 = _engine.batch_stats(x3, kernel_threads(num_threads, x3.size))
        local[1], local[2] = torch.from_numpy(mean), torch.from_numpy(m2)
        local[0] = x.numel() // C
    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local, group=group)
    every = torch.stack(shards).numpy()             # (P, 3, C), in rank order
    counts = np.ascontiguousarray(every[:, 0, 0])
    mean, m2 = _engine.merge(counts, np.ascontiguousarray(every[:, 1]),
                             np.ascontiguousarray(every[:, 2]), 1)
    return xc, layout, float(counts.sum()), mean, m2


class _SyncBatchNormFunction(torch.autograd.Function):
    """Forward and backward of one shard; collective on both ways."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Any,
        weight: Any,
        bias: Any,
        running_mean: Any,
        running_var: Any,
        eps: Any,
        momentum: Any,
        group: Any,
        world: Any,
        num_threads: Any,
    ) -> Any:
        cdt = check_batch_norm(x, weight, bias, running_mean, running_var, True, eps,
                               shard=True)
        C = x.shape[1]
        xc, layout, count, mean, m2 = _gather_stats(x, cdt, num_threads, group, world)
        if count == 1:
            raise ValueError("Expected more than 1 value per channel when training, got input "
                             f"size {int(count)}")
        # every shard empty: an empty output and statistics untouched, as
        # torch's batch norm does for an empty batch
        var = m2 / count if count else np.zeros(C)
        invstd = inverse_std(var, eps)
        out = out_like(xc)
        if x.numel():
            x3, o3 = view3(xc, layout), view3(out, layout)
            _engine.normalize(x3, mean, invstd, channel_array(weight, C, cdt, 1.0),
                              channel_array(bias, C, cdt, 0.0), o3,
                              kernel_threads(num_threads, x3.size))
        update_running_stats(running_mean, running_var, torch.from_numpy(mean),
                             torch.from_numpy(m2), int(count), momentum)
        ctx.save_for_backward(x, weight)
        ctx.stats = (torch.from_numpy(mean), torch.from_numpy(invstd), count)
        ctx.group, ctx.num_threads, ctx.bias_dtype = group, num_threads, (
            None if bias is None else bias.dtype)
        return out.to(x.dtype) if out.dtype != x.dtype else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: Any) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        mean, invstd, count = ctx.stats
        cdt = compute_dtype(x)
        C = x.shape[1]
        xc, layout = prepare(x, cdt)
        sums = torch.zeros(2, C, dtype=F64)
        dx = out_like(xc)
        if x.numel():
            g = dout.detach()
            g = in_layout(g if g.dtype == cdt else g.to(cdt), layout)
            g3, x3 = view3(g, layout), view3(xc, layout)
            sd, sdx = _engine.backward_reduce(g3, x3, mean.numpy(),
                                              kernel_threads(ctx.num_threads, x3.size))
            sums[0], sums[1] = torch.from_numpy(sd), torch.from_numpy(sdx)
        local = sums.clone()
        dist.all_reduce(sums, group=ctx.group)
        if x.numel():
            s = sums.numpy()
            _engine.backward_elementwise(g3, x3, mean.numpy(), invstd.numpy(),
                                         channel_array(weight, C, cdt, 1.0), s[0], s[1], count,
                                         view3(dx, layout),
                                         kernel_threads(ctx.num_threads, x3.size))
        need = ctx.needs_input_grad
        dweight = dbias = None
        if weight is not None and need[1]:
            dweight = (local[1] * invstd).to(weight.dtype)      # this shard's sum(dout * xhat)
        if ctx.bias_dtype is not None and need[2]:
            dbias = local[0].to(ctx.bias_dtype)                 # this shard's sum(dout)
        return (dx.to(x.dtype) if need[0] else None, dweight, dbias,
                None, None, None, None, None, None, None)


class SyncBatchNorm(DropInBatchNorm):
    """Drop-in for ``torch.nn.SyncBatchNorm`` that runs on CPU tensors.

    Every rank of ``process_group`` (default: the whole world) calls it with
    its own shard of the batch, of any size, even empty. Output, input
    gradient and running statistics are those of a single process on the
    concatenated batch, on every rank; weight and bias gradients are this
    rank's contribution (sum them over ranks, as DDP does, for the whole
    batch's). Eval mode, world size 1 and no initialised process group never
    communicate: it is then plain batch norm. A rank that never arrives makes
    the others raise the process group's timeout error.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats
        As ``torch.nn.SyncBatchNorm``.
    process_group : torch.distributed.ProcessGroup or None
    device, dtype
        As for any torch module.
    bias : bool, keyword-only, default True
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, num_threads=num_threads)
        self.process_group = process_group

    def _check_input_dim(self, input: Any) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Any) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def _group(self) -> Any:
        # the process group to synchronise over, or None for plain batch norm
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None, 1
        group = self.process_group or dist.group.WORLD
        world = dist.get_world_size(group)
        return (group, world) if world > 1 else (None, 1)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        group, world = self._group()
        if group is None:
            return super().forward(input)
        check_transforms(input, "SyncBatchNorm (synchronised)")
        track, factor = self._momentum()      # training: _group() is None otherwise
        # torch's autograd.Function.apply carries no annotations
        out: Tensor = _SyncBatchNormFunction.apply(  # type: ignore[no-untyped-call]
            input, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, float(self.eps), factor, group, world,
            threads_arg(self.num_threads))
        if track and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return out

    @classmethod
    def convert_sync_batchnorm(cls: Any, module: Any, process_group: Any = None) -> Any:
        """Replace every ``torch.nn.BatchNorm1d/2d/3d`` and cybatchnorm.torch
        batch norm in ``module``'s tree by a :class:`SyncBatchNorm` (weights,
        buffers and training flag kept); in place: returns ``module`` itself,
        or the new layer when ``module`` is a batch norm, as torch's does."""
        converts = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
                    BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)
        if isinstance(module, converts) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group,
                      bias=module.bias is not None,
                      num_threads=getattr(module, "num_threads", None))
            if module.affine:
                with torch.no_grad():
                    new.weight = module.weight
                    if module.bias is not None:
                        new.bias = module.bias
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            if hasattr(module, "qconfig"):
                new.qconfig = module.qconfig
            return new
        for name, child in module.named_children():
            converted = cls.convert_sync_batchnorm(child, process_group)
            if converted is not child:
                module.add_module(name, converted)
        return module
