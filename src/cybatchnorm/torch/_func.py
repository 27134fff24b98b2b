"""Batch norm under ``torch.func`` transforms and forward-mode AD.

Four ``torch.autograd.Function`` classes over *stacked* batches: x of shape
(B, N, C, *spatial) holds B independent batch norms, parameters and
statistics are (B, C). Each has ``setup_context``, a ``backward``, a ``jvp``
and a ``vmap`` rule, so ``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``jvp``,
``hessian``, ``vmap``, their compositions and ``torch.autograd.forward_ad``
all reach the compiled kernels:

- ``_Forward``: (x, weight, bias) -> out (and the statistics); backward
  ``_Backward``, jvp ``_Jvp``.
- ``_Backward``: (dout, x, weight) -> dx, dweight, dbias (the closed form);
  backward ``_DoubleBackward``, jvp ``_Backward`` + ``_DoubleBackward``.
- ``_Jvp``: (tangents of x, weight, bias; x, weight) -> the tangent of out;
  backward ``_Backward`` + ``_DoubleBackward``, jvp ``_Jvp`` + ``_SecondJvp``.
- ``_DoubleBackward``: (ggx, ggw, ggb; dout, x, weight) -> ddout, dx,
  dweight; backward and jvp raise (third derivatives).
- ``_SecondJvp``: the forward's second derivative along two directions
  (forward over forward); backward and jvp raise.

Why the table closes: the double backward's ``ddout`` is the forward's
Jacobian-vector product (``_Jvp`` runs that half of its kernel), and the
Jacobian of ``_Backward`` in x and weight is the Hessian of ``<dout, out>``,
symmetric, which the double backward applies (the docs' "Forward mode").

A vmap rule moves each batched argument's vmapped dimension to the front,
merges it with B (an unbatched argument is expanded), applies the same
Function once over the B' * B batches (one compiled call; outer transforms
see that call) and splits the result: batch i gets the bits it gets alone.
The only transforms that raise are third derivatives, with a message
saying what works.

:func:`batch_norm_transformed` is what ``_call.run_batch_norm`` runs while a
transform or forward-mode AD is active; :func:`backward_transformed` is the
differentiable backward the eager paths use when the backward itself is
differentiated or vmapped (``create_graph=True``, batched gradients).
"""
from typing import Any

import torch
from torch import Tensor

from .. import _engine
from ._checks import check_batch_norm, legacy_vmap, without_memory
from ._layout import (
    F64,
    channel_array,
    compute_dtype,
    in_layout,
    kernel_threads,
    layout_of,
    spatial_size,
)

__all__ = ["backward_transformed", "batch_norm_transformed"]

# ---------------------------------------------------- the stacked kernels


def _prepare(t: Tensor, dtype: torch.dtype, layout: str | None = None) -> tuple[Tensor, str]:
    # a stacked tensor (channels on axis 2) in the computation dtype and a
    # layout the kernels read in place (``layout``, or t's own when it has
    # one, else contiguous)
    if t.dtype != dtype:
        t = t.to(dtype)              # keeps the memory format
    want = layout or layout_of(t, 2) or "ncs"
    return in_layout(t, want, 2), want


def _dims(t: Tensor, layout: str) -> tuple[int, int, int, int]:
    # (B, N, C, S) as the kernels read the stacked tensor in ``layout``
    B, N, C, S = t.shape[0], t.shape[1], t.shape[2], spatial_size(t[0])
    return (B, N, C, S) if layout == "ncs" else (B, N * S, C, 1)


def _view4(t: Tensor, layout: str) -> Any:
    # the kernels' (B, N, C, S) numpy view of a tensor dense in ``layout``
    B, N, C, S = _dims(t, layout)
    if layout == "ncs":
        return t.reshape(B, N, C, S).numpy()
    return t.movedim(2, -1).reshape(B, N, C, 1).numpy()


