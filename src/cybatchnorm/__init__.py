"""cybatchnorm: batch normalization, forward and backward, node by node along
its computational graph, in typed Cython with OpenMP.

Public names: :func:`batchnorm_forward`, :func:`batchnorm_backward` (staged,
one compiled kernel per graph node), :func:`batchnorm_backward_fused` (closed
form), :class:`BatchNorm`, :class:`Cache`, :func:`check_gradients`,
:func:`check_node` (checks a learner's backward of one node), :func:`show_config`;
the modules :mod:`cybatchnorm.graph` (the graph as data and its textbook
walks), :mod:`cybatchnorm.nodes` (one checked function per node and
direction) and :mod:`cybatchnorm.staged` (the planned staged walk); the split API
for batches spread over processes (:func:`batch_stats`, :func:`merge_stats`,
:func:`normalize`, :func:`backward_reduce`, :func:`backward_elementwise`,
from :mod:`cybatchnorm.split`); the pool of output buffers
(:func:`set_pool_limit`, :func:`release_pool`, :func:`pool_info`, from
:mod:`cybatchnorm.memory`); layer norm and group norm (:func:`layernorm_forward`,
:func:`layernorm_backward` (staged), :func:`layernorm_backward_fused`,
:func:`groupnorm_forward`, :func:`groupnorm_backward`,
:func:`groupnorm_backward_fused`, from :mod:`cybatchnorm.norms`) and their
layers :class:`LayerNorm` and :class:`GroupNorm`.
:mod:`cybatchnorm.distributed` (MPI) and :mod:`cybatchnorm.torch` (PyTorch) are
imported on demand only.
"""
from . import graph, nodes, staged
from ._config import show_config
from ._version import __version__
from .api import Cache, batchnorm_backward, batchnorm_backward_fused, batchnorm_forward
from .exercises import check_node
from .gradcheck import check_gradients
from .layer import BatchNorm
from .memory import pool_info, release_pool, set_pool_limit
from .norm_layers import GroupNorm, LayerNorm
from .norms import (
                    NormCache,
                    groupnorm_backward,
                    groupnorm_backward_fused,
                    groupnorm_forward,
                    layernorm_backward,
                    layernorm_backward_fused,
                    layernorm_forward,
)
from .split import backward_elementwise, backward_reduce, batch_stats, merge_stats, normalize

__all__ = [
    "__version__", "graph", "nodes", "staged", "Cache", "batchnorm_forward", "batchnorm_backward",
    "batchnorm_backward_fused", "BatchNorm", "check_gradients", "check_node", "show_config",
    "batch_stats", "merge_stats", "normalize", "backward_reduce", "backward_elementwise",
    "set_pool_limit", "release_pool", "pool_info",
    "layernorm_forward", "layernorm_backward", "layernorm_backward_fused", "groupnorm_forward",
    "groupnorm_backward", "groupnorm_backward_fused", "NormCache", "LayerNorm", "GroupNorm",
]
