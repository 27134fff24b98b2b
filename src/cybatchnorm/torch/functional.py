"""``batch_norm``, ``layer_norm``, ``group_norm`` and ``instance_norm``:
``torch.nn.functional``'s computed by the compiled kernels."""
import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_num_threads
from ._call import run_batch_norm
from ._checks import (
    check_group_norm,
    check_instance_norm,
    check_layer_norm,
    check_not_tracing,
    check_transforms,
)
from ._norm_ops import run_norm

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm"]


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
    if not isinstance(training, bool):
        raise TypeError("batch_norm(): argument 'training' (position 6) must be bool, "
                        f"not {type(training).__name__}")
    momentum = _momentum(momentum)
    return run_batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                          momentum, float(eps), threads_arg(num_threads))


# ------------------------------------------- layer, group and instance norm

def layer_norm(
    input: Any,
    normalized_shape: Any,
    weight: Any = None,
    bias: Any = None,
    eps: Any = 1e-5,
    *,
    num_threads: Any = None,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` computed by cybatchnorm's kernels.

    Same arguments, defaults, results and errors as PyTorch's: each sample
    (the trailing ``normalized_shape`` axes) normalized on its own mean and
    biased variance (float64, two passes), then scaled by ``weight`` and
    shifted by ``bias`` (both of shape ``normalized_shape``). Differentiable
    in input, weight and bias to any order.

    Parameters
    ----------
    input : Tensor, shape (*, *normalized_shape)
        CPU; float32 or float64, or float16/bfloat16 (computed in float32).
        Any strides (non-contiguous input is copied); the output is contiguous, as torch's.
    normalized_shape : list, tuple or torch.Size of ints
    weight, bias : Tensor of shape normalized_shape, or None
    eps : float
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels (over samples); None uses all cores.

    Returns
    -------
    Tensor, input's shape and dtype.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import layer_norm
    >>> x = torch.tensor([[1.0, 3.0], [10.0, 30.0]], dtype=torch.float64)
    >>> layer_norm(x, [2]).round(decimals=4)
    tensor([[-1.,  1.],
            [-1.,  1.]], dtype=torch.float64)
    """
    check_not_tracing()
    check_transforms(input, "layer_norm")
    shape = check_layer_norm(input, normalized_shape, weight, bias)
    nt = threads_arg(num_threads)
    M = math.prod(shape)
    rows = input.numel() // M if M else 0
    if M == 0:
        out: Tensor = input.clone(memory_format=torch.contiguous_format)
        return out
    return run_norm(input, weight, bias, (rows, M), 1, 1, float(eps), nt)[0]


def group_norm(
    input: Any,
    num_groups: Any,
    weight: Any = None,
    bias: Any = None,
    eps: Any = 1e-5,
    *,
    num_threads: Any = None,
) -> Tensor:
    """``torch.nn.functional.group_norm`` computed by cybatchnorm's kernels.

    Same arguments, defaults, results and errors as PyTorch's: the C
    channels of input (N, C, *spatial) split into ``num_groups`` groups, each
    group of each sample normalized on its own mean and biased variance
    (float64, two passes), then scaled by ``weight`` and shifted by ``bias``
    per channel. Differentiable in input, weight and bias to any order.

    Parameters
    ----------
    input : Tensor, shape (N, C, *spatial)
        CPU; float32 or float64, or float16/bfloat16 (computed in float32).
        A channels_last input is read in place (channels-last kernels) and
        gives a channels_last output and gradient, as torch's.
    num_groups : int
        G, dividing C.
    weight, bias : Tensor of shape (C,), or None
    eps : float
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels (over (sample, group) rows); None uses all cores.

    Returns
    -------
    Tensor, input's shape, dtype and memory format.

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import group_norm
    >>> x = torch.tensor([[1.0, 3.0, 10.0, 30.0]], dtype=torch.float64)
    >>> group_norm(x, 2).round(decimals=4)
    tensor([[-1.,  1., -1.,  1.]], dtype=torch.float64)
    """
    check_not_tracing()
    check_transforms(input, "group_norm")
    check_group_norm(input, num_groups, weight, bias)
    nt = threads_arg(num_threads)
    N, C, S = input.shape[0], input.shape[1], math.prod(input.shape[2:])
    if _channels_last(input):
        # read in place as (N, S, C) by the channels-last kernels; the output
        # and the gradient come back channels_last, as torch's
        return run_norm(input, weight, bias, (N, S, C), num_groups, S, float(eps), nt,
                        nhwc=True)[0]
    return run_norm(input, weight, bias, (N * num_groups, C // num_groups * S), num_groups, S,
                    float(eps), nt)[0]


def _channels_last(x: Tensor) -> bool:
    # whether x is dense in a channels_last format (and not also contiguous)
    for fmt, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == rank and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            return True
    return False


def instance_norm(
    input: Any,
    running_mean: Any = None,
    running_var: Any = None,
    weight: Any = None,
    bias: Any = None,
    use_input_stats: Any = True,
    momentum: Any = 0.1,
    eps: Any = 1e-5,
    *,
    num_threads: Any = None,
) -> Tensor:
    """``torch.nn.functional.instance_norm`` computed by cybatchnorm's kernels.

    Same arguments, defaults, results and errors as PyTorch's. With
    ``use_input_stats`` each channel of each sample of input (N, C, *spatial)
    is normalized on its own mean and biased variance (group norm with a
    channel per group), and given running statistics are updated in place:
    ``running = momentum * batch + (1 - momentum) * running`` with the batch
    values averaged over the N samples (the unbiased variance, as torch).
    Otherwise the running statistics normalize every sample (batch norm's
    evaluation kernel). Differentiable in input, weight and bias.

    Parameters
    ----------
    input : Tensor, shape (N, C, *spatial)
        CPU; float32 or float64, or float16/bfloat16 (computed in float32).
    running_mean, running_var : Tensor of shape (C,) or None
    weight, bias : Tensor of shape (C,) or None
    use_input_stats : bool
    momentum : float
    eps : float
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.

    Returns
    -------
    Tensor, input's shape and dtype (contiguous, as torch's).

    Examples
    --------
    >>> import torch
    >>> from cybatchnorm.torch import instance_norm
    >>> x = torch.tensor([[[1.0, 3.0], [10.0, 30.0]]], dtype=torch.float64)
    >>> instance_norm(x).round(decimals=4)
    tensor([[[-1.,  1.],
             [-1.,  1.]]], dtype=torch.float64)
    """
    check_not_tracing()
    check_transforms(input, "instance_norm")
    check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats)
    momentum = _momentum(momentum)
    nt = threads_arg(num_threads)
    if not use_input_stats:
        # every sample normalized by the running statistics: batch norm in eval mode
        return run_batch_norm(input.contiguous(), weight, bias, running_mean, running_var,
                              False, momentum, float(eps), nt)
    N, C, S = input.shape[0], input.shape[1], math.prod(input.shape[2:])
    out, mean, _, var = run_norm(input, weight, bias, (N * C, S), C, S, float(eps), nt)
    if N * C and (running_mean is not None or running_var is not None):
        with torch.no_grad():
            keep = 1.0 - momentum
            if running_mean is not None:
                batch = mean.view(N, C).mean(dim=0)
                running_mean.copy_(momentum * batch + keep * running_mean.to(torch.float64))
            if running_var is not None:
                batch = var.view(N, C).mean(dim=0) * (S / (S - 1))
                running_var.copy_(momentum * batch + keep * running_var.to(torch.float64))
    return out
