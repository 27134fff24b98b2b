"""Layer, group and instance norm as PyTorch operators (``torch.ops.cybatchnorm.norm_*``).

One pair of operators serves the three normalizations, as one pair of
kernels does (``_engine.norm_forward``/``norm_backward``): x is an (R, M)
matrix, a row being one sample (layer norm) or one group of one sample (group
norm; instance norm is group norm with a channel per group), and each row is
normalized on its own float64 mean and variance. ``groups`` G and
``spatial`` S say which parameter scales each value: row r is group
``r % G``, and its M = Cg * S values are Cg parameters' runs of S values
(layer norm: G = 1, S = 1, a parameter per value); weight and bias hold the
G * Cg parameters. Group norm of channels_last data passes x as the (N, S, C)
array it is in memory instead, read in place by the channels-last kernels
(``_engine.norm_forward_nhwc``/``norm_backward_nhwc``); its statistics come
one per (sample, group), in the rows' order.

- ``norm_forward``: output, and each row's float64 mean, ``rstd`` (1 /
  sqrt(var + eps), what the backward reads) and biased variance (what the
  instance norm's running statistics take);
- ``norm_backward``: the closed-form dx and the float64 dweight, dbias
  (the fused kernel). Its own gradient (second derivatives) is the
  vector-Jacobian product of the same closed form written in torch
  operations (:func:`closed_form_backward`), so any order differentiates.

Both are ``torch.library.custom_op`` operators with fake implementations and
autograd formulas, so ``torch.compile`` traces them as single nodes.
``EagerNorm`` runs the same implementations without ``torch.library``'s
per-call dispatch for plain eager calls (``run_norm`` chooses). The
operators take float32 or float64 tensors; the functional entry points
(``functional.layer_norm`` ...) check torch's rules once and compute
float16/bfloat16 in float32.
"""
from typing import Any, Optional

import torch
from torch import Tensor

from .. import _engine
from . import _outputs
from ._checks import dispatcher_visible
from ._layout import F64, kernel_threads

__all__ = ["EagerNorm", "closed_form_backward", "norm_backward", "norm_forward", "run_norm"]


