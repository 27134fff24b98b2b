"""Layer norm and group norm (cybatchnorm.norms): against the numpy reference
and centred differences, bitwise the same for any thread count and SIMD build,
float32 accurate at large offsets, bad input refused by name."""
import copy
import importlib
import pickle

import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn
from cybatchnorm import _engine

LAYER = [((8, 12), (12,)), ((4, 5, 16), (16,)), ((3, 4, 5), (4, 5)), ((1, 7), (7,)),
         ((300, 1000), (1000,)), ((2, 3), (2, 3))]
GROUP = [((4, 6, 5, 5), 3), ((2, 8, 7), 4), ((3, 6), 2), ((2, 6, 3, 3), 6), ((2, 6, 4), 1),
         ((16, 64, 20, 20), 32)]


def _data(shape, pshape, dtype, rng, offset=0.0):
    x = (rng.normal(size=shape) * 3 + offset + 1).astype(dtype)
    g = rng.uniform(0.5, 2.0, pshape).astype(dtype)
    b = rng.normal(size=pshape).astype(dtype)
    d = rng.normal(size=shape).astype(dtype)
    return x, g, b, d


def _simd_builds():
    # the kernels' module of every SIMD level this machine runs
    levels = [lv for lv in _engine.SIMD_BUILT if lv != "baseline"]
    return [importlib.import_module("cybatchnorm._norms")] + [
        importlib.import_module(f"cybatchnorm._norms_{lv}") for lv in levels
        if _engine.LEVELS.index(lv) <= _engine.LEVELS.index(_engine.SIMD)]


def _layer(x, g, b, d, nt=None, staged=False, kind="full"):
    out, cache = bn.layernorm_forward(x, g, b, num_threads=nt, cache=kind)
    backward = bn.layernorm_backward if staged else bn.layernorm_backward_fused
    return (out,) + backward(d, cache, num_threads=nt)


def _group(G):
    def run(x, g, b, d, nt=None, staged=False, kind="full"):
        out, cache = bn.groupnorm_forward(x, g, b, G, num_threads=nt, cache=kind)
        backward = bn.groupnorm_backward if staged else bn.groupnorm_backward_fused
        return (out,) + backward(d, cache, num_threads=nt)
    return run


CASES = ([(f"layer {s}", s, p, _layer, lambda x, g, b, d: ref.layernorm(x, g, b, d))
          for s, p in LAYER]
         + [(f"group {s} G={G}", s, (s[1],), _group(G),
             lambda x, g, b, d, G=G: ref.groupnorm(x, g, b, G, d)) for s, G in GROUP])
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES, ids=IDS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("staged", [False, True], ids=["fused", "staged"])
def test_forward_and_backward_match_the_reference(rng, name, shape, pshape, ours, theirs,
                                                  dtype, tol, staged):
    x, g, b, d = _data(shape, pshape, dtype, rng)
    got = ours(x, g, b, d, staged=staged)
    want = theirs(x.astype(np.float64), g, b, d)
    for label, a, w in zip(("out", "dx", "dgamma", "dbeta"), got, want):
        assert a.dtype == dtype and a.shape == w.shape, label
        scale = max(1.0, np.abs(w).max())
        assert np.abs(a - w).max() <= tol * scale * (10 if label != "out" else 1), label


@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES[:4] + CASES[6:10],
                         ids=IDS[:4] + IDS[6:10])
def test_gradients_match_centred_differences(rng, name, shape, pshape, ours, theirs):
    x, g, b, d = _data(shape, pshape, np.float64, rng)
    _, dx, dg, db = ours(x, g, b, d)
    h = 1e-6

    def loss(xv, gv, bv):
        return float(np.sum(ours(xv, gv, bv, d)[0] * d))
    for arr, grad, which in ((x, dx, 0), (g, dg, 1), (b, db, 2)):
        flat = arr.reshape(-1)
        for i in rng.choice(flat.size, min(flat.size, 12), replace=False):
            args = [x.copy(), g.copy(), b.copy()]
            args[which].reshape(-1)[i] += h
            up = loss(*args)
            args[which].reshape(-1)[i] -= 2 * h
            num = (up - loss(*args)) / (2 * h)
            assert abs(num - grad.reshape(-1)[i]) <= 1e-6 * max(1.0, abs(num)), (which, i)


