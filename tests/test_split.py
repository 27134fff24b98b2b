"""The split API: shards of a batch, reduced by hand in one process, give the
single-process forward and backward; validation and thread-count independence."""
import math

from cases import DTYPES
import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _engine, _openmp

SPLITS = {
    (40, 5): [7, 1, 20, 12],
    (11, 3, 4, 5): [2, 5, 4],
    (9, 4, 6): [1, 8],
    (33, 65): [33],
}


def sharded_pass(x, gamma, beta, dout, sizes, eps=1e-5):
    """Forward and backward of batch norm over shards of x, with the split API."""
    edges = np.cumsum([0] + sizes)
    xs = [x[a:b] for a, b in zip(edges[:-1], edges[1:])]
    gs = [dout[a:b] for a, b in zip(edges[:-1], edges[1:])]
    stats = [bn.batch_stats(s) for s in xs]                      # local
    count, mean, var = bn.merge_stats(*zip(*stats))              # "allgather" + merge
    ivar = 1.0 / np.sqrt(var + eps)
    outs = [bn.normalize(s, mean, ivar, gamma, beta) for s in xs]
    sums = [bn.backward_reduce(g, s, mean, ivar) for g, s in zip(gs, xs)]
    sd = np.sum([s[0] for s in sums], axis=0)                    # "allreduce"
    sdx = np.sum([s[1] for s in sums], axis=0)
    dxs = [bn.backward_elementwise(g, s, mean, ivar, gamma, sd, sdx, count)
           for g, s in zip(gs, xs)]
    return (np.concatenate(outs), np.concatenate(dxs), sdx * ivar, sd, mean, var, count)


@pytest.mark.parametrize("shape", list(SPLITS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_shards_match_single_process(rng, shape, dtype):
    x = rng.normal(3, 2, shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.normal(size=shape[1])
    dout = rng.normal(size=shape).astype(dtype)
    out, dx, dgamma, dbeta, mean, var, count = sharded_pass(x, gamma, beta, dout, SPLITS[shape])
    ref_out, cache = bn.batchnorm_forward(x, gamma, beta)
    ref_dx, ref_dgamma, ref_dbeta = bn.batchnorm_backward_fused(dout, cache)
    assert count == x.size // shape[1]
    assert out.dtype == dx.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for got, want in [(out, ref_out), (dx, ref_dx), (dgamma, ref_dgamma), (dbeta, ref_dbeta),
                      (mean, cache.mu), (var, cache.var)]:
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, np.abs(want).max()))


def test_float64_agreement_is_tight(rng):
    x = rng.normal(3, 2, (100, 7))
    gamma, beta, dout = rng.uniform(0.5, 2, 7), rng.normal(size=7), rng.normal(size=x.shape)
    out, dx, dgamma, dbeta, *_ = sharded_pass(x, gamma, beta, dout, [13, 1, 50, 36])
    ref_out, cache = bn.batchnorm_forward(x, gamma, beta)
    ref = bn.batchnorm_backward_fused(dout, cache)
    for got, want in zip((out, dx, dgamma, dbeta), (ref_out,) + ref):
        assert np.abs(got - want).max() <= 1e-12


def test_merge_is_exact_for_unequal_shards_and_far_means(rng):
    # Chan's merge keeps the digits of data sitting far from zero
    x = rng.normal(1e6, 1.0, (1000, 3))
    sizes = [1, 999], [500, 500], [3, 300, 697]
    for s in sizes:
        edges = np.cumsum([0] + list(s))
        stats = [bn.batch_stats(x[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        count, mean, var = bn.merge_stats(*zip(*stats))
        assert count == 1000
        exact = np.array([math.fsum(col) / col.size for col in x.T])
        np.testing.assert_allclose(mean, exact, rtol=1e-15)
        exact_var = np.array([math.fsum((col - e) ** 2) / col.size for col, e in zip(x.T, exact)])
        np.testing.assert_allclose(var, exact_var, rtol=1e-9)


def test_empty_shards_are_skipped_and_merge_order_is_fixed(rng):
    x = rng.normal(size=(10, 4))
    c, m, m2 = bn.batch_stats(x)
    count, mean, var = bn.merge_stats([0, c, 0], [np.full(4, 99.0), m, np.zeros(4)],
                                      [np.zeros(4), m2, np.zeros(4)])
    assert count == 10
    np.testing.assert_array_equal(mean, m)
    np.testing.assert_array_equal(var, m2 / c)
    a = bn.merge_stats([3, 7], [m, m + 1], [m2, m2])
    b = bn.merge_stats([3, 7], [m, m + 1], [m2, m2])
    assert all(np.array_equal(p, q) for p, q in zip(a[1:], b[1:]))


def test_batch_stats_float32_accumulates_in_float64(rng):
    x = rng.normal(100, 1, (4000, 3)).astype(np.float32)
    count, mean, m2 = bn.batch_stats(x)
    assert mean.dtype == m2.dtype == np.float64
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-14)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(0)) ** 2).sum(0), rtol=1e-10)


