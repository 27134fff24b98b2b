"""``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` and ``BatchNorm`` (any rank):
``torch.nn.modules.batchnorm._BatchNorm`` subclasses whose forward runs the
compiled kernels through ``torch.ops.cybatchnorm``; ``LayerNorm``,
``GroupNorm`` and ``InstanceNorm1d/2d/3d``: subclasses of torch's modules
whose forward runs the per-sample kernels (``_norm_ops``)."""
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ._call import run_batch_norm
from ._checks import TORCHSCRIPT
from .functional import group_norm, instance_norm, layer_norm, threads_arg

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm"]


def _momentum_of(training: bool, track_running_stats: bool, seen: Any,
                 momentum: float | None) -> tuple[bool, Any]:
    # (whether a forward counts a batch, the running statistics' update
    # factor) as torch's _BatchNorm.forward has them; seen is
    # num_batches_tracked (a tensor, or None)
    track = training and track_running_stats and seen is not None
    factor = 0.0 if momentum is None else momentum
    if track and seen is not None and momentum is None:
        # the cumulative average over the batches seen, this one included
        if torch._C._functorch.is_functorch_wrapped_tensor(seen):
            # a counter passed into a transform (vmap over stacked buffers:
            # one per model): a factor per batch, as a float64 tensor
            return bool(track), 1.0 / (seen + 1).double()
        factor = 1.0 / float(seen + 1)
    return bool(track), float(factor)


class DropInBatchNorm(_BatchNorm):
    """What the four classes share: torch's constructor, parameters, buffers,
    ``reset_parameters``, ``reset_running_stats``, ``extra_repr`` and
    ``_load_from_state_dict`` (inherited), and a forward through
    ``_call.run_batch_norm``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        num_threads: int | None = None,
    ) -> None:
        threads_arg(num_threads)
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device, dtype, bias=bias)
        self.num_threads = num_threads

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError   # each class says which ranks it takes, as torch's do

    def _momentum(self) -> tuple[bool, Any]:
        """(whether this training forward counts a batch, the running
        statistics' update factor), as torch's ``_BatchNorm.forward`` has them."""
        return _momentum_of(self.training, self.track_running_stats, self.num_batches_tracked,
                            self.momentum)

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this first: a clear error instead of a
        # compiler error from deep inside the operators' Python code
        raise NotImplementedError(TORCHSCRIPT.format("torch.jit.script"))

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # (tracing and unsupported transforms are refused by _batch_norm first)
        # torch's _BatchNorm.forward, with each attribute read once (a
        # module's parameters and buffers are found by nn.Module.__getattr__,
        # about half a microsecond each)
        training = self.training
        seen = self.num_batches_tracked
        running_mean, running_var = self.running_mean, self.running_var
        track, factor = _momentum_of(training, self.track_running_stats, seen, self.momentum)
        bn_training = training or (running_mean is None and running_var is None)
        # the buffers are passed only when they are to be updated (training
        # and tracked) or to normalize with (eval mode), as torch does
        use = not training or self.track_running_stats
        num_threads = self.num_threads
        # the counter is incremented once the batch was accepted: a refused
        # input changes nothing
        return run_batch_norm(
            input, self.weight, self.bias, running_mean if use else None,
            running_var if use else None, bn_training, factor, float(self.eps),
            threads_arg(num_threads), seen if track else None)

    def extra_repr(self) -> str:
        text: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return text if self.num_threads is None else f"{text}, num_threads={self.num_threads}"


_DOC = """Drop-in for ``torch.nn.{name}`` backed by cybatchnorm's compiled kernels.

    A ``torch.nn.modules.batchnorm._BatchNorm`` with torch's constructor,
    parameters (``weight``, ``bias``), buffers (``running_mean``,
    ``running_var``, ``num_batches_tracked``), state dicts, errors and
    results; the forward and its first and second derivatives run
    ``torch.ops.cybatchnorm`` operators, which ``torch.compile`` traces without
    graph breaks. Input: {shapes}, on CPU; float32, float64, or float16 and
    bfloat16 (computed in float64, rounded once); contiguous or channels_last.

    Parameters
    ----------
    num_features : int
        C, the channels (axis 1 of the input).
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        None: a cumulative average of all batches seen.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
    device, dtype
        As for any torch module.
    bias : bool, keyword-only, default True
        False: a ``weight`` without a ``bias``.
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.
    """


class BatchNorm(DropInBatchNorm):
    __doc__ = _DOC.format(name="BatchNorm1d/2d/3d",
                          shapes="(N, C, *spatial) of any rank >= 2") + """
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

    def _check_input_dim(self, input: Any) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


class BatchNorm1d(DropInBatchNorm):
    __doc__ = _DOC.format(name="BatchNorm1d", shapes="(N, C) or (N, C, L)")

    def _check_input_dim(self, input: Any) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(DropInBatchNorm):
    __doc__ = _DOC.format(name="BatchNorm2d", shapes="(N, C, H, W)")

    def _check_input_dim(self, input: Any) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(DropInBatchNorm):
    __doc__ = _DOC.format(name="BatchNorm3d", shapes="(N, C, D, H, W)")

    def _check_input_dim(self, input: Any) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")


# ------------------------------------------- layer, group and instance norm

def _extra(text: str, num_threads: int | None) -> str:
    return text if num_threads is None else f"{text}, num_threads={num_threads}"


class LayerNorm(torch.nn.LayerNorm):
    """Drop-in for ``torch.nn.LayerNorm`` backed by cybatchnorm's compiled kernels.

    A subclass of torch's module with its constructor, parameters
    (``weight`` and ``bias`` of shape ``normalized_shape``), state dicts,
    errors and results; the forward is :func:`~cybatchnorm.torch.layer_norm`
    (float64 statistics per sample; float16/bfloat16 computed in float32),
    differentiable to any order, traced by ``torch.compile`` as single operators.

    Parameters
    ----------
    normalized_shape : int or sequence of ints
        The trailing axes each sample is normalized over.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
    bias : bool, default True
    device, dtype
        As for any torch module.
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import LayerNorm
    >>> layer = LayerNorm(8, dtype=torch.float64)
    >>> x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    >>> layer(x).pow(2).sum().backward()
    >>> tuple(x.grad.shape), tuple(layer.weight.grad.shape)
    ((4, 8), (8,))
    """

    def __init__(self, normalized_shape: Any, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device: Any = None,
                 dtype: Any = None, *, num_threads: int | None = None) -> None:
        threads_arg(num_threads)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.num_threads = num_threads

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(TORCHSCRIPT.format("torch.jit.script"))

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                          num_threads=self.num_threads)

    def extra_repr(self) -> str:
        return _extra(super().extra_repr(), self.num_threads)


