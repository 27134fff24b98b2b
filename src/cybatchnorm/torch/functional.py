"""``batch_norm``: ``torch.nn.functional.batch_norm`` computed by the compiled kernels."""
from typing import Any

import torch
from torch import Tensor

from .._validation import check_num_threads
from ._call import run_batch_norm
from ._checks import check_not_tracing, check_transforms

__all__ = ["batch_norm"]


def threads_arg(num_threads: Any) -> int:
    """Validate ``num_threads`` (None or a positive int); 0 stands for None in the ops."""
    return 0 if num_threads is None else check_num_threads(num_threads)


def _momentum(momentum: Any) -> float:
    if isinstance(momentum, torch.Tensor) and momentum.numel() == 1 and \
            (momentum.is_floating_point() or not momentum.dtype.is_complex):
        return float(momentum.item())       # torch's parser takes a one-value tensor
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError("batch_norm(): argument 'momentum' (position 7) must be float, "
                        f"not {type(momentum).__name__}")
    return float(momentum)


def batch_norm(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: Any = False,
    momentum: Any = 0.1,
    eps: Any = 1e-5,
    *,
    num_threads: Any = None,
) -> Tensor:
    """``torch.nn.functional.batch_norm`` computed by cybatchnorm's kernels.

    Same arguments, defaults, results and errors as PyTorch's. ``training``
    (or no running statistics) normalizes with the batch statistics and, when
    ``running_mean``/``running_var`` are given, updates them in place with
    ``momentum`` (unbiased batch variance); otherwise the running statistics
    normalize. Differentiable in ``input``, ``weight`` and ``bias`` to second
    order (a third derivative raises).

    Parameters
    ----------
    input : Tensor, shape (N, C, *spatial)
        CPU; float32 or float64, or float16/bfloat16 (computed in float64, rounded once).
        Contiguous and channels_last input is read in place, and the output
        keeps its memory format.
    running_mean, running_var : Tensor of shape (C,) or None
    weight, bias : Tensor of shape (C,) or None
    training : bool
    momentum : float
    eps : float
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.

    Returns
    -------
    Tensor, input's shape, dtype and memory format.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import batch_norm
    >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]], dtype=torch.float64)
    >>> batch_norm(x, None, None, training=True).round(decimals=4)
    tensor([[-1., -1.],
            [ 1.,  1.]], dtype=torch.float64)
    """
    check_not_tracing()
    check_transforms(input)
    if not isinstance(training, bool):
        raise TypeError("batch_norm(): argument 'training' (position 6) must be bool, "
                        f"not {type(training).__name__}")
    momentum = _momentum(momentum)
    return run_batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                          momentum, float(eps), threads_arg(num_threads))