def test_eval_gradient_from_zero_sums(rng):
    x, dout = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    gamma, ivar = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    dx = bn.backward_elementwise(dout, x, np.zeros(3), ivar, gamma, np.zeros(3), np.zeros(3), 6)
    np.testing.assert_allclose(dx, gamma * ivar * dout, rtol=1e-15)


@pytest.mark.parametrize("shape", [(70000, 2), (5, 3, 7, 9), (64, 300)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_independent_of_thread_count(rng, shape, dtype):
    x = rng.normal(3, 2, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    C = shape[1]
    g, b = rng.uniform(0.5, 2, C), rng.normal(size=C)
    runs = []
    for nt in (1, 2, 3, 8):
        c, m, m2 = bn.batch_stats(x, num_threads=nt)
        count, mean, var = bn.merge_stats([c, c], [m, m + 1], [m2, m2], num_threads=nt)
        iv = 1 / np.sqrt(var + 1e-5)
        out = bn.normalize(x, mean, iv, g, b, num_threads=nt)
        sd, sdx = bn.backward_reduce(dout, x, mean, num_threads=nt)
        dx = bn.backward_elementwise(dout, x, mean, iv, g, sd, sdx, count, num_threads=nt)
        runs.append([a.tobytes() for a in (m, m2, mean, var, out, sd, sdx, dx)])
    assert all(r == runs[0] for r in runs[1:])


def test_inputs_are_not_modified(rng):
    x = rng.normal(size=(8, 3))
    x.flags.writeable = False
    dout = np.asfortranarray(rng.normal(size=(8, 3)))
    keep = x.copy(), dout.copy()
    c, m, m2 = bn.batch_stats(x)
    count, mean, var = bn.merge_stats([c], [m], [m2])
    iv = 1 / np.sqrt(var + 1e-5)
    bn.normalize(x, mean, iv, np.ones(3), np.zeros(3))
    sd, sdx = bn.backward_reduce(dout, x, mean, iv)
    bn.backward_elementwise(dout, x, mean, iv, np.ones(3), sd, sdx, count)
    np.testing.assert_array_equal(x, keep[0])
    np.testing.assert_array_equal(dout, keep[1])


X = np.arange(12.0).reshape(4, 3)
M, IV, G, B = np.zeros(3), np.ones(3), np.ones(3), np.zeros(3)
SD = np.zeros(3)

BAD = [
    ("batch_stats x strings", lambda: bn.batch_stats([["a"]]), TypeError, "x"),
    ("batch_stats x 1-d", lambda: bn.batch_stats(np.ones(3)), ValueError, "x"),
    ("batch_stats x empty", lambda: bn.batch_stats(np.ones((0, 3))), ValueError, "x"),
    ("batch_stats threads", lambda: bn.batch_stats(X, num_threads=0), ValueError, "num_threads"),
    ("merge counts 2-d", lambda: bn.merge_stats([[1]], [M], [M]), ValueError, "counts"),
    ("merge counts empty", lambda: bn.merge_stats([], np.zeros((0, 3)), np.zeros((0, 3))),
     ValueError, "counts"),
    ("merge counts negative",
     lambda: bn.merge_stats([-1, 3], [M, M], [M, M]), ValueError, "counts"),
    ("merge counts fractional", lambda: bn.merge_stats([1.5], [M], [M]), ValueError, "counts"),
    ("merge counts all zero", lambda: bn.merge_stats([0, 0], [M, M], [M, M]), ValueError, "counts"),
    ("merge counts strings", lambda: bn.merge_stats(["a"], [M], [M]), TypeError, "counts"),
    ("merge means wrong P", lambda: bn.merge_stats([1, 2], [M], [M, M]), ValueError, "means"),
    ("merge m2s wrong C", lambda: bn.merge_stats([1], [M], [np.zeros(4)]), ValueError, "m2s"),
    ("merge m2s negative", lambda: bn.merge_stats([2], [M], [-IV]), ValueError, "m2s"),
    ("merge means complex", lambda: bn.merge_stats([2], [M + 1j], [M]), TypeError, "means"),
    ("normalize mean shape", lambda: bn.normalize(X, np.zeros(4), IV, G, B), ValueError, "mean"),
    ("normalize ivar strings", lambda: bn.normalize(X, M, ["a"] * 3, G, B), TypeError, "ivar"),
    ("normalize gamma shape", lambda: bn.normalize(X, M, IV, np.ones(2), B), ValueError, "gamma"),
    ("normalize beta None", lambda: bn.normalize(X, M, IV, G, None), TypeError, "beta"),
    ("reduce dout shape", lambda: bn.backward_reduce(np.ones((3, 3)), X, M), ValueError, "dout"),
    ("reduce mean shape", lambda: bn.backward_reduce(X, X, np.zeros(2)), ValueError, "mean"),
    ("reduce ivar shape", lambda: bn.backward_reduce(X, X, M, np.ones(2)), ValueError, "ivar"),
    ("elementwise count 0", lambda: bn.backward_elementwise(X, X, M, IV, G, SD, SD, 0),
     ValueError, "count"),
    ("elementwise count float", lambda: bn.backward_elementwise(X, X, M, IV, G, SD, SD, 4.0),
     TypeError, "count"),
    ("elementwise count bool", lambda: bn.backward_elementwise(X, X, M, IV, G, SD, SD, True),
     TypeError, "count"),
    ("elementwise sums shape", lambda: bn.backward_elementwise(X, X, M, IV, G, SD[:2], SD, 4),
     ValueError, "sum_dout"),
    ("elementwise sdx strings", lambda: bn.backward_elementwise(X, X, M, IV, G, SD, ["a"] * 3, 4),
     TypeError, "sum_dout_xmu"),
    ("elementwise gamma shape", lambda: bn.backward_elementwise(X, X, M, IV, M[:1], SD, SD, 4),
     ValueError, "gamma"),
]


@pytest.mark.parametrize("name,call,exc,arg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(name, call, exc, arg):
    with pytest.raises(exc, match=rf"^{arg}:"):
        call()


SIMD_LEVELS = [pytest.param("avx2", marks=pytest.mark.skipif(
                   not _openmp.cpu_has_avx2(), reason="CPU without AVX2")),
               pytest.param("avx512", marks=pytest.mark.skipif(
                   not _openmp.cpu_has_avx512(), reason="CPU without AVX-512"))]


@pytest.mark.parametrize("level", SIMD_LEVELS)
@pytest.mark.parametrize("shape", [(300, 37), (5, 3, 7, 9), (70000, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_builds_and_baseline_agree_bitwise(monkeypatch, rng, shape, dtype, level):
    import importlib

    from cybatchnorm import _split
    fast = importlib.import_module(f"cybatchnorm._split_{level}")
    x = rng.normal(3, 2, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, shape[1]), rng.normal(size=shape[1])
    runs = []
    for module in (_split, fast):
        monkeypatch.setattr(_engine, "split", module)
        c, m, m2 = bn.batch_stats(x)
        count, mean, var = bn.merge_stats([c, 3], [m, m * 2], [m2, m2])
        iv = 1 / np.sqrt(var + 1e-5)
        sd, sdx = bn.backward_reduce(dout, x, mean)
        res = [m, m2, mean, var, bn.normalize(x, mean, iv, g, b), sd, sdx,
               bn.backward_elementwise(dout, x, mean, iv, g, sd, sdx, count)]
        runs.append([a.tobytes() for a in res])
    assert runs[0] == runs[1]
    assert _split.SIMD == "baseline" and fast.SIMD == level


def test_inverse_std_is_the_kernels_rule(rng):
    # merged statistics normalize with the bits of a single process
    from cybatchnorm.split import inverse_std
    x = rng.normal(3.0, 2.0, (37, 6, 5))
    _, cache = bn.batchnorm_forward(x, np.ones(6), np.zeros(6), eps=1e-3)
    np.testing.assert_array_equal(inverse_std(cache.var, 1e-3), cache.ivar64)
