"""Runtime SIMD dispatch: the AVX2 and baseline builds of the kernels agree bit for bit."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _fused, _kernels, _nodes, _openmp

avx2 = pytest.mark.skipif(not _openmp.cpu_has_avx2(), reason="CPU without AVX2")


def test_dispatch_follows_the_cpu():
    if _openmp.cpu_has_avx2() and os.environ.get("CYBATCHNORM_SIMD") != "baseline":
        from cybatchnorm import _fused_avx2
        assert _kernels.fused is _fused_avx2 and _kernels.SIMD == _fused_avx2.SIMD
    else:
        assert _kernels.fused is _fused and _kernels.SIMD == "baseline"
    assert _fused.SIMD == "baseline" and _nodes.SIMD == "baseline"


def test_baseline_can_be_forced():
    code = "from cybatchnorm import _kernels; print(_kernels.SIMD)"
    env = dict(os.environ, CYBATCHNORM_SIMD="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "baseline"


@avx2
@pytest.mark.parametrize("shape", [(300, 37), (5, 3, 7, 9), (70000, 2), (64, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_avx2_and_baseline_agree_bitwise(monkeypatch, rng, shape, dtype, kind):
    from cybatchnorm import _fused_avx2, _nodes_avx2, api, graph
    x = rng.normal(3, 2, shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    runs = []
    for fused, nodes in ((_fused, _nodes), (_fused_avx2, _nodes_avx2)):
        monkeypatch.setattr(api, "_fused", fused)
        monkeypatch.setattr(graph, "_nodes", nodes)
        out, cache = bn.batchnorm_forward(x, g, b, cache=kind)
        res = [out, cache.mu, cache.var]
        res += bn.batchnorm_backward(dout, cache) + bn.batchnorm_backward_fused(dout, cache)
        runs.append([np.asarray(a).tobytes() for a in res])
    assert runs[0] == runs[1]
