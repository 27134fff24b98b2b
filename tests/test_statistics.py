"""The one-read statistics (``welford_rows`` in _common.pxd) on adversarial data.

Each task sums x - h and (x - h)**2 with h its first value, and redoes m2
exactly when the subtraction s2 - s1 * mean would cancel more than M2_BITS
bits. These cases put h where it hurts most (far from its chunk's mean),
sit the data far from zero, or leave no spread at all; the mean and m2 are
checked against a two-pass reference in extended precision, and the bits
against every thread count and SIMD build.
"""
import importlib

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _engine, _fused, _nodes, _openmp

# (shape, what the work grid makes of it in float32)
LAYOUTS = [((4096, 8), "one chunk"), ((40000, 4), "four chunks"), ((64, 4096), "strips"),
           ((16, 4, 50, 50), "runs, chunks"), ((8, 256, 4, 4), "runs, strips")]


def chunk_starts(shape, dtype):
    N = shape[0]
    S = int(np.prod(shape[2:], dtype=np.int64))
    K = _engine.row_chunks(N, shape[1], S, np.dtype(dtype).itemsize)
    return [(k * N) // K for k in range(K)]


def adversarial(kind, shape, dtype, rng):
    x = rng.normal(size=shape)
    if kind.startswith("offset"):
        return (x + float(kind.split()[1])).astype(dtype)
    if kind == "first row far":
        x[0] = 1e6
    elif kind == "every chunk's first row far":
        x[chunk_starts(shape, dtype)] = -3e5
    elif kind == "first value of every run far":
        x[..., 0] = 1e5
    elif kind == "constant channels":
        x[:, ::2] = 7.25
    return x.astype(dtype)


KINDS = ["offset 1e3", "offset 1e5", "offset 1e8", "first row far",
         "every chunk's first row far", "first value of every run far", "constant channels"]


def reference(x):
    # two-pass mean and m2 per channel in extended precision
    xl = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.longdouble)
    mean = xl.mean(axis=1)
    return mean, ((xl - mean[:, None]) ** 2).sum(axis=1)


@pytest.mark.parametrize("shape,grid", LAYOUTS, ids=[g for _, g in LAYOUTS])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_read_statistics_keep_their_digits(rng, shape, grid, kind, dtype):
    if kind == "first value of every run far" and len(shape) == 2:
        pytest.skip("(N, D) data has runs of one value")
    x = adversarial(kind, shape, dtype, rng)
    count, mean, m2 = bn.batch_stats(x)
    want_mean, want_m2 = reference(x)
    biggest = np.abs(np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)).max(axis=1)
    # the mean to 1e-14 of the channel's largest value; m2 to 5e-14 of
    # itself (one read loses at most M2_BITS = 4 bits of it; without the
    # exact redo, "first row far" lost 1.5e-11; the earlier two-pass reads
    # reached 6.3e-14 on one case); a constant channel's m2 exactly 0
    err = np.abs(mean - want_mean.astype(np.float64))
    assert np.all(err <= 1e-14 * biggest), (kind, (err / biggest).max())
    nonzero = want_m2 > 0
    rel = np.abs(m2[nonzero] - want_m2[nonzero].astype(np.float64)) / want_m2[nonzero]
    assert rel.max(initial=0.0) <= 5e-14, (kind, rel.max())
    assert np.all(m2[~nonzero] == 0.0)
    if kind == "constant channels":
        assert np.all(mean[::2] == 7.25) and not np.any(nonzero[::2])


@pytest.mark.parametrize("shape,grid", LAYOUTS, ids=[g for _, g in LAYOUTS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_exact_redo_gives_the_same_bits_everywhere(monkeypatch, rng, shape, grid, dtype):
    # every chunk's first row far: each (chunk, channel) takes the exact
    # second sum; the bits must not depend on the thread count or SIMD build
    x = adversarial("every chunk's first row far", shape, dtype, rng)
    g = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    b = rng.normal(size=shape[1]).astype(dtype)
    levels = [("baseline", _fused, _nodes)]
    for level, has in (("avx2", _openmp.cpu_has_avx2), ("avx512", _openmp.cpu_has_avx512)):
        if has():
            levels.append((level,) + tuple(importlib.import_module(f"cybatchnorm.{m}_{level}")
                                           for m in ("_fused", "_nodes")))
    runs = []
    for _level, fused, nodes in levels:
        monkeypatch.setattr(_engine, "fused", fused)
        monkeypatch.setattr(_engine, "nodes", nodes)
        for nt in (1, 2, 3):
            out, cache = bn.batchnorm_forward(x, g, b, num_threads=nt)
            stats = bn.batch_stats(x, num_threads=nt)
            runs.append([a.tobytes() for a in (out, cache.mu, cache.var, *stats[1:])])
    assert all(r == runs[0] for r in runs[1:])
