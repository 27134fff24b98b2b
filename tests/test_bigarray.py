"""An array with more than 2**31 elements: every index is 64-bit.

Marked ``slow`` and run by ``tox -e bigarray`` (CYBATCHNORM_RUN_SLOW=1); it
needs about 17 GiB of free memory (x and out, 8 GiB each, float32) and is
skipped, saying so, when /proc/meminfo reports less. The kernels index with
Py_ssize_t throughout (no ``int`` counter over N x D); an int32 index would
wrap at 2**31 and write the last rows' results somewhere else, or crash.
"""
import os
import time

import numpy as np
import pytest

import cybatchnorm as bn

pytestmark = pytest.mark.slow

N, D = 2**21 + 3, 1024          # 2**31 + 3072 values: the last 3 rows lie beyond 2**31
NEED = 2 * N * D * 4 + (1 << 30)  # x, out, and 1 GiB for the checks


def available_bytes():
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


def test_more_than_2_to_31_elements():
    if os.environ.get("CYBATCHNORM_RUN_SLOW") != "1":
        pytest.skip("slow: set CYBATCHNORM_RUN_SLOW=1 (tox -e bigarray does)")
    avail = available_bytes()
    if avail < NEED:
        pytest.skip(f"needs {NEED / 2**30:.1f} GiB of available memory, "
                    f"/proc/meminfo says {avail / 2**30:.1f} GiB")
    assert N * D > 2**31
    t0 = time.perf_counter()
    # x[n, d] = offset_d + scale_d * noise, filled in row blocks (no temporary the size of x)
    rng = np.random.default_rng(7)
    offset = np.linspace(-100, 100, D).astype(np.float32)
    scale = np.linspace(0.5, 5, D).astype(np.float32)
    x = np.empty((N, D), np.float32)
    B = 1 << 16
    for r in range(0, N, B):
        blk = x[r:r + B]
        rng.standard_normal(blk.shape, dtype=np.float32, out=blk)
        blk *= scale
        blk += offset
    t1 = time.perf_counter()
    gamma = np.linspace(1, 2, D)
    beta = np.linspace(-1, 1, D)
    out = np.empty_like(x)
    res, cache = bn.batchnorm_forward(x, gamma, beta, cache="minimal", out=out)
    t2 = time.perf_counter()
    assert res is out

    # the statistics, from numpy in float64, in row blocks
    mean = x.mean(axis=0, dtype=np.float64)
    m2 = np.zeros(D)
    for r in range(0, N, B // 4):
        d = x[r:r + B // 4].astype(np.float64) - mean
        m2 += np.einsum("ij,ij->j", d, d)
    var = m2 / N
    np.testing.assert_allclose(cache.mu, mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cache.var, var, rtol=1e-5)

    # rows at both ends, the last three beyond flat index 2**31, against numpy,
    # within the documented bound (docs/numerics.md): 16 u (1 + kappa) (|gamma| + |beta|)
    a = gamma / np.sqrt(var + 1e-5)
    kappa = np.maximum(np.abs(x.max(0)), np.abs(x.min(0))) / np.sqrt(var + 1e-5)
    tol = 16 * np.finfo(np.float32).eps * (1 + kappa) * (np.abs(gamma) + np.abs(beta))
    for rows in (slice(0, 3), slice(N - 3, N)):
        want = (x[rows].astype(np.float64) - mean) * a + beta
        err = np.abs(out[rows] - want).max(0)
        assert (err <= tol).all(), (rows, err.max(), (err / tol).max())

    # a few features of the output: mean beta, std gamma (up to eps)
    for j in (0, 1, D // 2, D - 1):
        col = out[:, j].astype(np.float64)
        assert abs(col.mean() - beta[j]) < 1e-4
        assert abs(col.std() - gamma[j]) < 1e-4 * gamma[j]
    t3 = time.perf_counter()
    print(f"\nbig array {N}x{D} float32 ({N * D} values): fill {t1 - t0:.1f} s, "
          f"forward {t2 - t1:.1f} s, checks {t3 - t2:.1f} s")
