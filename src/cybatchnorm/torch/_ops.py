"""The compiled kernels as PyTorch operators (``torch.ops.cybatchnorm.*``).

Three operators, each registered with ``torch.library.custom_op`` (so that
``torch.compile`` and autograd see them as single nodes), a fake
implementation (shapes, dtypes and strides for tracing) and an autograd
formula:

- ``batch_norm_forward``: output, and the float64 per-channel mean,
  inverse standard deviation (what the backward reads) and variance (what
  :func:`update_running_stats` folds into the running statistics: a
  functional operator, as autograd formulas require). Its gradient is
- ``batch_norm_backward``: the closed-form dx, dweight, dbias (the fused
  backward kernel), itself differentiable through
- ``batch_norm_double_backward``: what differentiating the closed form gives
  (see the docs' section on double backward). It has no gradient of its own:
  a third derivative raises.

Tensors reach the kernels as numpy views of their memory, never copied, as an
(N, C, S) array (contiguous input) or an (N*S, C, 1) matrix (channels_last
input); outputs are allocated in the input's memory format. float16 and
bfloat16 are computed in float64 (one conversion each way: each value
rounded once, as close to the exact result as the dtype allows). Arguments are
checked once, by ``_checks.check_batch_norm``, in the forward operator; the
backward operators receive what the forward accepted.
"""
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _engine
from . import _outputs
from ._checks import check_batch_norm, check_not_tracing, check_transforms
from ._layout import (
    F64,
    NUMPY_DTYPE,
    channel_array,
    compute_dtype,
    in_layout,
    is_layout,
    kernel_threads,
    layout_of,
    out_like,
    prepare,
    spatial_size,
    view3,
)

# ------------------------------------------------------------------ forward