class GroupNorm(torch.nn.GroupNorm):
    """Drop-in for ``torch.nn.GroupNorm`` backed by cybatchnorm's compiled kernels.

    A subclass of torch's module with its constructor (and its error for
    channels not divisible by groups), parameters (``weight``, ``bias`` of
    shape (C,)), state dicts, errors and results; the forward is
    :func:`~cybatchnorm.torch.group_norm` (float64 statistics per sample and
    group; float16/bfloat16 computed in float32; a channels_last input gives
    a channels_last output), differentiable to any order.

    Parameters
    ----------
    num_groups : int
    num_channels : int
    eps : float, default 1e-5
    affine : bool, default True
    device, dtype
        As for any torch module.
    bias : bool, keyword-only, default True
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import GroupNorm
    >>> layer = GroupNorm(2, 4, dtype=torch.float64)
    >>> layer(torch.randn(3, 4, 5, dtype=torch.float64)).shape
    torch.Size([3, 4, 5])
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device: Any = None, dtype: Any = None, *,
                 bias: bool = True, num_threads: int | None = None) -> None:
        threads_arg(num_threads)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)
        self.num_threads = num_threads

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(TORCHSCRIPT.format("torch.jit.script"))

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                          num_threads=self.num_threads)

    def extra_repr(self) -> str:
        return _extra(super().extra_repr(), self.num_threads)


class _DropInInstanceNorm:
    """What InstanceNorm1d/2d/3d add to torch's ``_InstanceNorm``: the
    thread count, and :func:`~cybatchnorm.torch.instance_norm` where torch's
    module calls ``F.instance_norm`` (its forward keeps torch's input checks,
    unbatched input and warnings)."""

    num_threads: int | None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device: Any = None,
                 dtype: Any = None, *, bias: bool = True,
                 num_threads: int | None = None) -> None:
        threads_arg(num_threads)
        # the next class in the subclass's MRO: torch's InstanceNorm1d/2d/3d
        super().__init__(num_features, eps, momentum, affine,  # type: ignore[call-arg]
                         track_running_stats, device, dtype, bias=bias)
        self.num_threads = num_threads

    def __prepare_scriptable__(self) -> Any:
        raise NotImplementedError(TORCHSCRIPT.format("torch.jit.script"))

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        m: Any = self
        return instance_norm(input, m.running_mean, m.running_var, m.weight, m.bias,
                             m.training or not m.track_running_stats,
                             m.momentum if m.momentum is not None else 0.0, m.eps,
                             num_threads=self.num_threads)

    def extra_repr(self) -> str:
        return _extra(super().extra_repr(), self.num_threads)  # type: ignore[misc]


_INSTANCE_DOC = """Drop-in for ``torch.nn.{name}`` backed by cybatchnorm's compiled kernels.

    A subclass of torch's module with its constructor, parameters, buffers
    (``running_mean``, ``running_var``, ``num_batches_tracked`` with
    ``track_running_stats=True``), state dicts, errors and results; input
    {shapes} (or without the batch axis); each channel of each sample
    normalized on its own float64 statistics in training (or without
    tracked statistics), by the running statistics in eval mode with
    ``track_running_stats=True``. See :func:`~cybatchnorm.torch.instance_norm`.

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default False
    track_running_stats : bool, default False
    device, dtype
        As for any torch module.
    bias : bool, keyword-only, default True
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.
    """


class InstanceNorm1d(_DropInInstanceNorm, torch.nn.InstanceNorm1d):
    __doc__ = _INSTANCE_DOC.format(name="InstanceNorm1d", shapes="(N, C, L)")


class InstanceNorm2d(_DropInInstanceNorm, torch.nn.InstanceNorm2d):
    __doc__ = _INSTANCE_DOC.format(name="InstanceNorm2d", shapes="(N, C, H, W)")


class InstanceNorm3d(_DropInInstanceNorm, torch.nn.InstanceNorm3d):
    __doc__ = _INSTANCE_DOC.format(name="InstanceNorm3d", shapes="(N, C, D, H, W)")