def _check_op(x: Any, weight: Any, bias: Any, groups: int, spatial: int) -> int:
    # the operators are public: their own arguments' consistency, named;
    # returns P, the parameters per sample
    if x.dtype not in (torch.float32, torch.float64) or x.dim() not in (2, 3):
        raise TypeError(f"cybatchnorm.norm: x must be a 2-D (rows) or 3-D (N, S, C) float32 "
                        f"or float64 tensor, got {x.dim()}-D {x.dtype}")
    if x.dim() == 3:
        N, S, C = x.shape
        if groups < 1 or C % groups or spatial != S:
            raise ValueError(f"cybatchnorm.norm: for x (N, S, C) = {tuple(x.shape)}, groups "
                             f"({groups}) must divide C and spatial ({spatial}) be S")
        P = int(C)
    else:
        R, M = x.shape
        if groups < 1 or spatial < 1 or R % groups or M % spatial:
            raise ValueError(f"cybatchnorm.norm: groups ({groups}) must divide x's rows ({R}) "
                             f"and spatial ({spatial}) its columns ({M})")
        P = int(groups * (M // spatial))
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (tuple(t.shape) != (P,) or t.dtype != x.dtype):
            raise ValueError(f"cybatchnorm.norm: {name} must be ({P},) of x's dtype "
                             f"{x.dtype}, got {tuple(t.shape)} of {t.dtype}")
    return P


def _rows(x: Any, groups: int) -> int:
    # the statistics' count: x's rows, or (N, S, C): N * groups
    return int(x.shape[0] * groups) if x.dim() == 3 else int(x.shape[0])


def _empty(x: Tensor) -> Tensor:
    # a contiguous output of x's shape and dtype: from the drop-in's pool
    # when large (fresh memory faults on every page of every call)
    shape = tuple(x.shape)
    stride, n = [], 1
    for size in reversed(shape):
        stride.append(n)
        n *= max(int(size), 1)
    return _outputs.empty_strided(shape, tuple(reversed(stride)), x.dtype,
                                  x.numel() * x.element_size())


def _param(t: Optional[Tensor], P: int, dtype: torch.dtype, fill: float) -> Any:
    # a (P,) parameter as the kernels read it (a view when it is contiguous)
    if t is None:
        return torch.full((P,), fill, dtype=dtype).numpy()
    return t.detach().contiguous().numpy()


# ------------------------------------------------------------------ forward

def _forward_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], groups: int,
                  spatial: int, eps: float,
                  num_threads: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalize each row of x (R, M), or each sample's groups of x (N, S,
    C); returns ``(out, mean, rstd, var)``, out contiguous in x's shape and
    dtype, the others (R,) or (N * groups,) float64."""
    P = _check_op(x, weight, bias, groups, spatial)
    R = _rows(x, groups)
    out = _empty(x)
    if x.numel() == 0:
        return out, torch.zeros(R, dtype=F64), torch.zeros(R, dtype=F64), \
            torch.zeros(R, dtype=F64)
    xa = x.detach().contiguous().numpy()
    gamma, beta = _param(weight, P, x.dtype, 1.0), _param(bias, P, x.dtype, 0.0)
    nt = kernel_threads(num_threads, x.numel())
    if x.dim() == 3:
        mean, var, rstd = _engine.norm_forward_nhwc(xa, gamma, beta, eps, groups, out.numpy(),
                                                    nt)
    else:
        # float32 output in float32 where exact enough, as a minimal cache's
        mean, var, rstd = _engine.norm_forward(xa, gamma, beta, eps, groups, spatial,
                                               out.numpy(), nt, fast=True)
    return out, torch.from_numpy(mean), torch.from_numpy(rstd), torch.from_numpy(var)


norm_forward = torch.library.custom_op("cybatchnorm::norm_forward", _forward_impl,
                                       mutates_args=())


@norm_forward.register_fake
def _forward_fake(x: Any, weight: Any, bias: Any, groups: Any, spatial: Any, eps: Any,
                  num_threads: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_op(x, weight, bias, groups, spatial)
    out = x.new_empty(x.shape)
    return (out,) + tuple(x.new_empty((_rows(x, groups),), dtype=F64) for _ in range(3))


def _save(ctx: Any, x: Any, weight: Any, bias: Any, mean: Any, rstd: Any, groups: Any,
          spatial: Any, eps: Any, num_threads: Any) -> None:
    # what the gradient of a forward needs, for the operator and EagerNorm alike
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.args = (groups, spatial, eps, num_threads)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _input_grads(ctx: Any, dout: Any, backward: Any) -> tuple[Any, Any, Any]:
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = backward(dout, x, weight, mean, rstd, *ctx.args)
    need = ctx.needs_input_grad
    dweight = dweight.to(weight.dtype) if weight is not None and need[1] else None
    dbias = dbias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and need[2] else None
    return dx if need[0] else None, dweight, dbias


def _forward_setup(ctx: Any, inputs: Any, output: Any) -> None:
    x, weight, bias, groups, spatial, eps, num_threads = inputs
    _, mean, rstd, var = output
    _save(ctx, x, weight, bias, mean, rstd, groups, spatial, eps, num_threads)
    ctx.mark_non_differentiable(mean, rstd, var)


def _forward_grad(ctx: Any, dout: Any, _dmean: Any, _drstd: Any, _dvar: Any) -> tuple[Any, ...]:
    return _input_grads(ctx, dout, norm_backward) + (None,) * 4


# ----------------------------------------------------------------- backward

def _backward_impl(dout: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                   rstd: Tensor, groups: int, spatial: int, eps: float,
                   num_threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)`` of :func:`norm_forward`: dx in x's
    shape and dtype (contiguous), dweight and dbias (P,) float64. ``eps`` is
    not read here (the statistics are the forward's); the gradient of this
    operator recomputes them."""
    P = _check_op(x, weight, None, groups, spatial)
    dx = _empty(x)
    if x.numel() == 0:
        return dx, torch.zeros(P, dtype=F64), torch.zeros(P, dtype=F64)
    gt = dout.detach()
    g = (gt if gt.dtype == x.dtype else gt.to(x.dtype)).contiguous().numpy()
    xa, gamma = x.detach().contiguous().numpy(), _param(weight, P, x.dtype, 1.0)
    nt = kernel_threads(num_threads, x.numel())
    if x.dim() == 3:
        dgamma, dbeta = _engine.norm_backward_nhwc(g, xa, mean.numpy(), rstd.numpy(), gamma,
                                                   groups, dx.numpy(), nt)
    else:
        dgamma, dbeta = _engine.norm_backward(g, xa, mean.numpy(), rstd.numpy(), gamma,
                                              groups, spatial, dx.numpy(), nt, fast=True)
    return dx, torch.from_numpy(dgamma), torch.from_numpy(dbeta)


