"""PyTorch drop-in: cybatchnorm's compiled kernels as torch operators and modules.

- :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` (and
  :class:`BatchNorm`, any rank): subclasses of torch's ``_BatchNorm`` with its
  constructor, state dicts, errors and results;
- :func:`batch_norm`: ``torch.nn.functional.batch_norm``'s signature;
- :class:`SyncBatchNorm`: ``torch.nn.SyncBatchNorm`` for CPU tensors over
  any torch.distributed backend (gloo);
- :class:`LayerNorm`, :class:`GroupNorm`, :class:`InstanceNorm1d`,
  :class:`InstanceNorm2d`, :class:`InstanceNorm3d` and :func:`layer_norm`,
  :func:`group_norm`, :func:`instance_norm`: the per-sample normalizations
  on the same kernels' graph, over ``torch.ops.cybatchnorm.norm_forward`` /
  ``norm_backward`` (float16/bfloat16 computed in float32);
- ``torch.ops.cybatchnorm.batch_norm_forward`` / ``batch_norm_backward`` /
  ``batch_norm_double_backward`` / ``batch_norm_jvp``: the
  ``torch.library.custom_op`` operators under them, with fake
  implementations and autograd formulas, so that
  ``torch.compile(fullgraph=True)`` traces them and second derivatives
  (``gradgradcheck``, gradient penalties) are exact.

Batch norm also runs under every ``torch.func`` transform (``grad``, ``vjp``,
``jacrev``, ``jacfwd``, ``jvp``, ``hessian``, ``vmap`` with a batching rule
of its own) and ``torch.autograd.forward_ad``, to second order; under
``vmap`` running statistics passed as stacked buffers are updated per batch.

CPU tensors; float32 and float64, float16 and bfloat16 computed in float64, rounded once.
Needs PyTorch (``pip install cybatchnorm[torch]``); ``import cybatchnorm``
never imports it.
"""
try:
    import torch  # noqa: F401
except ImportError as exc:          # a clear word instead of a bare "No module named 'torch'"
    raise ImportError("cybatchnorm.torch needs PyTorch (>= 2.5): pip install cybatchnorm[torch]"
                      ) from exc

from ._norm_ops import norm_backward, norm_forward
from ._ops import (
    batch_norm_backward,
    batch_norm_double_backward,
    batch_norm_forward,
    batch_norm_jvp,
)
from .functional import batch_norm, group_norm, instance_norm, layer_norm
from .modules import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
)
from .sync import SyncBatchNorm

__all__ = ["batch_norm", "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "batch_norm_forward", "batch_norm_backward", "batch_norm_double_backward",
           "batch_norm_jvp",
           "layer_norm", "group_norm", "instance_norm", "LayerNorm", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "norm_forward", "norm_backward"]