@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES, ids=IDS)
@pytest.mark.parametrize("staged", [False, True], ids=["fused", "staged"])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_bitwise_the_same_for_any_thread_count(rng, name, shape, pshape, ours, theirs, staged,
                                               kind):
    x, g, b, d = _data(shape, pshape, np.float32, rng)
    runs = [ours(x, g, b, d, nt, staged, kind) for nt in (1, 2, 3, 5)]
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert a.tobytes() == c.tobytes()


def test_bitwise_the_same_for_every_simd_build(monkeypatch, rng):
    mods = _simd_builds()
    for name, shape, pshape, ours, _ in CASES:
        x, g, b, d = _data(shape, pshape, np.float32, rng)
        runs = []
        for mod in mods:
            monkeypatch.setattr(_engine, "norms", mod)
            runs.append(ours(x, g, b, d, 2) + ours(x, g, b, d, 2, kind="minimal"))
        for other in runs[1:]:
            for a, c in zip(runs[0], other):
                assert a.tobytes() == c.tobytes(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("R, M, G, S", [(300, 1000, 1, 1), (263, 37, 1, 1), (70, 24, 3, 1),
                                        (40, 3 * 50, 4, 50)])
def test_kernels_float64_results_are_bitwise_the_same_for_every_simd_build(rng, dtype, R, M,
                                                                           G, S):
    # the kernels' own float64 statistics and parameter gradients (the API
    # rounds the gradients to float32 for float32 data, which would hide a
    # different order of the float64 sums): layer norm's rows four at a time
    # where the vectors allow (AVX-512), one by one elsewhere, the same bits
    x = (rng.normal(size=(R, M)) * 3 + 1).astype(dtype)
    d = rng.normal(size=(R, M)).astype(dtype)
    P = G * (M // S)
    g, b = rng.uniform(0.5, 2.0, P).astype(dtype), rng.normal(size=P).astype(dtype)
    runs = []
    for mod in _simd_builds():
        out, dx = np.empty_like(x), np.empty_like(x)
        mean, var, ivar = np.empty(R), np.empty(R), np.empty(R)
        mod.forward(x, g, b, 1e-5, G, S, out, mean, var, ivar, 2, fast=True)
        K = mod.row_chunks(R, P)
        dg, db = np.empty(P), np.empty(P)
        mod.backward(d, x, mean, ivar, g, G, S, dx, dg, db, np.empty((K, P)), np.empty((K, P)),
                     2, fast=True)
        runs.append((out, mean, var, ivar, dx, dg, db))
    assert len(runs) == len(_simd_builds())
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 3])
def test_forward_rows_have_the_bits_of_each_row_alone(rng, dtype, nt):
    # a task sums a row's squared deviations in one loop with the next row's
    # values: the same statistics and outputs as each row normalized alone
    from cybatchnorm import _norms
    R, M, G, S = 37, 3 * 45, 3, 45
    x = (rng.normal(size=(R, M)) * 3 + 1).astype(dtype)
    g, b = rng.uniform(0.5, 2.0, G * 3).astype(dtype), rng.normal(size=G * 3).astype(dtype)

    def run(xs, G):
        out, stats = np.empty_like(xs), [np.empty(len(xs)) for _ in range(3)]
        _norms.forward(xs, g, b, 1e-5, G, S, out, *stats, nt, fast=True)
        return [out] + stats
    whole = run(x, G)
    for r in range(R):
        # row r alone: group r % G's parameters (G = 1 and the group's slice)
        c = (r % G) * 3
        out, stats = np.empty_like(x[r:r + 1]), [np.empty(1) for _ in range(3)]
        _norms.forward(x[r:r + 1], g[c:c + 3], b[c:c + 3], 1e-5, 1, S, out, *stats, nt,
                       fast=True)
        for a, one in zip(whole, [out] + stats):
            assert a[r:r + 1].tobytes() == one.tobytes(), r