norm_backward = torch.library.custom_op("cybatchnorm::norm_backward", _backward_impl,
                                        mutates_args=())


@norm_backward.register_fake
def _backward_fake(dout: Any, x: Any, weight: Any, mean: Any, rstd: Any, groups: Any,
                   spatial: Any, eps: Any, num_threads: Any) -> tuple[Tensor, Tensor, Tensor]:
    P = _check_op(x, weight, None, groups, spatial)
    return x.new_empty(x.shape), x.new_empty((P,), dtype=F64), x.new_empty((P,), dtype=F64)


def closed_form_backward(dout: Tensor, x: Tensor, weight: Optional[Tensor], groups: int,
                         spatial: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`norm_backward` written in differentiable torch operations
    (float64, the statistics recomputed from x): what the operator's own
    gradient differentiates. Returns dx (x's dtype) and float64 dweight, dbias (P,).

    With x (R, M) as (R / G, G, Cg, S) (or (N, S, C) as (N, G, Cg, S)) and
    dxhat = dout * gamma:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), the means
    over each row's Cg * S values; dgamma = sum(dout * xhat) and dbeta =
    sum(dout) over the R / G samples and S.
    """
    G, S = groups, spatial
    nhwc = x.dim() == 3
    if nhwc:                       # (N, S, C): the same formula on its (N, C, S) transpose
        N, _, C = x.shape
        x4 = x.to(F64).transpose(1, 2).reshape(N, G, C // G, S)
        d4 = dout.to(F64).transpose(1, 2).reshape(x4.shape)
    else:
        R, M = x.shape
        x4 = x.to(F64).reshape(R // G, G, M // S, S)
        d4 = dout.to(F64).reshape(x4.shape)
    Cg = x4.shape[2]
    mu = x4.mean(dim=(2, 3), keepdim=True)
    xmu = x4 - mu
    var = (xmu * xmu).mean(dim=(2, 3), keepdim=True)
    rstd = (var + eps).rsqrt()
    xhat = xmu * rstd
    gamma = torch.ones(G, Cg, 1, dtype=F64) if weight is None else \
        weight.to(F64).reshape(G, Cg, 1)
    dxhat = d4 * gamma
    dx = rstd * (dxhat - dxhat.mean(dim=(2, 3), keepdim=True)
                 - xhat * (dxhat * xhat).mean(dim=(2, 3), keepdim=True))
    dgamma = (d4 * xhat).sum(dim=(0, 3)).reshape(G * Cg)
    dbeta = d4.sum(dim=(0, 3)).reshape(G * Cg)
    if nhwc:
        return dx.to(x.dtype).reshape(N, C, S).transpose(1, 2), dgamma, dbeta
    return dx.to(x.dtype).reshape(x.shape), dgamma, dbeta


def _backward_setup(ctx: Any, inputs: Any, output: Any) -> None:
    dout, x, weight, _mean, _rstd, groups, spatial, eps, _nt = inputs
    ctx.save_for_backward(dout, x, weight)
    ctx.args = (groups, spatial, eps)


def _backward_grad(ctx: Any, ggx: Any, ggw: Any, ggb: Any) -> tuple[Any, ...]:
    dout, x, weight = ctx.saved_tensors
    groups, spatial, eps = ctx.args
    primals = (dout, x) + (() if weight is None else (weight,))

    def fn(*p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return closed_form_backward(p[0], p[1], p[2] if len(p) > 2 else None, groups,
                                    spatial, eps)
    outs, vjp = torch.func.vjp(fn, *primals)[:2]
    cot = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype).reshape(o.shape)
                for o, g in zip(outs, (ggx, ggw, ggb)))
    grads = vjp(cot)
    need = ctx.needs_input_grad
    ddout, dx = grads[0] if need[0] else None, grads[1] if need[1] else None
    dw = grads[2] if weight is not None and need[2] else None
    return (ddout, dx, dw) + (None,) * 6


norm_forward.register_autograd(_forward_grad, setup_context=_forward_setup)
norm_backward.register_autograd(_backward_grad, setup_context=_backward_setup)


# ------------------------------------------------------------ eager calls

class EagerNorm(torch.autograd.Function):
    """The operators' implementations and formulas without the per-call cost
    of ``torch.library``'s Python dispatch, for eager calls only (as
    ``_ops.EagerBatchNorm``). Returns ``(out, mean, rstd, var)``; when a
    graph of the backward is being built (``create_graph=True``), the
    backward runs the differentiable ``norm_backward`` operator."""

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, groups: Any, spatial: Any, eps: Any,
                num_threads: Any) -> Any:
        out, mean, rstd, var = _forward_impl(x, weight, bias, groups, spatial, eps, num_threads)
        _save(ctx, x, weight, bias, mean, rstd, groups, spatial, eps, num_threads)
        ctx.mark_non_differentiable(mean, rstd, var)
        return out, mean, rstd, var

    @staticmethod
    def backward(ctx: Any, dout: Any, *_stats: Any) -> tuple[Any, ...]:
        backward = norm_backward if torch.is_grad_enabled() else _backward_impl
        return _input_grads(ctx, dout, backward) + (None,) * 4


def run_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
             view: tuple[int, ...], groups: int, spatial: int, eps: float, num_threads: int,
             nhwc: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out, mean, rstd, var)`` of x (any shape and layout) seen as
    ``view``: (R, M) rows, or with ``nhwc`` (x a channels_last (N, C,
    *spatial) tensor) the (N, S, C) samples it holds in memory, read in place.
    out comes in x's shape and dtype (and, with ``nhwc``, its memory format),
    the others one per row or (sample, group). Weight and bias (any shape)
    hold the parameters. float16/bfloat16 are computed in float32 (each
    value rounded once to float32 by the kernels, then to x's dtype; the
    casts are autograd's, so each gradient comes back in its tensor's
    dtype). The registered operator when something watches torch's
    dispatcher, else :class:`EagerNorm`; a non-contiguous x is copied
    (differentiably) first."""
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):
        x = x.float()
        weight = None if weight is None else weight.float()
        bias = None if bias is None else bias.float()
    x2 = x.movedim(1, -1).reshape(view) if nhwc else x.reshape(view)
    w = None if weight is None else weight.reshape(-1)
    b = None if bias is None else bias.reshape(-1)
    if dispatcher_visible(x, weight, bias):
        res = norm_forward(x2, w, b, groups, spatial, eps, num_threads)
    else:
        res = EagerNorm.apply(x2, w, b, groups, spatial, eps,  # type: ignore[no-untyped-call]
                              num_threads)
    out = res[0].reshape(x.movedim(1, -1).shape).movedim(-1, 1) if nhwc else res[0].view(x.shape)
    return (out if out.dtype == dtype else out.to(dtype)), res[1], res[2], res[3]
