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
backward operators receive what the forward accepted. ``EagerBatchNorm`` runs the
same implementations for eager calls without ``torch.library``'s dispatch;
``_call.run_batch_norm`` decides which path a call takes.
"""
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import _engine
from ._checks import check_batch_norm, dispatcher_visible, legacy_vmap, transformed
from ._func import backward_transformed
from ._layout import (
    F64,
    NUMPY_DTYPE,
    channel_array,
    compute_dtype,
    in_layout,
    kernel_threads,
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
    v = _engine.fused_forward(x3, gamma, beta, eps, o3, False, stats,
                              kernel_threads(num_threads, x3.size))
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
            # (a tensor under a transform: cumulative averages per vmapped batch)
            mf = momentum.to(dt) if isinstance(momentum, Tensor) else torch.tensor(momentum,
                                                                                   dtype=dt)
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
    # what the gradient of a forward needs, for the operator and EagerBatchNorm alike
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
    # under a transform (batched gradients of a forward the operator ran,
    # outside torch.compile) the backward with every transform's rule
    backward = backward_transformed if transformed() or legacy_vmap() else batch_norm_backward
    return _input_grads(ctx, dout, backward) + (None,) * 5


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


# ---------------------------------------------------------- forward mode

def _jvp_impl(tx: Optional[Tensor], tw: Optional[Tensor], tb: Optional[Tensor], x: Tensor,
              weight: Optional[Tensor], mean: Tensor, invstd: Tensor, training: bool,
              num_threads: int) -> Tensor:
    """The tangent of ``batch_norm_forward``'s output for tangents ``tx``,
    ``tw``, ``tb`` of x, weight and bias (None for zero): the compiled
    kernel ``double_backward`` in its ``jvp`` mode (the double backward's
    ddout is this Jacobian-vector product; the docs' "Forward mode")."""
    from ._func import jvp_kernel
    C = x.shape[1]
    rows = [None if t is None else t.detach().reshape(1, C) for t in (tw, tb, weight)]
    return jvp_kernel(None if tx is None else tx.detach().unsqueeze(0), rows[0], rows[1],
                      x.detach().unsqueeze(0), rows[2], mean.reshape(1, C),
                      invstd.reshape(1, C), training, num_threads)[0]


batch_norm_jvp = torch.library.custom_op("cybatchnorm::batch_norm_jvp", _jvp_impl,
                                         mutates_args=())


@batch_norm_jvp.register_fake
def _jvp_fake(
    tx: Any,
    tw: Any,
    tb: Any,
    x: Any,
    weight: Any,
    mean: Any,
    invstd: Any,
    training: Any,
    num_threads: Any,
) -> Tensor:
    return torch.empty_like(x)


batch_norm_forward.register_autograd(_forward_grad, setup_context=_forward_setup)
batch_norm_backward.register_autograd(_backward_grad, setup_context=_backward_setup)


# ------------------------------------------------------------ eager calls

class EagerBatchNorm(torch.autograd.Function):
    """The operators' implementations and formulas without the per-call cost
    of ``torch.library``'s Python dispatch (about 90 us a call, measured:
    more than the kernels take on small batches). Used for eager calls only;
    under ``torch.compile`` and torch.func transforms the registered
    operators run. Forward: ``_forward_impl`` and the running statistics'
    update; backward: ``_backward_impl``, or, when a graph of the backward is
    being built (``create_graph=True``) or a transform is active (batched
    gradients), ``_func.backward_transformed``, whose functions have every
    transform's rule."""

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
        # building a graph of the backward (create_graph=True) or under a
        # transform (batched gradients): the differentiable backward with
        # every transform's rule; otherwise the operator's implementation
        differentiable = torch.is_grad_enabled() or transformed() or legacy_vmap()
        return _input_grads(ctx, dout, backward_transformed if differentiable
                            else _backward_impl) + (None,) * 6