def _forward_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       running_mean: Optional[Tensor], running_var: Optional[Tensor],
                       training: bool, eps: float,
                       num_threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch norm of ``x`` (N, C, *spatial); returns ``(out, mean, invstd, m2)``.

    ``training`` normalizes with the batch statistics, otherwise the running
    statistics normalize. ``mean`` and ``invstd`` are the (C,) float64
    statistics used, ``m2`` the float64 sums of squared deviations of the
    batch (zeros in eval mode and for an empty batch). Nothing is
    modified: ``update_running_stats`` folds the batch statistics into the
    running ones. ``num_threads`` 0 uses all cores.
    """
    cdt = check_batch_norm(x, weight, bias, running_mean, running_var, training, eps)
    if x.dim() < 2:     # an empty 1-D input (check_batch_norm refused any other)
        none = [torch.zeros(0, dtype=F64) for _ in range(3)]
        return x.clone(), none[0], none[1], none[2]
    N, C, S = x.shape[0], x.shape[1], spatial_size(x)
    xc, layout = prepare(x, cdt)
    out = torch.empty_like(xc)          # xc is dense in ``layout``: out is too
    if N * S == 0 or C == 0:
        # an empty batch: an empty output, statistics untouched (as torch)
        zeros = [torch.zeros(C, dtype=F64) for _ in range(3)]
        return out.to(x.dtype), zeros[0], zeros[1], zeros[2]
    x3, o3 = view3(xc, layout), view3(out, layout)
    gamma, beta = channel_array(weight, C, cdt, 1.0), channel_array(bias, C, cdt, 0.0)
    stats = None if training else (channel_array(running_mean, C, cdt, 0.0),
                                   channel_array(running_var, C, cdt, 1.0))
    v = _engine.fused_forward(x3, gamma, beta, eps, o3, False, stats, kernel_threads(num_threads, x3.size))
    if out.dtype != x.dtype:
        out = out.to(x.dtype)
    return (out, torch.from_numpy(v["mu64"]), torch.from_numpy(v["ivar64"]),
            torch.from_numpy(v["m2"]))


def update_running_stats(
    running_mean: Any,
    running_var: Any,
    mean: Any,
    m2: Any,
    count: Any,
    momentum: Any,
) -> None:
    """``running = momentum * batch + (1 - momentum) * running`` in place, with
    the unbiased batch variance ``m2 / (count - 1)``, in torch's CPU
    arithmetic (``_engine.update_running_stats``); nothing for an empty batch.
    ``mean`` and ``m2`` are the float64 (C,) tensors of the forward."""
    if count == 0 or (running_mean is None and running_var is None):
        return
    plain = all(t is None or t.dtype in (torch.float32, torch.float64)
                for t in (running_mean, running_var))
    if plain and not dispatcher_visible(running_mean, running_var, mean, m2):
        # the same arithmetic on numpy views: a fraction of the per-call cost
        _engine.update_running_stats(
            None if running_mean is None else running_mean.detach().numpy(),
            None if running_var is None else running_var.detach().numpy(),
            mean.numpy(), m2.numpy(), count, momentum)
        return
    with torch.no_grad():
        # traced or reduced-precision buffers: the same steps in torch ops
        for run in (running_mean, running_var):
            if run is None:
                continue
            wide = run.dtype == torch.float64
            dt = torch.float64 if wide else torch.float32
            mf = torch.tensor(momentum, dtype=dt)
            keep = 1 - mf
            cur = run.to(dt)
            if run is running_mean:
                new = mf * mean.to(dt) + keep * cur
            elif wide:
                new = mf * (m2 / (count - 1)) + keep * cur
            else:
                unbiased = m2.to(dt) / torch.tensor(count - 1, dtype=dt)
                new = (mf.double() * unbiased.double() + (keep * cur).double()).to(dt)
            run.copy_(new)


batch_norm_forward = torch.library.custom_op("cybatchnorm::batch_norm_forward", _forward_impl,
                                             mutates_args=())


@batch_norm_forward.register_fake
def _forward_fake(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: Any,
    eps: Any,
    num_threads: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cdt = check_batch_norm(x, weight, bias, running_mean, running_var, training, eps)
    C = x.shape[1] if x.dim() > 1 else 0
    out = out_like(x if x.dtype == cdt else x.to(cdt)).to(x.dtype)
    return (out,) + tuple(x.new_empty((C,), dtype=F64) for _ in range(3))


def _save(
    ctx: Any,
    x: Any,
    weight: Any,
    bias: Any,
    mean: Any,
    invstd: Any,
    training: Any,
    num_threads: Any,
) -> None:
    # what the gradient of a forward needs, for the operator and _Eager alike
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.training, ctx.num_threads = training, num_threads
    ctx.bias_dtype = None if bias is None else bias.dtype


def _input_grads(ctx: Any, dout: Any, backward: Any) -> tuple[Any, Any, Any]:
    # (dx, dweight, dbias) by ``backward`` (the operator or its
    # implementation), each None where not needed, in the parameters' dtypes
    x, weight, mean, invstd = ctx.saved_tensors
    dx, dweight, dbias = backward(dout, x, weight, mean, invstd, ctx.training, ctx.num_threads)
    need = ctx.needs_input_grad
    dweight = dweight.to(weight.dtype) if weight is not None and need[1] else None
    dbias = dbias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and need[2] else None
    return dx if need[0] else None, dweight, dbias


def _forward_setup(ctx: Any, inputs: Any, output: Any) -> None:
    x, weight, bias, _, _, training, _, num_threads = inputs
    _, mean, invstd, m2 = output
    _save(ctx, x, weight, bias, mean, invstd, training, num_threads)
    ctx.mark_non_differentiable(mean, invstd, m2)


def _forward_grad(ctx: Any, dout: Any, _dmean: Any, _dinvstd: Any, _dm2: Any) -> tuple[Any, ...]:
    return _input_grads(ctx, dout, batch_norm_backward) + (None,) * 5


# ----------------------------------------------------------------- backward

def _backward_impl(dout: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                        invstd: Tensor, training: bool,
                        num_threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form gradients ``(dx, dweight, dbias)`` of ``batch_norm_forward``.

    ``mean`` and ``invstd`` are the forward's; ``training`` false gives the
    eval-mode gradient (statistics constant). dweight and dbias come in the
    computation dtype (float64 for float16/bfloat16 input).
    """
    cdt = compute_dtype(x)
    C = x.shape[1]
    xc, layout = prepare(x, cdt)
    dx = torch.empty_like(xc)           # xc is dense in ``layout``: dx is too
    npdt = NUMPY_DTYPE[cdt]
    dgamma, dbeta = np.zeros(C, npdt), np.zeros(C, npdt)
    if dx.numel():
        g = dout.detach()
        g = in_layout(g if g.dtype == cdt else g.to(cdt), layout)
        g3, x3, dx3 = view3(g, layout), view3(xc, layout), view3(dx, layout)
        dgamma, dbeta = _engine.fused_backward(g3, x3, True, mean.numpy(), invstd.numpy(),
                                         channel_array(weight, C, cdt, 1.0), dx3, training,
                                         kernel_threads(num_threads, x3.size))
    if dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    return dx, torch.from_numpy(dgamma), torch.from_numpy(dbeta)


batch_norm_backward = torch.library.custom_op("cybatchnorm::batch_norm_backward", _backward_impl,
                                              mutates_args=())