@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES, ids=IDS)
def test_staged_and_fused_agree_and_a_minimal_cache_gives_the_same_bits(
        rng, name, shape, pshape, ours, theirs):
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x, g, b, d = _data(shape, pshape, dtype, rng)
        staged, fused = ours(x, g, b, d, staged=True), ours(x, g, b, d)
        for s, f in zip(staged[1:], fused[1:]):
            assert np.abs(s - f).max() <= tol * max(1.0, np.abs(f).max())
        minimal = ours(x, g, b, d, staged=True, kind="minimal")
        # the same statistics and gradients; a minimal cache's float32 output
        # comes from the float32 path (within its bound), float64 bitwise
        for s, m in zip(staged[1:], minimal[1:]):
            assert s.tobytes() == m.tobytes()
        if dtype == np.float64:
            assert staged[0].tobytes() == minimal[0].tobytes()
        else:
            assert np.abs(staged[0] - minimal[0]).max() <= 2e-6 * max(1.0, np.abs(staged[0]).max())


def test_the_staged_backward_walks_the_node_kernels(monkeypatch, rng):
    # layernorm_backward runs batch norm's NODES in their views: a broken
    # node breaks it, and leaves the fused backward alone
    from cybatchnorm import graph
    x, g, b, d = _data((6, 8), (8,), np.float64, rng)
    good = _layer(x, g, b, d, staged=True)
    i = [n.name for n in graph.NODES].index("sq")
    orig = graph.NODES[i]

    def wrong_op(dsq, xmu3, nt, out):      # 3 instead of 2, dsq the (C,) vector
        return np.multiply(3 * xmu3, dsq[None, :, None], out=out)
    broken = orig.__class__(**{**orig.__dict__, "adds": False, "backward_op": wrong_op})
    monkeypatch.setattr(graph, "NODES", graph.NODES[:i] + (broken,) + graph.NODES[i + 1:])
    bad = _layer(x, g, b, d, staged=True)
    assert np.abs(bad[1] - good[1]).max() > 1e-3
    assert bad[3].tobytes() == good[3].tobytes()      # dbeta does not pass through sq
    assert all(a.tobytes() == c.tobytes() for a, c in zip(_layer(x, g, b, d), (
        good[0],) + bn.layernorm_backward_fused(d, bn.layernorm_forward(x, g, b)[1])))


@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_float32_keeps_its_precision_far_from_zero(rng, offset):
    # the statistics are exact two-pass float64 sums and each value is
    # computed in float64: the float32 error is the output's own rounding
    x, g, b, d = _data((64, 256), (256,), np.float32, rng, offset)
    out, dx, dg, db = _layer(x, g, b, d)
    w = ref.layernorm(x.astype(np.float64), g, b, d)
    assert np.abs(out - w[0]).max() <= 4 * np.finfo(np.float32).eps * np.abs(w[0]).max()
    assert np.abs(dx - w[1]).max() <= 1e-4 * np.abs(w[1]).max()


def test_out_and_dx_are_written_in_place_and_the_cache_is_its_own(rng):
    x, g, b, d = _data((6, 4, 5), (4,), np.float64, rng)
    out, dx = np.empty_like(x), np.empty_like(x)
    res, cache = bn.groupnorm_forward(x, g, b, 2, out=out)
    assert res is out
    x[...] = 0.0                                   # the cache holds its own copy
    assert bn.groupnorm_backward_fused(d, cache, dx=dx)[0] is dx
    x2, g2, b2, d2 = _data((6, 4, 5), (4,), np.float64, np.random.default_rng(12345))
    want = ref.groupnorm(x2, g2, b2, 2, d2)
    np.testing.assert_allclose(dx, want[1], rtol=1e-10, atol=1e-12)
    for name in ("x", "gamma", "beta", "mu", "ivar", "xmu", "xhat", "mu64", "ivar64"):
        assert not getattr(cache, name).flags.writeable, name
    with pytest.raises(AttributeError):
        cache.eps = 1.0
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        again = bn.groupnorm_backward_fused(d, clone)
        for a, c in zip(again, bn.groupnorm_backward_fused(d, cache)):
            assert a.tobytes() == c.tobytes()


