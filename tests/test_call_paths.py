"""A call reaches its kernel through at most four of the package's files,
none visited twice (the layering the README's diagram draws)."""
from call_path import kernel_path
import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _engine

X = np.random.default_rng(0).normal(size=(64, 8))
G, B = np.ones(8), np.zeros(8)


def _layer_step():
    layer = bn.BatchNorm(8)
    layer.backward(np.ones_like(layer.forward(X)))


def _staged():
    bn.batchnorm_backward(np.ones_like(X), bn.batchnorm_forward(X, G, B)[1])


def _fused():
    bn.batchnorm_backward_fused(np.ones_like(X), bn.batchnorm_forward(X, G, B)[1])


@pytest.mark.parametrize("call, kernels, want", [
    (lambda: bn.batchnorm_forward(X, G, B), ("fused", "forward"), ["api.py", "_engine.py"]),
    (_fused, ("fused", "backward"), ["api.py", "_engine.py"]),
    (_staged, ("nodes", "out_backward"), ["api.py", "staged.py", "_node_ops.py"]),
    (_layer_step, ("fused", "forward"), ["layer.py", "api.py", "_engine.py"]),
    (_layer_step, ("fused", "backward"), ["layer.py", "api.py", "_engine.py"]),
    (lambda: bn.nodes.xhat_forward(X, G), ("nodes", "xhat_forward"),
     ["nodes.py", "_node_ops.py"]),
    (lambda: bn.batch_stats(X), ("split", "batch_stats"), ["split.py", "_engine.py"]),
    (lambda: bn.layernorm_forward(X, G, B), ("norms", "forward"), ["norms.py", "_engine.py"]),
    (lambda: bn.groupnorm_backward_fused(X, bn.groupnorm_forward(X, G, B, 4)[1]),
     ("norms", "backward"), ["norms.py", "_engine.py"]),
], ids=["batchnorm_forward", "batchnorm_backward_fused", "batchnorm_backward",
        "BatchNorm.forward", "BatchNorm.backward", "nodes.xhat_forward", "batch_stats",
        "layernorm_forward", "groupnorm_backward_fused"])
def test_a_call_reaches_its_kernel_through_at_most_four_files(monkeypatch, call, kernels, want):
    module, name = kernels
    files = kernel_path(monkeypatch, getattr(_engine, module), name, call)
    assert files == want
    assert len(files) <= 4 and len(set(files)) == len(files)
