"""PyTorch drop-in: the compiled kernels behind an autograd Function and an nn.Module.

:class:`BatchNorm` takes the place of ``torch.nn.BatchNorm1d`` ((N, C) and
(N, C, L) input) and ``torch.nn.BatchNorm2d`` ((N, C, H, W)): the same
constructor arguments, the same parameters (``weight``, ``bias``) and buffers
(``running_mean``, ``running_var``, ``num_batches_tracked``), so state dicts
move between the two; training and eval modes; running statistics updated
exactly as PyTorch does (unbiased batch variance, ``momentum=None`` for a
cumulative average). The forward runs cybatchnorm's fused forward kernel, the
backward its closed-form backward kernel, through
:class:`BatchNormFunction`; :func:`batch_norm` mirrors
``torch.nn.functional.batch_norm``.

CPU tensors of float32 or float64 only. First derivatives only (the backward
is not itself differentiable). Needs PyTorch (``pip install
cybatchnorm[torch]``); ``import cybatchnorm`` never imports it.
"""
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .api import _forward, batchnorm_backward_fused

__all__ = ["BatchNormFunction", "batch_norm", "BatchNorm"]

_DTYPES = (torch.float32, torch.float64)


def _numpy(name, t):
    """A CPU float tensor as a numpy array sharing its memory (no copy)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got one on {t.device}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")
    return t.detach().numpy()


class BatchNormFunction(torch.autograd.Function):
    """Batch norm as an autograd Function backed by the compiled kernels.

    ``BatchNormFunction.apply(x, weight, bias, running_mean, running_var,
    training, momentum, eps, num_threads)`` with the arguments of
    :func:`batch_norm`. The forward keeps a minimal cache (the statistics and
    a reference to ``x``, saved for backward so that autograd refuses an
    in-place change of ``x``); the backward is the fused closed form.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                num_threads):
        xn = _numpy("x", x)
        if xn.ndim < 2:
            raise ValueError(f"x: expected (N, C) or (N, C, *spatial), got shape {tuple(x.shape)}")
        C = xn.shape[1]
        g = _numpy("weight", weight) if weight is not None else torch.ones(C, dtype=x.dtype).numpy()
        b = _numpy("bias", bias) if bias is not None else torch.zeros(C, dtype=x.dtype).numpy()
        use_batch = training or running_mean is None
        stats = None if use_batch else (_numpy("running_mean", running_mean),
                                        _numpy("running_var", running_var))
        out, cache = _forward(xn, g, b, eps, num_threads, stats, cache="minimal")
        if training and running_mean is not None:
            count = xn.size // C if C else 0
            with torch.no_grad():
                mean = torch.tensor(cache.mu, dtype=running_mean.dtype)
                var = torch.tensor(cache.var, dtype=running_var.dtype) * (count / (count - 1))
                running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1.0 - momentum).add_(var, alpha=momentum)
        ctx.cache = cache
        ctx.save_for_backward(x)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        ctx.saved_tensors   # raises if x was changed in place since the forward
        dx, dgamma, dbeta = batchnorm_backward_fused(_numpy("dout", dout), ctx.cache)
        need = ctx.needs_input_grad
        return (torch.from_numpy(dx) if need[0] else None,
                torch.from_numpy(dgamma) if need[1] else None,
                torch.from_numpy(dbeta) if need[2] else None,
                None, None, None, None, None, None)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_threads=None):
    """``torch.nn.functional.batch_norm`` computed by the compiled kernels.

    Training (or no running statistics): normalize with the batch statistics
    and, when running statistics are given, update them in place with
    ``momentum`` (unbiased batch variance). Otherwise normalize with the
    running statistics. Differentiable with respect to ``x``, ``weight`` and
    ``bias``.
    """
    return BatchNormFunction.apply(x, weight, bias, running_mean, running_var, bool(training),
                                   momentum, eps, num_threads)


class BatchNorm(nn.Module):
    """Drop-in for ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` backed by cybatchnorm.

    Parameters
    ----------
    num_features : int
        C, the channels (axis 1 of the input).
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        ``None``: cumulative average of all batches seen.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
    device, dtype
        As for PyTorch modules (CPU only; float32 or float64).
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import BatchNorm
    >>> layer = BatchNorm(3, dtype=torch.float64)
    >>> x = torch.randn(8, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    >>> layer(x).sum().backward()
    >>> tuple(x.grad.shape), tuple(layer.weight.grad.shape)
    ((8, 3, 4, 4), (3,))
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, num_threads=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.num_threads = num_threads
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features, **kw))
            self.bias = nn.Parameter(torch.zeros(self.num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, **kw))
            self.register_buffer("running_var", torch.ones(self.num_features, **kw))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        """Running mean to zeros, running variance to ones, batch count to 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"x: expected (N, {self.num_features}) or "
                             f"(N, {self.num_features}, *spatial), got shape {tuple(x.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return BatchNormFunction.apply(
            x, self.weight, self.bias,
            self.running_mean if track else None, self.running_var if track else None,
            use_batch, factor, self.eps, self.num_threads)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")