_X, _G = np.ones((4, 6)) * np.arange(6), np.ones(6)
_, _LC = bn.layernorm_forward(_X, _G, _G)
_, _GC = bn.groupnorm_forward(_X.reshape(4, 6, 1), _G, _G, 3)

BAD = [
    ("layer gamma not trailing", lambda: bn.layernorm_forward(_X, np.ones(4), np.ones(4)),
     ValueError, "gamma"),
    ("layer gamma scalar", lambda: bn.layernorm_forward(_X, 1.0, 1.0), ValueError, "gamma"),
    ("layer gamma empty shape", lambda: bn.layernorm_forward(np.ones((2, 0)), np.ones(0),
                                                             np.ones(0)), ValueError, "gamma"),
    ("layer beta shape", lambda: bn.layernorm_forward(_X, _G, np.ones(5)), ValueError, "beta"),
    ("layer x strings", lambda: bn.layernorm_forward([["a"] * 6], _G, _G), TypeError, "x"),
    ("layer gamma complex", lambda: bn.layernorm_forward(_X, _G + 1j, _G), TypeError, "gamma"),
    ("layer eps 0", lambda: bn.layernorm_forward(_X, _G, _G, 0.0), ValueError, "eps"),
    ("layer num_threads 0", lambda: bn.layernorm_forward(_X, _G, _G, num_threads=0),
     ValueError, "num_threads"),
    ("layer out aliasing x", lambda: bn.layernorm_forward(_X, _G, _G, out=_X), ValueError,
     "out"),
    ("layer out wrong dtype", lambda: bn.layernorm_forward(_X, _G, _G,
                                                           out=np.empty((4, 6), np.float32)),
     ValueError, "out"),
    ("group num_groups 4 of 6", lambda: bn.groupnorm_forward(_X, _G, _G, 4), ValueError,
     "num_groups"),
    ("group num_groups 0", lambda: bn.groupnorm_forward(_X, _G, _G, 0), ValueError,
     "num_groups"),
    ("group num_groups float", lambda: bn.groupnorm_forward(_X, _G, _G, 2.0), TypeError,
     "num_groups"),
    ("group gamma shape", lambda: bn.groupnorm_forward(_X, np.ones(3), _G, 3), ValueError,
     "gamma"),
    ("group x 1-d", lambda: bn.groupnorm_forward(np.ones(6), _G, _G, 3), ValueError, "x"),
    ("backward cache of the other norm", lambda: bn.layernorm_backward_fused(_X, _GC),
     ValueError, "cache"),
    ("backward batch norm cache", lambda: bn.groupnorm_backward_fused(
        _X, bn.batchnorm_forward(_X, _G, _G)[1]), TypeError, "cache"),
    ("backward dout shape", lambda: bn.layernorm_backward_fused(np.ones((4, 5)), _LC),
     ValueError, "dout"),
    ("staged dout shape", lambda: bn.layernorm_backward(np.ones((4, 5)), _LC), ValueError,
     "dout"),
    ("staged cache of the other norm", lambda: bn.groupnorm_backward(_X, _LC), ValueError,
     "cache"),
    ("layer cache kind", lambda: bn.layernorm_forward(_X, _G, _G, cache="all"), ValueError,
     "cache"),
    ("group cache kind list", lambda: bn.groupnorm_forward(_X, _G, _G, 2, cache=["full"]),
     ValueError, "cache"),
    ("backward dx read-only", lambda: bn.layernorm_backward_fused(
        _X, _LC, dx=np.broadcast_to(_G, (4, 6))), ValueError, "dx"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused_by_name(call, exc, name):
    before = _X.copy()
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()
    np.testing.assert_array_equal(_X, before)


@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES[:4] + CASES[6:10],
                         ids=IDS[:4] + IDS[6:10])
def test_the_textbook_walks_serve_layer_and_group_norm(rng, name, shape, pshape, ours, theirs):
    from cybatchnorm import graph
    x, g, b, d = _data(shape, pshape, np.float64, rng)
    if name.startswith("layer"):
        red = graph.Reduction("layer", k=len(pshape))
        out, cache = bn.layernorm_forward(x, g, b)
        staged = bn.layernorm_backward(d, cache)
    else:
        G = int(name.split("G=")[1])
        red = graph.Reduction("group", groups=G)
        out, cache = bn.groupnorm_forward(x, g, b, G)
        staged = bn.groupnorm_backward(d, cache)
    values = graph.forward(x, g, b, reduction=red)
    np.testing.assert_allclose(values["out"], out, rtol=1e-12, atol=1e-12)
    R = x.size // int(np.prod(red.views(shape)["stats"][2]))
    assert values["mu"].shape == values["ivar"].shape == (R,)
    walk = graph.backward(d, cache, keep=True)
    for k, s in zip(("dx", "dgamma", "dbeta"), staged):     # the staged walk, bit for bit
        assert walk[k].tobytes() == s.tobytes(), k
    assert walk["dxhat"].shape == shape and walk["dmu"].shape == (R,)


def test_a_minimal_cache_makes_xmu_and_xhat_once(monkeypatch, rng):
    # the staged walk reads xhat (gammax), then xmu twice (xhat, sq): a
    # minimal cache makes both on the first read and keeps them
    from cybatchnorm import _node_ops
    calls = []
    real = _node_ops.xmu_fwd
    monkeypatch.setattr(_node_ops, "xmu_fwd", lambda *a: calls.append(1) or real(*a))
    x, g, b, d = _data((6, 8), (8,), np.float64, rng)
    _, cache = bn.layernorm_forward(x, g, b, cache="minimal")
    first = bn.layernorm_backward(d, cache)
    again = bn.layernorm_backward(d, cache)
    assert len(calls) == 1
    assert all(a.tobytes() == c.tobytes() for a, c in zip(first, again))
    assert not cache.xmu.flags.writeable and not cache.xhat.flags.writeable


# ------------------------------------------- the channels-last kernels (NHWC)

def _nhwc(x, g, b, d, G, nt=2):
    # the channels-last kernels on x's (N, S, C) transpose, results in x's (N, C, ...) order
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(N, -1, C)
    d3 = np.ascontiguousarray(np.moveaxis(d, 1, -1)).reshape(x3.shape)
    out3, dx3 = np.empty_like(x3), np.empty_like(x3)
    mean, var, ivar = _engine.norm_forward_nhwc(x3, g, b, 1e-5, G, out3, nt)
    dg, db = _engine.norm_backward_nhwc(d3, x3, mean, ivar, g, G, dx3, nt)

    def back(a):
        return np.moveaxis(a.reshape((N,) + x.shape[2:] + (C,)), -1, 1)
    return back(out3), mean, var, ivar, back(dx3), dg, db


NHWC = [((4, 6, 3, 5), 3), ((2, 64, 7, 7), 32), ((3, 5, 2, 2), 5), ((2, 8, 1, 1), 1),
        ((5, 4, 9), 2), ((2, 6, 2, 3, 2), 3)]


@pytest.mark.parametrize("shape, G", NHWC)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channels_last_kernels_agree_with_the_row_kernels(rng, shape, G, dtype):
    x, g, b, d = _data(shape, (shape[1],), dtype, rng)
    x = (x * 3 + 50).astype(dtype)     # an offset: the statistics are two-pass in both
    out, cache = bn.groupnorm_forward(x, g, b, G)
    dx, dg, db = bn.groupnorm_backward_fused(d, cache)
    o, mean, var, ivar, dx2, dg2, db2 = _nhwc(x, g, b, d, G)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(mean, cache.mu64, rtol=1e-14)
    np.testing.assert_allclose(var, cache.var64, rtol=1e-11)
    for a, w in ((o, out), (dx2, dx), (dg2, dg), (db2, db)):
        np.testing.assert_allclose(a, w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("shape, G", NHWC)
def test_channels_last_kernels_are_bitwise_the_same_for_any_thread_count(rng, shape, G):
    x, g, b, d = _data(shape, (shape[1],), np.float32, rng)
    runs = [_nhwc(x, g, b, d, G, nt) for nt in (1, 2, 3, 5)]
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert a.tobytes() == c.tobytes()


def test_channels_last_kernels_are_bitwise_the_same_for_every_simd_build(monkeypatch, rng):
    mods = _simd_builds()
    for shape, G in NHWC:
        x, g, b, d = _data(shape, (shape[1],), np.float32, rng)
        runs = []
        for mod in mods:
            monkeypatch.setattr(_engine, "norms", mod)
            runs.append(_nhwc(x, g, b, d, G))
        for other in runs[1:]:
            for a, c in zip(runs[0], other):
                assert a.tobytes() == c.tobytes(), shape


def test_channels_last_kernels_refuse_short_scratch():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"work must be at least \(N, 3 \* C\)"):
        _engine.norms.forward_nhwc(x, np.ones(4), np.zeros(4), 1e-5, 2, np.empty_like(x),
                                   np.empty(4), np.empty(4), np.empty(4), np.empty((2, 11)), 1)


# ------------------------------------------- group norm of channels-last data (axis=-1)

@pytest.mark.parametrize("shape, G", NHWC)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_channels_last_group_norm_matches_channels_first(rng, shape, G, dtype, kind):
    x, g, b, d = _data(shape, (shape[1],), dtype, rng, offset=20.0)
    out, cache = bn.groupnorm_forward(x, g, b, G)
    fused, staged = bn.groupnorm_backward_fused(d, cache), bn.groupnorm_backward(d, cache)
    xl, dl = np.moveaxis(x, 1, -1), np.moveaxis(d, 1, -1)
    out2, cache2 = bn.groupnorm_forward(xl, g, b, G, axis=-1, cache=kind)
    assert out2.shape == xl.shape and cache2.axis == -1 and cache2.shape == xl.shape
    fused2 = bn.groupnorm_backward_fused(dl, cache2)
    staged2 = bn.groupnorm_backward(dl, cache2)
    tol = 1e-12 if dtype == np.float64 else 3e-6
    first = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    for a, w in ((first(out2), out), (first(fused2[0]), fused[0]), (first(staged2[0]), staged[0]),
                 (first(cache2.xhat), cache.xhat), (first(cache2.xmu), cache.xmu)):
        np.testing.assert_allclose(a, w, rtol=tol, atol=tol * np.abs(w).max())
    for a, w in zip(fused2[1:] + staged2[1:], fused[1:] + staged[1:]):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, w, rtol=tol, atol=tol * np.abs(w).max())
    np.testing.assert_allclose(cache2.mu64, cache.mu64, rtol=1e-13)


