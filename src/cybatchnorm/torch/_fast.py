"""The drop-in's fast path: one compiled call per direction over the tensors'
memory (``_fused.forward_tensor``/``backward_tensor``), for the inputs a
:class:`_Plan` of their geometry accepts (float32/float64, dense in a layout
the kernels read, parameters of x's dtype and contiguous). Bit for bit what
the operators of ``_ops`` compute; ``_call.run_batch_norm`` takes this path
when nothing watches torch's dispatcher.
"""
from typing import Any

import torch
from torch import Tensor

from .. import _engine
from . import _outputs
from ._checks import check_batch_norm, legacy_vmap, transformed
from ._func import backward_transformed
from ._layout import F64, in_layout, is_layout, kernel_threads, layout_of, spatial_size

__all__ = ["fast_apply", "plan_for", "unwrap_if_dead"]


class _Plan:
    """What one input geometry decides, once: whether the compiled entries
    can take the tensors' memory as it is (float32/float64 input dense in
    a layout the kernels read, parameters of its dtype and contiguous), the
    kernels' (N, C, S) view, the work grid and the thread count. The
    arguments were checked (``check_batch_norm``) before a plan is made, and
    a plan is looked up by everything that check reads."""

    __slots__ = ("fast", "N", "C", "S", "f64", "K", "threads", "omp", "ncs",
                 "shape", "stride", "dtype", "nbytes", "small", "stats", "grad")

    def __init__(self, x: Tensor, params: tuple[Any, ...], num_threads: int) -> None:
        layout = layout_of(x) if x.dim() > 1 else None
        self.fast = (x.dtype in (torch.float32, torch.float64) and layout is not None
                     and x.numel() > 0
                     and all(t is None or (t.dtype == x.dtype and t.is_contiguous())
                             for t in params))
        self.shape, self.stride, self.dtype = x.shape, x.stride(), x.dtype
        if not self.fast:
            return
        N, C, S = x.shape[0], x.shape[1], spatial_size(x)
        self.ncs = layout == "ncs"
        self.N, self.C, self.S = (N, C, S) if self.ncs else (N * S, C, 1)
        self.f64 = x.dtype == torch.float64
        self.nbytes = x.numel() * x.element_size()
        self.small = self.nbytes < _outputs.MIN_BYTES
        # what torch.empty_like copies the cheapest: (3, C) float64 statistics
        self.stats = torch.empty((3, C), dtype=F64)
        self.grad = torch.empty(C, dtype=x.dtype)
        self.K = _engine.row_chunks(self.N, C, self.S, x.element_size())
        self.omp = _engine.omp_max_threads()
        self.threads = kernel_threads(num_threads, x.numel())


_PLANS: dict[Any, _Plan] = {}
_MAX_PLANS = 64


def _param_key(t: Any) -> Any:
    # what a plan depends on in a parameter (check_batch_norm reads these)
    return None if t is None else (t.dtype, t.numel(), t.is_contiguous())


def plan_for(x: Tensor, weight: Any, bias: Any, running_mean: Any, running_var: Any,
             training: bool, eps: float, num_threads: int) -> _Plan:
    """The plan for these arguments, made (after ``check_batch_norm``, which
    raises torch's errors) when their geometry is new. The key holds what
    the check and the plan read: x's dtype, shape and strides, and each
    parameter's presence, dtype, size and contiguity; the thread count is
    recomputed when OpenMP's limit changes (``threadpoolctl``)."""
    key = (x.dtype, x.shape, x.stride(), training, eps, num_threads,
           _param_key(weight), _param_key(bias), _param_key(running_mean),
           _param_key(running_var))
    plan = _PLANS.get(key)
    if plan is None or (plan.fast and plan.omp != _engine.omp_max_threads()):
        check_batch_norm(x, weight, bias, running_mean, running_var, training, eps)
        plan = _Plan(x, (weight, bias, running_mean, running_var), num_threads)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))       # the oldest geometry
        _PLANS[key] = plan
    return plan