def _rows(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # a (B, C) parameter or statistic as contiguous rows of ``dtype`` (or None)
    if t is None:
        return None
    return t.to(dtype).contiguous() if t.dtype != dtype or not t.is_contiguous() else t


def _rows64(t: Tensor | None, like: Tensor, fill: float) -> Any:
    # a (B, C) float64 numpy array shaped like ``like`` (``fill`` where t is None)
    return channel_array(t, tuple(like.shape), F64, fill)


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _threads(nt: int, t: Tensor) -> int:
    return kernel_threads(nt, t.numel())


def forward_stacked(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    mean_in: Tensor | None, var_in: Tensor | None, training: bool,
                    eps: float, nt: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch norm of each of the B stacked batches of ``x`` (B, N, C,
    *spatial): ``(out, mean, invstd, m2)``, the statistics (B, C) float64.
    ``training`` normalizes with each batch's statistics, otherwise with
    ``mean_in`` and ``var_in`` (B, C). One compiled call
    (``_fused.forward_batches``); nothing is modified."""
    if _per_entry_needed(x, weight, bias, mean_in, var_in):
        outs: tuple[Tensor, Tensor, Tensor, Tensor] = _per_entry(
            "batch_norm_forward", x.shape[0], (x, weight, bias, mean_in, var_in),
            (training, eps, nt))
        return outs
    cdt = compute_dtype(x)
    xc, layout = _prepare(x, cdt)
    out = torch.empty_like(xc)            # dense in xc's layout
    B, N, C, S = _dims(xc, layout)
    stats = torch.zeros((B, 3, C), dtype=F64)
    # kept in locals: the kernel reads their memory by address
    gamma, beta = _rows(weight, cdt), _rows(bias, cdt)
    mean, var = (None, None) if training else (_rows(mean_in, cdt), _rows(var_in, cdt))
    if xc.numel():
        _engine.forward_batches(
            xc.data_ptr(), out.data_ptr(), B, N, C, S, cdt == F64, _ptr(gamma), _ptr(beta), eps,
            _ptr(mean), _ptr(var), training, stats.data_ptr(),
            _engine.row_chunks(N, C, S, xc.element_size()), _threads(nt, xc))
    return out.to(x.dtype), stats[:, 0], stats[:, 1], stats[:, 2]


def backward_stacked(dout: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                     invstd: Tensor, training: bool, nt: int) -> tuple[Tensor, Tensor, Tensor]:
    """The closed-form ``(dx, dweight, dbias)`` of each stacked batch, the
    parameters' gradients (B, C) in the computation dtype. One compiled call
    (``_fused.backward_batches``)."""
    if _per_entry_needed(dout, x, weight, mean, invstd):
        grads: tuple[Tensor, Tensor, Tensor] = _per_entry(
            "batch_norm_backward", x.shape[0], (dout, x, weight, mean, invstd), (training, nt))
        return grads
    cdt = compute_dtype(x)
    xc, layout = _prepare(x, cdt)
    g, _ = _prepare(dout, cdt, layout)
    dx = torch.empty_like(xc)
    B, N, C, S = _dims(xc, layout)
    dgamma, dbeta = torch.zeros((B, C), dtype=cdt), torch.zeros((B, C), dtype=cdt)
    # kept in locals: the kernel reads their memory by address
    m, r, gamma = _rows(mean, F64), _rows(invstd, F64), _rows(weight, cdt)
    if xc.numel():
        _engine.backward_batches(
            g.data_ptr(), xc.data_ptr(), dx.data_ptr(), B, N, C, S, cdt == F64, _ptr(m),
            _ptr(r), _ptr(gamma), dgamma.data_ptr(), dbeta.data_ptr(), training,
            _engine.row_chunks(N, C, S, xc.element_size()), _threads(nt, xc))
    return dx.to(x.dtype), dgamma, dbeta


def double_backward_stacked(ggx: Tensor | None, ggw: Tensor | None,
                            ggb: Tensor | None, dout: Tensor, x: Tensor,
                            weight: Tensor | None, mean: Tensor, invstd: Tensor,
                            training: bool, nt: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(ddout, dx, dweight)``: the gradients of ``<ggx, dx> + <ggw, dweight>
    + <ggb, dbias>`` (None: zero) with respect to dout, x and weight, for
    each stacked batch; dweight (B, C) float64. One compiled call
    (``_fused.double_backward``)."""
    if _per_entry_needed(ggx, ggw, ggb, dout, x, weight, mean, invstd):
        second: tuple[Tensor, Tensor, Tensor] = _per_entry(
            "batch_norm_double_backward", x.shape[0],
            (ggx, ggw, ggb, dout, x, weight, mean, invstd), (training, nt))
        return second
    cdt = compute_dtype(x)
    xc, layout = _prepare(x, cdt)
    g, _ = _prepare(dout, cdt, layout)
    a = None if ggx is None else _prepare(ggx, cdt, layout)[0]
    ddout, dx = torch.empty_like(xc), torch.empty_like(xc)
    dgamma = torch.zeros(tuple(mean.shape), dtype=F64)
    if xc.numel():
        dgamma = torch.from_numpy(_engine.double_backward_batches(
            None if a is None else _view4(a, layout), _view4(g, layout), _view4(xc, layout),
            _rows64(mean, mean, 0.0), _rows64(invstd, mean, 0.0), _rows64(weight, mean, 1.0),
            _rows64(ggw, mean, 0.0), _rows64(ggb, mean, 0.0), training, _view4(ddout, layout),
            _view4(dx, layout), _threads(nt, xc)))
    return ddout.to(dout.dtype), dx.to(x.dtype), dgamma


def jvp_stacked(tx: Tensor | None, tw: Tensor | None, tb: Tensor | None, x: Tensor,
                weight: Tensor | None, mean: Tensor, invstd: Tensor, training: bool,
                nt: int) -> Tensor:
    """The tangent of each stacked batch's output for tangents ``tx``, ``tw``,
    ``tb`` of x, weight and bias (None: zero): the double backward's ddout,
    computed alone (``_fused.double_backward`` in its ``jvp`` mode, one call)."""
    if _per_entry_needed(tx, tw, tb, x, weight, mean, invstd):
        tout: Tensor = _per_entry("batch_norm_jvp", x.shape[0],
                                  (tx, tw, tb, x, weight, mean, invstd), (training, nt))[0]
        return tout
    return jvp_kernel(tx, tw, tb, x, weight, mean, invstd, training, nt)


def jvp_kernel(tx: Tensor | None, tw: Tensor | None, tb: Tensor | None, x: Tensor,
               weight: Tensor | None, mean: Tensor, invstd: Tensor, training: bool,
               nt: int) -> Tensor:
    """:func:`jvp_stacked` on tensors with memory (the ``batch_norm_jvp``
    operator's implementation)."""
    cdt = compute_dtype(x)
    xc, layout = _prepare(x, cdt)
    a = None if tx is None else _prepare(tx, cdt, layout)[0]
    tout = torch.empty_like(xc)
    if xc.numel():
        _engine.jvp_batches(
            None if a is None else _view4(a, layout), _view4(xc, layout),
            _rows64(mean, mean, 0.0), _rows64(invstd, mean, 0.0), _rows64(weight, mean, 1.0),
            _rows64(tw, mean, 0.0), _rows64(tb, mean, 0.0), training, _view4(tout, layout),
            _threads(nt, xc))
    return tout.to(x.dtype)


def _per_entry_needed(*tensors: Any) -> bool:
    # whether the kernels cannot read these tensors' memory: under torch's
    # legacy vmap (batched tensors without memory), while torch.compile
    # traces (its transforms run these functions on fake tensors), or for a
    # tensor subclass or another device
    return torch.compiler.is_compiling() or legacy_vmap() or without_memory(*tensors)


def _per_entry(op: str, B: int, tensors: tuple[Any, ...], rest: tuple[Any, ...]) -> Any:
    # the registered operator ``op`` on each stacked batch, where the
    # kernels cannot read the memory (``_per_entry_needed``): the legacy
    # vmap's fallback runs it once per batch entry, torch.compile traces it
    from . import _ops
    fn = getattr(_ops, op)
    rows = [fn(*(None if t is None else t[i] for t in tensors), *rest) for i in range(B)]
    outs = rows[0] if isinstance(rows[0], tuple) else (rows[0],)
    return tuple(torch.stack([r[k] if isinstance(r, tuple) else r for r in rows])
                 for k in range(len(outs)))


# ------------------------------------------------------------ vmap rules

def _merge(t: Any, dim: int | None, size: int) -> Any:
    # a stacked argument with the vmapped dimension ``dim`` (None: not
    # batched, expanded) merged into its leading B: (size * B, ...)
    if not isinstance(t, Tensor):
        return t
    t = t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(size * t.shape[1], *t.shape[2:])


def _split(t: Any, size: int) -> Any:
    # the inverse of _merge for a result: (size, B, ...)
    return None if t is None else t.reshape(size, t.shape[0] // size, *t.shape[1:])


def _vmapped(fn: Any, info: Any, in_dims: Any, args: tuple[Any, ...]) -> tuple[Any, Any]:
    # a vmap rule: ``fn`` once over the merged batches, results split
    size = info.batch_size
    outs = fn(*(_merge(a, d, size) for a, d in zip(args, in_dims)))
    if isinstance(outs, tuple):
        return tuple(_split(o, size) for o in outs), tuple(
            None if o is None else 0 for o in outs)
    return _split(outs, size), 0


_THIRD = ("cybatchnorm.torch: {} of batch norm is not implemented: its operators "
          "differentiate to second order in any mix of reverse and forward mode "
          "(torch.func.hessian, jacfwd(jacrev(...)), jacrev(jacrev(...)), jacfwd(jacfwd(...)), "
          "jvp of grad, grad of jvp), not further")


class _Forward(torch.autograd.Function):
    """``forward_stacked`` as a differentiable, vmappable function of
    (x, weight, bias); the running statistics (eval mode) are constants."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                mean_in: Tensor | None, var_in: Tensor | None, training: bool, eps: float,
                nt: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return forward_stacked(x, weight, bias, mean_in, var_in, training, eps, nt)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        x, weight, bias, _, _, training, _, nt = inputs
        _, mean, invstd, m2 = output
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.save_for_forward(x, weight, mean, invstd)
        ctx.training, ctx.nt = training, nt
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, invstd, m2)

    @staticmethod
    def backward(ctx: Any, dout: Tensor, *_: Any) -> tuple[Any, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dweight, dbias = _Backward_apply(dout, x, weight, mean, invstd, ctx.training,
                                             ctx.nt)
        need = ctx.needs_input_grad
        return (dx if need[0] else None,
                dweight.to(weight.dtype) if weight is not None and need[1] else None,
                dbias.to(ctx.bias_dtype) if ctx.bias_dtype is not None and need[2] else None,
                None, None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, tx: Any, tw: Any, tb: Any, *_: Any) -> tuple[Any, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        tout = _Jvp_apply(tx, tw, tb, x, weight, mean, invstd, ctx.training, ctx.nt)
        return tout, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> tuple[Any, Any]:
        return _vmapped(_Forward.apply, info, in_dims, args)


class _Backward(torch.autograd.Function):
    """``backward_stacked`` as a differentiable, vmappable function of
    (dout, x, weight); mean and invstd are the forward's (their dependence
    on x is in the formulas)."""

    @staticmethod
    def forward(dout: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                invstd: Tensor, training: bool, nt: int) -> tuple[Tensor, Tensor, Tensor]:
        return backward_stacked(dout, x, weight, mean, invstd, training, nt)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        dout, x, weight, mean, invstd, training, nt = inputs
        ctx.save_for_backward(dout, x, weight, mean, invstd)
        ctx.save_for_forward(dout, x, weight, mean, invstd)
        ctx.training, ctx.nt = training, nt

    @staticmethod
    def backward(ctx: Any, ggx: Any, ggw: Any, ggb: Any) -> tuple[Any, ...]:
        dout, x, weight, mean, invstd = ctx.saved_tensors
        ddout, dx, dweight = _DoubleBackward_apply(ggx, ggw, ggb, dout, x, weight, mean, invstd,
                                                   ctx.training, ctx.nt)
        need = ctx.needs_input_grad
        return (ddout if need[0] else None, dx if need[1] else None,
                dweight.to(weight.dtype) if weight is not None and need[2] else None,
                None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, tdout: Any, tx: Any, tw: Any, *_: Any) -> tuple[Any, ...]:
        # linear in dout: the backward of the tangent; in (x, weight): the
        # symmetric Hessian of <dout, out>, which the double backward applies
        dout, x, weight, mean, invstd = ctx.saved_tensors
        parts = []
        if tdout is not None:
            parts.append(_Backward_apply(tdout, x, weight, mean, invstd, ctx.training, ctx.nt))
        if tx is not None or tw is not None:
            _, hx, hw = _DoubleBackward_apply(tx, tw, None, dout, x, weight, mean, invstd,
                                              ctx.training, ctx.nt)
            parts.append((hx, hw.to(compute_dtype(x)), None))
        return tuple(_sum(p[i] for p in parts) for i in range(3))

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> tuple[Any, Any]:
        return _vmapped(_Backward.apply, info, in_dims, args)


class _Jvp(torch.autograd.Function):
    """``jvp_stacked`` as a differentiable, vmappable function of the
    tangents and (x, weight): reverse mode over forward mode."""

    @staticmethod
    def forward(tx: Any, tw: Any, tb: Any, x: Tensor, weight: Tensor | None,
                mean: Tensor, invstd: Tensor, training: bool, nt: int) -> Tensor:
        return jvp_stacked(tx, tw, tb, x, weight, mean, invstd, training, nt)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        tx, tw, tb, x, weight, mean, invstd, training, nt = inputs
        ctx.save_for_backward(tx, tw, tb, x, weight, mean, invstd)
        ctx.save_for_forward(tx, tw, tb, x, weight, mean, invstd)
        ctx.training, ctx.nt = training, nt

    @staticmethod
    def backward(ctx: Any, v: Tensor) -> tuple[Any, ...]:
        # tout = J t, linear in t: its transpose is the backward of v; in
        # (x, weight) the double backward with gg = t and dout = v
        tx, tw, tb, x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = gw = gb = dx = dweight = None
        if any(need[:3]):
            gx, gw, gb = _Backward_apply(v, x, weight, mean, invstd, ctx.training, ctx.nt)
        if need[3] or need[4]:
            _, dx, dweight = _DoubleBackward_apply(tx, tw, tb, v, x, weight, mean, invstd,
                                                   ctx.training, ctx.nt)
        return (gx if need[0] else None, _like(gw, tw) if need[1] else None,
                _like(gb, tb) if need[2] else None, dx if need[3] else None,
                _like(dweight, weight) if need[4] else None, None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, stx: Any, stw: Any, stb: Any, sx: Any, sw: Any, *_: Any) -> Any:
        # forward over forward: linear in the tangents t (the JVP of their
        # tangents), and in (x, weight) the second derivative of the forward
        # along t and s (``_SecondJvp``)
        tx, tw, tb, x, weight, mean, invstd = ctx.saved_tensors
        parts = []
        if stx is not None or stw is not None or stb is not None:
            parts.append(_Jvp_apply(stx, stw, stb, x, weight, mean, invstd, ctx.training,
                                    ctx.nt))
        if sx is not None or sw is not None:
            parts.append(_SecondJvp_apply(tx, tw, sx, sw, x, weight, mean, invstd,
                                          ctx.training))
        return _sum(parts)

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> tuple[Any, Any]:
        return _vmapped(_Jvp.apply, info, in_dims, args)


def second_jvp_stacked(tx: Tensor | None, tw: Tensor | None, sx: Tensor | None,
                       sw: Tensor | None, x: Tensor, weight: Tensor | None, mean: Tensor,
                       invstd: Tensor, training: bool) -> Tensor:
    """The forward's second derivative along (tx, tw) and (sx, sw), the
    tangents of (x, weight) (None: zero), for each stacked batch: the
    derivative of ``g r P(tx) + tw xhat + tb`` in the direction (sx, sw),

        sw r P(tx) + tw r P(sx)
        - g r^2 (mean(xhat sx) P(tx) + mean(xhat tx) P(sx) + xhat mean(tx P(sx)))

    (eval mode: ``sw r tx + tw r sx``), in float64 torch operations (a
    handful of sums per channel; used only by forward over forward)."""
    dims = [1] + list(range(3, x.dim()))
    shape = (x.shape[0], 1, x.shape[2]) + (1,) * (x.dim() - 3)

    def chan(t: Tensor | None, fill: float) -> Tensor:
        return torch.full(shape, fill, dtype=F64) if t is None else t.to(F64).reshape(shape)

    def avg(v: Tensor) -> Tensor:
        return v.mean(dims, keepdim=True)
    r, g = chan(invstd, 0.0), chan(weight, 1.0)
    xhat = (x.to(F64) - chan(mean, 0.0)) * r
    a = None if tx is None else tx.to(F64)
    c = None if sx is None else sx.to(F64)
    if training:
        def P(v: Tensor) -> Tensor:
            return v - avg(v) - xhat * avg(xhat * v)
        pa = None if a is None else P(a)
        pc = None if c is None else P(c)
    else:
        pa, pc = a, c
    out = torch.zeros(x.shape, dtype=F64)
    if pa is not None and sw is not None:
        out = out + chan(sw, 0.0) * r * pa
    if pc is not None and tw is not None:
        out = out + chan(tw, 0.0) * r * pc
    if training and a is not None and c is not None and pa is not None and pc is not None:
        out = out - g * r * r * (avg(xhat * c) * pa + avg(xhat * a) * pc + xhat * avg(a * pc))
    return out.to(x.dtype)


class _SecondJvp(torch.autograd.Function):
    """``second_jvp_stacked``, vmappable; not differentiable again (its
    torch operations treat mean and invstd as constants: a further
    derivative would be wrong, so it raises)."""

    @staticmethod
    def forward(tx: Any, tw: Any, sx: Any, sw: Any, x: Tensor, weight: Tensor | None,
                mean: Tensor, invstd: Tensor, training: bool) -> Tensor:
        return second_jvp_stacked(tx, tw, sx, sw, x, weight, mean, invstd, training)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *_: Any) -> Any:
        raise NotImplementedError(_THIRD.format("a third derivative"))

    @staticmethod
    def jvp(ctx: Any, *_: Any) -> Any:
        raise NotImplementedError(_THIRD.format("a third derivative"))

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> tuple[Any, Any]:
        return _vmapped(_SecondJvp.apply, info, in_dims, args)


class _DoubleBackward(torch.autograd.Function):
    """``double_backward_stacked``, vmappable; not differentiable again."""

    @staticmethod
    def forward(ggx: Any, ggw: Any, ggb: Any, dout: Tensor, x: Tensor,
                weight: Tensor | None, mean: Tensor, invstd: Tensor, training: bool,
                nt: int) -> tuple[Tensor, Tensor, Tensor]:
        return double_backward_stacked(ggx, ggw, ggb, dout, x, weight, mean, invstd, training,
                                       nt)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *_: Any) -> Any:
        raise NotImplementedError(_THIRD.format(
            "a third derivative (a derivative of batch_norm_double_backward)"))

    @staticmethod
    def jvp(ctx: Any, *_: Any) -> Any:
        raise NotImplementedError(_THIRD.format(
            "a third derivative (a derivative of batch_norm_double_backward)"))

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> tuple[Any, Any]:
        return _vmapped(_DoubleBackward.apply, info, in_dims, args)


# Function.apply carries no annotations: typed aliases
_Forward_apply: Any = _Forward.apply
_Backward_apply: Any = _Backward.apply
_Jvp_apply: Any = _Jvp.apply
_DoubleBackward_apply: Any = _DoubleBackward.apply
_SecondJvp_apply: Any = _SecondJvp.apply


def _sum(ts: Any) -> Any:
    total = None
    for t in ts:
        if t is not None:
            total = t if total is None else total + t
    return total


def _like(t: Any, ref: Any) -> Any:
    return None if t is None or ref is None else t.to(ref.dtype)


# ---------------------------------------------------------- entry points

def _stack(t: Any, C: int) -> Any:
    # a (C,) tensor as one stacked row (1, C)
    return None if t is None else t.reshape(1, C)


def batch_norm_transformed(x: Tensor, weight: Any, bias: Any, running_mean: Any,
                           running_var: Any, training: bool, momentum: Any, eps: float,
                           num_threads: int, counter: Any = None) -> Tensor:
    """Batch norm while a torch.func transform or forward-mode AD is active:
    the output through ``_Forward`` (differentiable and vmappable), and in
    training the running statistics updated in place from this batch's
    statistics, as the other paths do. Under ``vmap`` a running statistic
    batched like x (each model its own) is updated per batch; one shared by
    the vmapped batches cannot hold B updates and raises. ``counter`` (a
    module's ``num_batches_tracked``, or None) is incremented once."""
    check_batch_norm(x, weight, bias, running_mean, running_var, training, eps)
    if x.dim() < 2:         # an empty 1-D input (check_batch_norm refused any other)
        return x.clone()
    C = x.shape[1]
    stats = (None, None) if training else (_stack(running_mean, C), _stack(running_var, C))
    out, mean, _, m2 = _Forward_apply(x.unsqueeze(0), _stack(weight, C), _stack(bias, C),
                                      stats[0], stats[1], training, eps, num_threads)
    if training and x.numel():
        _update_running(running_mean, running_var, mean[0], m2[0],
                        x.shape[0] * spatial_size(x), momentum)
    if counter is not None:
        if torch._C._functorch.is_functorch_wrapped_tensor(counter):
            counter.add_(1)
        else:
            _ = torch._C._DisableFuncTorch()     # a captured buffer (see _update_running)
            counter.add_(1)
            del _
    return out[0]  # type: ignore[no-any-return]


_SHARED = ("cybatchnorm.torch: {name} is shared by the batches torch.func.vmap maps over, "
           "and a training step would update it once per batch. Give each batch its own: "
           "stack the buffers (torch.func.stack_module_state) and map over them with "
           "torch.func.functional_call and in_dims, or use track_running_stats=False or "
           "eval mode (the running statistics then are not updated)")


def _unwrapped(t: Tensor, name: str) -> Tensor:
    # t without the wrappers of the active transforms (what a captured
    # running statistic is updated from); a vmap's batched value cannot
    # update one shared statistic
    f = torch._C._functorch
    while f.is_functorch_wrapped_tensor(t):
        if f.is_batchedtensor(t):
            raise RuntimeError(_SHARED.format(name=name))
        t = f.get_unwrapped(t)
    return t


def _update_running(running_mean: Any, running_var: Any, mean: Tensor, m2: Tensor,
                    count: int, momentum: Any) -> None:
    # _ops.update_running_stats under a transform. A statistic passed into
    # the transformed function (functional_call's buffers) is wrapped like
    # the batch statistics and updated by torch operations the transforms
    # see, per vmapped batch; one captured from outside (a module's own
    # buffer) is updated once from the batch statistics' values without the
    # transforms' wrappers (they carry no gradient): what one plain forward
    # does, where torch.nn raises
    from ._ops import update_running_stats
    f = torch._C._functorch
    for run, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if run is None:
            continue
        rm, rv = (run, None) if run is running_mean else (None, run)
        if not f.is_functorch_wrapped_tensor(run):
            plain = (_unwrapped(mean, name), _unwrapped(m2, name))
            # plain tensors only, out of the transforms' sight (which would
            # refuse to mutate a captured tensor)
            _ = torch._C._DisableFuncTorch()
            update_running_stats(rm, rv, plain[0], plain[1], count, momentum)
            del _
            continue
        try:
            update_running_stats(rm, rv, mean, m2, count, momentum)
        except RuntimeError as e:
            if "vmap" not in str(e):
                raise
            raise RuntimeError(_SHARED.format(name=name)) from e


def backward_transformed(dout: Tensor, x: Tensor, weight: Any, mean: Tensor, invstd: Tensor,
                         training: bool, num_threads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` of a forward's statistics as a differentiable,
    vmappable computation (``_Backward``): what the eager paths' backward
    runs when it is itself differentiated (``create_graph=True``) or runs
    under a transform (``torch.autograd.grad(..., is_grads_batched=True)``).
    dweight and dbias come in the computation dtype."""
    C = x.shape[1]
    dx, dweight, dbias = _Backward_apply(dout.unsqueeze(0), x.unsqueeze(0), _stack(weight, C),
                                         mean.reshape(1, C), invstd.reshape(1, C), training,
                                         num_threads)
    return dx[0], dweight[0], dbias[0]