def test_channels_last_group_norm_writes_out_and_dx_and_keeps_its_own_x(rng):
    x, g, b, d = _data((2, 3, 4, 6), (6,), np.float64, rng)
    out = np.empty_like(x)
    res, cache = bn.groupnorm_forward(x, g, b, 2, axis=-1, out=out)
    assert res is out
    x[...] = 0.0                                    # the cache holds its own copy
    dx = np.empty_like(x)
    fused = bn.groupnorm_backward_fused(d, cache)[0]
    for backward in (bn.groupnorm_backward_fused, bn.groupnorm_backward):
        got = backward(d, cache, dx=dx)
        assert got[0] is dx
        np.testing.assert_allclose(dx, fused, rtol=1e-12, atol=1e-13)
    again = pickle.loads(pickle.dumps(cache))
    assert again.axis == -1 and repr(again).endswith("axis=-1)")
    np.testing.assert_array_equal(bn.groupnorm_backward_fused(d, again)[0], fused)


def test_channels_last_group_norm_refuses_bad_input(rng):
    x = rng.normal(size=(2, 3, 4, 6))
    with pytest.raises(ValueError, match="axis: expected 1 .* or -1"):
        bn.groupnorm_forward(x, np.ones(4), np.zeros(4), 2, axis=2)
    with pytest.raises(TypeError, match="axis: expected 1 or -1, got a bool"):
        bn.groupnorm_forward(x, np.ones(3), np.zeros(3), 1, axis=True)
    with pytest.raises(ValueError, match="num_groups: expected a divisor of the 6 channels"):
        bn.groupnorm_forward(x, np.ones(6), np.zeros(6), 4, axis=-1)
    with pytest.raises(ValueError, match=r"gamma: expected shape \(6,\)"):
        bn.groupnorm_forward(x, np.ones(3), np.zeros(6), 2, axis=-1)
    with pytest.raises(ValueError, match="an axis has size 0"):
        bn.groupnorm_forward(np.zeros((2, 0, 4, 6)), np.ones(6), np.zeros(6), 2, axis=-1)
    _, cache = bn.groupnorm_forward(x, np.ones(6), np.zeros(6), 2, axis=-1)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 3, 4, 6\)"):
        bn.groupnorm_backward_fused(np.moveaxis(x, -1, 1), cache)
    from cybatchnorm import graph
    with pytest.raises(ValueError, match="channels-last group norm's cache"):
        graph.backward(x, cache)


