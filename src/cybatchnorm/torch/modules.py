"""``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` and ``BatchNorm`` (any rank):
``torch.nn.modules.batchnorm._BatchNorm`` subclasses whose forward runs the
compiled kernels through ``torch.ops.cybatchnorm``."""
from typing import Any

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ._call import run_batch_norm
from ._checks import TORCHSCRIPT
from .functional import threads_arg

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _momentum_of(training: bool, track_running_stats: bool, seen: Any,
                 momentum: float | None) -> tuple[bool, float]:
    # (whether a forward counts a batch, the running statistics' update
    # factor) as torch's _BatchNorm.forward has them; seen is
    # num_batches_tracked (a tensor, or None)
    track = training and track_running_stats and seen is not None
    factor = 0.0 if momentum is None else momentum
    if track and seen is not None and momentum is None:
        # the cumulative average over the batches seen, this one included
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

    def _momentum(self) -> tuple[bool, float]:
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
