"""Thread counts: validation, OMP_NUM_THREADS/threadpoolctl, bitwise invariance."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _openmp
from cybatchnorm._validation import check_num_threads
from conftest import DTYPES


@pytest.mark.parametrize("shape", [(64, 37), (5, 3), (16, 7, 9, 4), (3, 1000), (50, 1),
                                   (16, 512), (4, 16, 20, 20)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_bitwise_identical_for_any_thread_count(rng, shape, dtype):
    x = rng.normal(4, 3, shape).astype(dtype)
    g, b = rng.uniform(size=shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    results = []
    for nt in (1, 2, 3, 4, 7):
        out, cache = bn.batchnorm_forward(x, g, b, num_threads=nt)
        staged = bn.batchnorm_backward(dout, cache, num_threads=nt)
        fused = bn.batchnorm_backward_fused(dout, cache, num_threads=nt)
        results.append([out, cache.mu, cache.var, *staged, *fused])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


def test_num_threads_validation():
    assert check_num_threads(3) == 3
    assert check_num_threads(np.int64(2)) == 2
    assert check_num_threads(None) >= 1
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_threads"):
            check_num_threads(bad)
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="num_threads"):
            check_num_threads(bad)


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="build without OpenMP")
def test_omp_num_threads_is_honoured():
    code = "from cybatchnorm._validation import check_num_threads as e; print(e(None))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "1"


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="build without OpenMP")
def test_threadpoolctl_limit_is_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = check_num_threads(None)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert check_num_threads(None) == 1
    assert check_num_threads(None) == before


def test_small_work_runs_on_one_thread_unless_asked():
    from cybatchnorm._threads import GRAIN
    assert check_num_threads(None, size=GRAIN - 1) == 1
    assert check_num_threads(None, size=100 * GRAIN) == check_num_threads(None)
    assert check_num_threads(3, size=10) == 3          # an explicit count is honoured