@batch_norm_backward.register_fake
def _backward_fake(
    dout: Any,
    x: Any,
    weight: Any,
    mean: Any,
    invstd: Any,
    training: Any,
    num_threads: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    cdt = compute_dtype(x)
    C = x.shape[1]
    dx = out_like(x if x.dtype == cdt else x.to(cdt)).to(x.dtype)
    return dx, x.new_empty((C,), dtype=cdt), x.new_empty((C,), dtype=cdt)


def _backward_setup(ctx: Any, inputs: Any, output: Any) -> None:
    dout, x, weight, mean, invstd, training, num_threads = inputs
    ctx.save_for_backward(dout, x, weight, mean, invstd)
    ctx.training, ctx.num_threads = training, num_threads


def _backward_grad(ctx: Any, ggx: Any, ggw: Any, ggb: Any) -> tuple[Any, ...]:
    dout, x, weight, mean, invstd = ctx.saved_tensors
    ddout, dx, dweight = batch_norm_double_backward(ggx, ggw, ggb, dout, x, weight, mean,
                                                    invstd, ctx.training, ctx.num_threads)
    need = ctx.needs_input_grad
    return (ddout if need[0] else None, dx if need[1] else None,
            dweight if weight is not None and need[2] else None, None, None, None, None)


# ---------------------------------------------------------- double backward

def _double_backward_impl(ggx: Optional[Tensor], ggw: Optional[Tensor],
                          ggb: Optional[Tensor], dout: Tensor, x: Tensor,
                          weight: Optional[Tensor], mean: Tensor, invstd: Tensor,
                          training: bool,
                          num_threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(ddout, dx, dweight)`` of ``<ggx, dx> + <ggw, dweight> + <ggb, dbias>``.

    ``ggx``, ``ggw``, ``ggb`` are the incoming gradients of
    :func:`batch_norm_backward`'s three outputs (None for zero). The compiled
    kernel ``double_backward`` (its docstring and the docs' "Double backward"
    give the formulas), in the computation dtype with float64 sums, on dout,
    x and ggx in x's layout.
    """
    cdt = compute_dtype(x)
    C = x.shape[1]
    xc, layout = prepare(x, cdt)
    g = in_layout(dout.detach().to(cdt), layout)
    a = g if ggx is None else in_layout(ggx.detach().to(cdt), layout)
    ddout, dx = out_like(xc), out_like(xc)
    dgamma = torch.zeros(C, dtype=F64)
    if xc.numel():
        dgamma = torch.from_numpy(_engine.fused_double_backward(
            None if ggx is None else view3(a, layout), view3(g, layout), view3(xc, layout),
            mean.numpy(), invstd.numpy(), channel_array(weight, C, F64, 1.0),
            channel_array(ggw, C, F64, 0.0), channel_array(ggb, C, F64, 0.0), training,
            view3(ddout, layout), view3(dx, layout), kernel_threads(num_threads, xc.numel())))
    pdt = weight.dtype if weight is not None else cdt
    # in the memory formats the fake implementation promises
    return (torch.empty_like(dout).copy_(ddout), torch.empty_like(x).copy_(dx),
            dgamma.to(pdt))


batch_norm_double_backward = torch.library.custom_op(
    "cybatchnorm::batch_norm_double_backward", _double_backward_impl, mutates_args=())


@batch_norm_double_backward.register_fake
def _double_fake(
    ggx: Any,
    ggw: Any,
    ggb: Any,
    dout: Any,
    x: Any,
    weight: Any,
    mean: Any,
    invstd: Any,
    training: Any,
    num_threads: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    C = x.shape[1]
    pdt = weight.dtype if weight is not None else compute_dtype(x)
    return torch.empty_like(dout), torch.empty_like(x), x.new_empty((C,), dtype=pdt)


batch_norm_forward.register_autograd(_forward_grad, setup_context=_forward_setup)
batch_norm_backward.register_autograd(_backward_grad, setup_context=_backward_setup)


# ------------------------------------------------------------ eager calls

class _Eager(torch.autograd.Function):
    """The operators' implementations and formulas without the per-call cost
    of ``torch.library``'s Python dispatch (about 90 us a call, measured:
    more than the kernels take on small batches). Used for eager calls only;
    under ``torch.compile`` and torch.func transforms the registered
    operators run. Forward: ``_forward_impl`` and the running statistics'
    update; backward: ``_backward_impl``, or, when a graph of the backward is
    being built (``create_graph=True``), the differentiable
    ``batch_norm_backward`` operator, so second derivatives are the
    operators' own."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Any,
        weight: Any,
        bias: Any,
        running_mean: Any,
        running_var: Any,
        training: Any,
        momentum: Any,
        eps: Any,
        num_threads: Any,
    ) -> Any:
        out, mean, invstd, m2 = _forward_impl(x, weight, bias, running_mean, running_var,
                                              training, eps, num_threads)
        if training:
            update_running_stats(running_mean, running_var, mean, m2,
                                 x.shape[0] * spatial_size(x) if x.dim() > 1 else 0, momentum)
        _save(ctx, x, weight, bias, mean, invstd, training, num_threads)
        return out

    @staticmethod
    def backward(ctx: Any, dout: Any) -> tuple[Any, ...]:
        # building a graph of the backward (create_graph=True): the
        # differentiable operator; otherwise its implementation directly
        backward = batch_norm_backward if torch.is_grad_enabled() else _backward_impl
        return _input_grads(ctx, dout, backward) + (None,) * 6


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def dispatcher_visible(*tensors: Any) -> bool:
    """Whether the registered operators must run instead of the eager path:
    while compiling, under a torch.func transform, under a torch dispatch
    or function mode (TorchDispatchMode, FakeTensorMode, FlopCounterMode,
    ...), while the profiler records, or when a tensor is a subclass
    (FakeTensor, DTensor, ...) or has no CPU memory (device "meta"). The
    eager path reads the tensors' memory through numpy, which none of these
    have or would see."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._autograd._profiler_enabled()):
        return True
    for t in tensors:
        # is_cpu is false for meta and every other device (a cheap attribute)
        if t is not None and (type(t) not in _PLAIN or not t.is_cpu):
            return True
    return False


# ------------------------------------------------------------ the fast path

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


def _plan(x: Tensor, weight: Any, bias: Any, running_mean: Any, running_var: Any,
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
    (``_fused.forward_tensor``/``backward_tensor``): what ``_Eager`` does for
    inputs a :class:`_Plan` accepts, bit for bit, without numpy views,
    conversions or per-call decisions. The running statistics are updated
    inside the forward call; ``out`` and ``dx`` come from the drop-in's pool
    when large. A backward that builds a graph (``create_graph=True``) runs
    the differentiable ``batch_norm_backward`` operator, as ``_Eager``'s."""

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
        if torch.is_grad_enabled():
            # a graph of the backward: the differentiable operator
            dx, dweight, dbias = batch_norm_backward(dout, x, weight, stats[0], stats[1],
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


_fast_apply = _fast_apply_of(_Fast)
_unwrap_if_dead = getattr(torch._C._functorch, "_unwrap_if_dead", lambda t: t)


def run_batch_norm(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: Any,
    momentum: Any,
    eps: Any,
    num_threads: Any,
    counter: Any = None,
) -> Tensor:
    """Batch norm as the modules and ``batch_norm`` run it: the output, with
    the running statistics updated in training mode and ``counter`` (a
    module's ``num_batches_tracked``, or None) incremented once the batch
    was accepted. TorchScript tracing and the transforms the operators have
    no rule for raise first (``check_not_tracing``, ``check_transforms``).
    The registered operators run whenever something watches or replaces
    torch's dispatcher (:func:`dispatcher_visible`); otherwise one compiled
    call per direction (:class:`_Fast`) for inputs its plan accepts, and the
    operators' implementations through :class:`_Eager` for the rest
    (float16/bfloat16, strided input, empty batches)."""
    visible = dispatcher_visible(x, weight, bias, running_mean, running_var)
    if visible or torch._C._is_tracing() or torch.autograd.forward_ad._current_level >= 0:
        check_not_tracing()
        check_transforms(x)
    res: Tensor
    if visible:
        mean: Tensor
        m2: Tensor
        res, mean, _, m2 = batch_norm_forward(x, weight, bias, running_mean, running_var,
                                              training, eps, num_threads)
        if training:
            update_running_stats(running_mean, running_var, mean, m2,
                                 x.shape[0] * spatial_size(x) if x.dim() > 1 else 0, momentum)
    else:
        plan = _plan(x, weight, bias, running_mean, running_var, training, eps, num_threads) \
            if isinstance(x, torch.Tensor) else None
        if plan is not None and plan.fast:
            # a plain int64 counter is incremented by the compiled call
            count = counter is not None and type(counter) in _PLAIN and counter.is_cpu \
                and counter.dtype == torch.int64
            # no functorch transform is active here (dispatcher_visible): what
            # Function.apply would add is unwrapping tensors left by a dead one
            res = _fast_apply(_unwrap_if_dead(x),
                              None if weight is None else _unwrap_if_dead(weight),
                              None if bias is None else _unwrap_if_dead(bias),
                              (plan, running_mean, running_var, training, momentum, eps,
                               counter.data_ptr() if count else 0))
            if count:
                return res
        else:
            res = _Eager.apply(x, weight, bias, running_mean,  # type: ignore[no-untyped-call]
                               running_var, training, momentum, eps, num_threads)
    if counter is not None:
        counter.add_(1)
    return res