# ------------------------------------------- a minimal cache's float32 path

@pytest.mark.parametrize("name, shape, pshape, ours, theirs", CASES, ids=IDS)
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
def test_minimal_cache_float32_path_stays_within_its_bound(rng, name, shape, pshape, ours,
                                                           theirs, offset):
    # float32 output and dx computed in float32 ((x - fl(mu)) * a + b), the
    # sums in float64: within 2e-6 of the float64 computation relative to
    # the largest value, however far the data sit from zero
    x, g, b, d = _data(shape, pshape, np.float32, rng, offset)
    fast = ours(x, g, b, d, kind="minimal")
    exact = ours(*(a.astype(np.float64) for a in (x, g, b, d)))
    for label, a, w in zip(("out", "dx", "dgamma", "dbeta"), fast, exact):
        assert a.dtype == np.float32
        err = np.abs(a - w).max() / max(np.abs(w).max(), 1e-30)
        assert err <= 2e-6, (label, err)


@pytest.mark.parametrize("shape, G", [((1050, 4003), None), ((4, 2 ** 20 + 5), None),
                                      ((6, 8, 300, 301), 4), ((6, 8, 300, 301), 8)],
                         ids=["layer", "layer long rows", "group", "instance"])
def test_rows_written_past_the_caches_have_the_same_bits(rng, shape, G):
    # outputs over 16 MiB are streamed (non-temporal stores, the next row
    # prefetched, the cache's x copied past the caches): sample for sample
    # the bits of a small call's (odd runs: rows start unaligned; a row
    # longer than the whole small call)
    pshape = (shape[1],) if G else (shape[-1],)
    x, g, b, d = _data(shape, pshape, np.float32, rng)
    assert x.nbytes > 16 << 20

    def run(x, d):
        if G is None:
            out, cache = bn.layernorm_forward(x, g, b, cache="minimal")
            return (out, cache) + bn.layernorm_backward_fused(d, cache)
        out, cache = bn.groupnorm_forward(x, g, b, G, cache="minimal")
        return (out, cache) + bn.groupnorm_backward_fused(d, cache)
    out, cache, dx, dg, db = run(x, d)
    out1, _, dx1, _, _ = run(x[:2], d[:2])
    assert out[:2].tobytes() == out1.tobytes() and dx[:2].tobytes() == dx1.tobytes()
    assert cache.x.tobytes() == x.tobytes()
    _, ref_dx, ref_dg, ref_db = (ref.layernorm(x, g, b, d) if G is None
                                 else ref.groupnorm(x, g, b, G, d))
    np.testing.assert_allclose(dg, ref_dg, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=2e-5 * np.abs(ref_dx).max())


def test_minimal_cache_falls_back_to_float64_where_float32_cannot_hold_the_factors(rng):
    # std 1e-20 and gamma 1e30: gamma * ivar = 1e50 overflows float32,
    # though every output (about 1e30) is a float32 number
    x = (1e-20 * rng.normal(size=(4, 64))).astype(np.float32)
    g = np.full(64, 1e30, np.float32)
    b = np.zeros(64, np.float32)
    out, cache = bn.layernorm_forward(x, g, b, eps=1e-45, cache="minimal")
    full, _ = bn.layernorm_forward(x, g, b, eps=1e-45)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e29
    np.testing.assert_array_equal(out, full)           # the float64 path, both