class _Fast(torch.autograd.Function):
    """One compiled call per direction over the tensors' memory
    (``_fused.forward_tensor``/``backward_tensor``): what ``_ops.EagerBatchNorm`` does for
    inputs a :class:`_Plan` accepts, bit for bit, without numpy views,
    conversions or per-call decisions. The running statistics are updated
    inside the forward call; ``out`` and ``dx`` come from the drop-in's pool
    when large. A backward that builds a graph (``create_graph=True``) or runs
    under a transform (batched gradients) runs ``_func.backward_transformed``,
    as ``_ops.EagerBatchNorm``'s."""

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, rest: Any) -> Any:
        # rest: (plan, running_mean, running_var, training, momentum, eps,
        # counter's address or 0): one argument, so apply does not walk seven more
        plan, running_mean, running_var, training, momentum, eps, counter = rest
        # an output in x's memory format (x is dense: empty_like keeps its
        # strides), from the drop-in's pool when large (_outputs)
        out = torch.empty_like(x) if plan.small else _outputs.empty_strided(
            plan.shape, plan.stride, plan.dtype, plan.nbytes)
        stats = torch.empty_like(plan.stats)
        # in eval mode the running statistics normalize (none is updated)
        _engine.forward_tensor(
            x.data_ptr(), out.data_ptr(), plan.N, plan.C, plan.S, plan.f64,
            0 if weight is None else weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
            eps, 0 if running_mean is None else running_mean.data_ptr(),
            0 if running_var is None else running_var.data_ptr(), training, momentum,
            stats.data_ptr(), counter, plan.K, plan.threads)
        # stats is no input or output: it needs no version check, and is
        # kept as an attribute (a saved tensor costs more per call)
        ctx.save_for_backward(x, weight)
        ctx.info = (plan, training, bias is not None, stats)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Any) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        plan, training, has_bias, stats = ctx.info
        need = ctx.needs_input_grad
        if torch.is_grad_enabled() or transformed() or legacy_vmap():
            # a graph of the backward, or a transform (batched gradients):
            # the differentiable backward with every transform's rule
            dx, dweight, dbias = backward_transformed(dout, x, weight, stats[0], stats[1],
                                                      training, plan.threads)
        else:
            if dout.dtype != x.dtype:
                dout = dout.to(x.dtype)
            if dout.stride() != plan.stride and not is_layout(
                    dout, "ncs" if plan.ncs else "nsc"):
                dout = in_layout(dout, "ncs" if plan.ncs else "nsc")
            dx = torch.empty_like(x) if plan.small else _outputs.empty_strided(
                plan.shape, plan.stride, plan.dtype, plan.nbytes)
            # (C,) gradients of x's dtype, as the parameters have
            dweight, dbias = torch.empty_like(plan.grad), torch.empty_like(plan.grad)
            sp = stats.data_ptr()
            _engine.backward_tensor(
                dout.data_ptr(), x.data_ptr(), dx.data_ptr(), plan.N, plan.C, plan.S, plan.f64,
                sp, sp + 8 * plan.C, 0 if weight is None else weight.data_ptr(),
                dweight.data_ptr(), dbias.data_ptr(), training, plan.K, plan.threads)
        return (dx if need[0] else None,
                dweight if weight is not None and need[1] else None,
                dbias if has_bias and need[2] else None, None)


def _fast_apply_of(cls: Any) -> Any:
    # autograd.Function.apply without its Python wrapper, whose work (binding
    # setup_context's defaults, functorch's transforms, unwrapping dead
    # functorch wrappers) the fast path does not need or does itself: about 4
    # us of a 60 us step. torch's own apply where that is not there.
    base = getattr(torch._C, "_FunctionBase", None)
    raw = None if base is None else base.__dict__.get("apply")
    return cls.apply if raw is None else raw.__get__(None, cls)


#: ``_Fast.apply`` without its Python wrapper (see :func:`_fast_apply_of`)
fast_apply = _fast_apply_of(_Fast)
#: functorch's unwrapping of tensors a dead transform left (identity where absent)
unwrap_if_dead = getattr(torch._C._functorch, "_unwrap_if_dead", lambda t: t)
