"""cybatchnorm: batch normalization, forward and backward, node by node along
its computational graph, in typed Cython with OpenMP.

Public names: :func:`batchnorm_forward`, :func:`batchnorm_backward` (staged,
one compiled kernel per graph node), :func:`batchnorm_backward_fused` (closed
form), :class:`BatchNorm`, :class:`Cache`, :func:`check_gradients`,
:func:`show_config` and the :mod:`cybatchnorm.graph` module.
"""
from ._version import __version__
from . import graph
from .api import Cache, batchnorm_backward, batchnorm_backward_fused, batchnorm_forward
from .gradcheck import check_gradients
from .layer import BatchNorm
from ._config import show_config

__all__ = [
    "__version__", "graph", "Cache", "batchnorm_forward", "batchnorm_backward",
    "batchnorm_backward_fused", "BatchNorm", "check_gradients", "show_config",
]
