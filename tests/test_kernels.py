"""Runtime SIMD dispatch: the AVX-512, AVX2 and baseline builds of the kernels agree bit for bit."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _engine, _fused, _nodes, _openmp

SIMD_LEVELS = [pytest.param("avx2", marks=pytest.mark.skipif(
                   not _openmp.cpu_has_avx2(), reason="CPU without AVX2")),
               pytest.param("avx512", marks=pytest.mark.skipif(
                   not _openmp.cpu_has_avx512(), reason="CPU without AVX-512"))]


def test_dispatch_follows_the_cpu():
    want = os.environ.get("CYBATCHNORM_SIMD", "")
    if _openmp.cpu_has_avx512() and want not in ("baseline", "avx2"):
        expected = "avx512"
    elif _openmp.cpu_has_avx2() and want != "baseline":
        expected = "avx2"
    else:
        expected = "baseline"
    assert _engine.SIMD == expected
    suffix = "" if expected == "baseline" else "_" + expected
    assert _engine.fused.__name__ == "cybatchnorm._fused" + suffix
    assert _fused.SIMD == "baseline" and _nodes.SIMD == "baseline"


@pytest.mark.parametrize("level", ["baseline", "avx2"])
def test_simd_level_can_be_capped(level):
    code = "from cybatchnorm import _engine; print(_engine.SIMD)"
    env = dict(os.environ, CYBATCHNORM_SIMD=level)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    expected = "avx2" if level == "avx2" and _openmp.cpu_has_avx2() else "baseline"
    assert out.strip() == expected


@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("shape", [(300, 37), (5, 3, 7, 9), (70000, 2), (64, 1024),
                                   (4200, 1001)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_simd_builds_and_baseline_agree_bitwise(monkeypatch, rng, shape, dtype, kind, level):
    import importlib
    fast = [importlib.import_module(f"cybatchnorm.{m}_{level}") for m in ("_fused", "_nodes")]
    x = rng.normal(3, 2, shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    runs = []
    for fused, nodes in ((_fused, _nodes), fast):
        monkeypatch.setattr(_engine, "fused", fused)
        monkeypatch.setattr(_engine, "nodes", nodes)
        out, cache = bn.batchnorm_forward(x, g, b, cache=kind)
        res = [out, cache.mu, cache.var]
        res += bn.batchnorm_backward(dout, cache) + bn.batchnorm_backward_fused(dout, cache)
        runs.append([np.asarray(a).tobytes() for a in res])
    assert runs[0] == runs[1]
    assert fast[0].SIMD == fast[1].SIMD == level


@pytest.mark.parametrize("shape", [(300, 37), (64, 4096), (5, 3, 7, 9), (4, 256, 4, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_sweep_alone_is_the_sweep_of_both(rng, shape, dtype):
    # passes=REDUCE then passes=SWEEP (the benchmark's lone sweeps, over the
    # chunked grid) write the bits of one call that runs both, every output
    # poisoned in between: the per-sweep table times the kernels' own sweeps
    N, C = shape[:2]
    x3 = rng.normal(3, 2, shape).astype(dtype).reshape(N, C, -1)
    g3 = rng.normal(size=x3.shape).astype(dtype)
    calls = _engine.sweep_calls(x3, g3, 1)

    def outputs(fn):
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__))
        return [cells[k].cell_contents for k in ("out", "dx", "mu", "var", "sqrtvar", "ivar",
                                                 "mu64", "ivar64", "m2", "dgamma", "dbeta")
                if k in cells]
    arrays = {id(a): a for fn in calls.values() if fn.__closure__ for a in outputs(fn)}
    assert len(arrays) == 11
    runs = []
    for sweeps in (("forward", "backward"), ("statistics", "normalize", "sums", "dx")):
        for a in arrays.values():
            a[...] = np.nan
        for name in sweeps:
            calls[name]()
        runs.append([a.tobytes() for a in arrays.values()])
        assert not any(np.isnan(a).any() for a in arrays.values())
    assert runs[0] == runs[1]
