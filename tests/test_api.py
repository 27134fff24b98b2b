"""The functional API against the numpy reference."""
from cases import DTYPES, SHAPES
import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn
from cybatchnorm import Cache

# error of each dtype against the float64 reference, relative to scale
TOL = {np.float64: 1e-12, np.float32: 2e-6}

# shapes whose work grid is made of strips (every row of a block of channels
# in one task, reduced and then written while in cache) in both dtypes
STRIP_SHAPES = [(16, 512), (4, 16, 20, 20)]
SHAPES = SHAPES + STRIP_SHAPES


@pytest.mark.parametrize("shape", STRIP_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strip_shapes_use_the_strip_grid(shape, dtype):
    from cybatchnorm._engine import fused
    view = (shape[0], shape[1], int(np.prod(shape[2:])))
    assert fused.row_chunks(*view, np.dtype(dtype).itemsize) == 1
    # while a batch too tall for a strip is cut into row chunks
    assert fused.row_chunks(65536, 256, 1, np.dtype(dtype).itemsize) > 1


def make(rng, shape, dtype, mean=3.0, std=2.0):
    C = shape[1]
    x = rng.normal(mean, std, shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(dtype)
    beta = rng.uniform(-1, 1, C).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dout


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(rng, shape, dtype):
    x, g, b, _ = make(rng, shape, dtype)
    out, cache = bn.batchnorm_forward(x, g, b)
    r = ref.forward(x, g, b)
    assert out.dtype == dtype and out.shape == shape
    assert ref.rel(out, r["out"]) < TOL[dtype]
    for name in ("mu", "var", "sqrtvar", "ivar", "xmu", "xhat"):
        got = getattr(cache, name)
        assert got.dtype == dtype
        assert ref.rel(got, r[name]) < TOL[dtype] * 5, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["staged", "fused"])
def test_backward_matches_reference(rng, shape, dtype, which):
    x, g, b, dout = make(rng, shape, dtype)
    _, cache = bn.batchnorm_forward(x, g, b)
    fn = bn.batchnorm_backward if which == "staged" else bn.batchnorm_backward_fused
    dx, dgamma, dbeta = fn(dout, cache)
    vals = ref.forward(x, g, b)
    r = ref.backward_staged(dout, vals)
    tol = TOL[dtype] * (10 if dtype == np.float64 else 20)
    assert dx.shape == shape and dgamma.shape == dbeta.shape == (shape[1],)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == dtype
    assert ref.dx_error(dx, r["dx"], dout, vals) < tol
    assert ref.rel(dgamma, r["dgamma"]) < tol
    assert ref.rel(dbeta, r["dbeta"]) < tol


def test_reference_staged_equals_reference_fused(rng):
    # the two references are independent derivations of the same gradient
    x, g, b, dout = make(rng, (20, 6), np.float64)
    vals = ref.forward(x, g, b)
    s = ref.backward_staged(dout, vals)
    f = ref.backward_fused(dout, vals)
    assert ref.rel(f[0], s["dx"]) < 1e-13


@pytest.mark.longdouble
def test_large_mean_variance_is_exact():
    # E[x^2] - E[x]^2 would lose every digit here; the package must not
    rng = np.random.default_rng(7)
    x = rng.normal(1e6, 1.0, (4000, 8))
    out, cache = bn.batchnorm_forward(x, np.ones(8), np.zeros(8))
    r = ref.forward(x, np.ones(8), np.zeros(8), dtype=np.longdouble)
    assert ref.rel(cache.var, r["var"]) < 1e-9
    assert ref.rel(cache.mu, r["mu"]) < 1e-15
    assert ref.rel(out, r["out"]) < 1e-9
    naive = (x ** 2).mean(0) - x.mean(0) ** 2
    assert ref.rel(naive, r["var"]) > 1e-6  # the test data really is hard


@pytest.mark.longdouble
def test_large_mean_spatial():
    rng = np.random.default_rng(8)
    x = rng.normal(1e6, 1.0, (8, 3, 17, 19))
    _, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    r = ref.forward(x, np.ones(3), np.zeros(3), dtype=np.longdouble)
    assert ref.rel(cache.var, r["var"]) < 1e-9


def test_float32_accumulates_in_float64():
    # 2**24 + k values round away if summed in float32
    x = np.ones((1 << 17, 2), np.float32)
    x[::2] = 3.0
    out, cache = bn.batchnorm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32))
    assert cache.mu.tolist() == [2.0, 2.0]
    assert abs(float(cache.var[0]) - 1.0) < 1e-6


@pytest.mark.parametrize("in_dtype, comp", [
    (np.float16, np.float32), (np.int32, np.float64), (np.int64, np.float64),
    (np.uint8, np.float64), (np.bool_, np.float64), (np.float32, np.float32),
])
def test_dtype_rules(rng, in_dtype, comp):
    x = (rng.normal(size=(6, 3)) * 4).astype(in_dtype)
    out, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    assert out.dtype == comp and cache.dtype == comp
    expect, _ = bn.batchnorm_forward(x.astype(comp), np.ones(3, comp), np.zeros(3, comp))
    np.testing.assert_array_equal(out, expect)


def test_gamma_beta_dout_cast_to_x_dtype(rng):
    x, g, b, dout = make(rng, (8, 3), np.float32)
    out, cache = bn.batchnorm_forward(x, g.astype(np.float64), b.astype(np.int64))
    assert out.dtype == np.float32 and cache.gamma.dtype == np.float32
    dx, dg, db = bn.batchnorm_backward(dout.astype(np.float64), cache)
    assert dx.dtype == dg.dtype == db.dtype == np.float32


def test_array_likes(rng):
    x = [[1, 2], [3, 5], [4, 4]]
    out, cache = bn.batchnorm_forward(x, [1, 1], (0, 0))
    expect, _ = bn.batchnorm_forward(np.array(x, float), np.ones(2), np.zeros(2))
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("layout", ["fortran", "sliced", "negative", "transposed", "readonly"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_give_the_contiguous_result(rng, layout, dtype):
    base = rng.normal(2, 3, (24, 10)).astype(dtype)
    if layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "sliced":
        x = np.repeat(base, 2, axis=1)[:, ::2]
    elif layout == "negative":
        x = base[::-1, ::-1]
    elif layout == "transposed":
        x = base.T.copy().T
    else:
        x = base.copy()
        x.flags.writeable = False
    g, b = rng.uniform(size=10).astype(dtype), rng.uniform(size=10).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)[::-1]
    out, cache = bn.batchnorm_forward(x, g[::-1].copy()[::-1], b)
    cont, ccache = bn.batchnorm_forward(np.ascontiguousarray(x), g, b)
    np.testing.assert_array_equal(out, cont)
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        for got, want in zip(fn(dout, cache), fn(np.ascontiguousarray(dout), ccache)):
            np.testing.assert_array_equal(got, want)


def test_inputs_are_never_modified(rng):
    x, g, b, dout = make(rng, (12, 4, 3), np.float64)
    copies = [a.copy() for a in (x, g, b, dout)]
    out, cache = bn.batchnorm_forward(x, g, b)
    bn.batchnorm_backward(dout, cache)
    bn.batchnorm_backward_fused(dout, cache)
    for a, c in zip((x, g, b, dout), copies):
        np.testing.assert_array_equal(a, c)
    assert not np.shares_memory(out, x)


def test_cache_is_a_snapshot(rng):
    # updating gamma after the forward (an optimizer step) must not change
    # the gradient of that forward
    x, g, b, dout = make(rng, (10, 3), np.float64)
    _, cache = bn.batchnorm_forward(x, g, b)
    before = bn.batchnorm_backward(dout, cache)
    g *= 5
    after = bn.batchnorm_backward(dout, cache)
    for a, c in zip(before, after):
        np.testing.assert_array_equal(a, c)


def test_cache_attributes_and_cost(rng):
    x, g, b, _ = make(rng, (10, 3, 2), np.float32)
    _, cache = bn.batchnorm_forward(x, g, b, eps=1e-3)
    assert isinstance(cache, Cache)
    assert cache.eps == 1e-3 and cache.shape == x.shape and cache.mode == "train"
    for name in ("mu", "var", "sqrtvar", "ivar", "gamma", "beta"):
        assert getattr(cache, name).shape == (3,)
    for name in ("xmu", "xhat"):
        assert getattr(cache, name).shape == x.shape
        with pytest.raises(ValueError):
            getattr(cache, name)[0] = 1.0   # read-only
    assert cache.nbytes == 2 * x.nbytes + 6 * 3 * 4 + 2 * 3 * 8   # + float64 mu, ivar
    with pytest.raises(AttributeError):
        cache.mu = np.zeros(3)
    assert "Cache(" in repr(cache)


def test_constant_feature_gives_zero_not_nan():
    x = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    out, cache = bn.batchnorm_forward(x, np.ones(2), np.zeros(2))
    assert np.all(out[:, 0] == 0) and np.isfinite(out).all()
    dx, dg, db = bn.batchnorm_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_stays_in_its_feature(rng, bad, dtype):
    x, g, b, dout = make(rng, (9, 5), dtype)
    clean_out, clean_cache = bn.batchnorm_forward(x, g, b)
    x2 = x.copy()
    x2[4, 2] = bad
    out, cache = bn.batchnorm_forward(x2, g, b)
    assert np.isnan(out[:, 2]).any()
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(out[:, keep], clean_out[:, keep])
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        clean = fn(dout, clean_cache)
        dx, dg, db = fn(dout, cache)
        assert np.isnan(dx[:, 2]).any()
        np.testing.assert_array_equal(dx[:, keep], clean[0][:, keep])
        np.testing.assert_array_equal(dg[keep], clean[1][keep])


def test_zero_features_is_empty_not_an_error():
    x = np.zeros((4, 0))
    out, cache = bn.batchnorm_forward(x, np.zeros(0), np.zeros(0))
    assert out.shape == (4, 0)
    dx, dg, db = bn.batchnorm_backward(np.zeros((4, 0)), cache)
    assert dx.shape == (4, 0) and dg.shape == (0,)


def test_public_names_have_docstrings():
    for name in bn.__all__:
        obj = getattr(bn, name)
        if name != "__version__":
            assert obj.__doc__ and obj.__doc__.strip(), name
    for module in (bn.graph, bn.nodes, bn.staged, bn.split, bn.memory, bn.norms,
                   bn.norm_layers):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name}"


@pytest.mark.parametrize("shape", [(512, 256), (8, 16, 12, 12), (4096, 3)])
def test_fused_path_allocates_nothing_the_size_of_x(rng, shape):
    # a memory property, not a timing: tracemalloc sees numpy's allocations
    import tracemalloc
    x = rng.normal(size=shape)
    g, b, dout = np.ones(shape[1]), np.zeros(shape[1]), rng.normal(size=shape)
    out, dx = np.empty_like(x), np.empty_like(x)
    bn.batchnorm_forward(x, g, b, cache="minimal", out=out)   # warm-up
    tracemalloc.start()
    try:
        o, cache = bn.batchnorm_forward(x, g, b, cache="minimal", out=out)
        d, _, _ = bn.batchnorm_backward_fused(dout, cache, dx=dx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert o is out and d is dx
    assert peak < 0.1 * x.nbytes + 64 * 1024, peak
    assert cache._xmu is None and cache._xhat is None and cache.x.base is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_minimal_cache_computes_its_nodes_on_first_access(rng, dtype, training):
    x, g, b, dout = make(rng, (40, 3, 5), dtype)
    stats = (np.array([0.5, -1.0, 2.0], dtype), np.array([1.5, 0.5, 4.0], dtype))
    extra = {} if training else {"stats": stats}
    from cybatchnorm._validation import forward_args
    from cybatchnorm.api import run_forward
    _, full = run_forward(forward_args(x, g, b, 1e-5, cache="full", **extra))
    _, minimal = run_forward(forward_args(x, g, b, 1e-5, cache="minimal", **extra))
    before = minimal.nbytes
    assert minimal._xmu is None
    np.testing.assert_array_equal(minimal.xhat, full.xhat)     # bitwise a full cache's
    np.testing.assert_array_equal(minimal.xmu, full.xmu)
    assert minimal.kind == "minimal" and minimal.nbytes == before + 2 * x.nbytes
    assert not minimal.xmu.flags.writeable
    for walk in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        for a, c in zip(walk(dout, minimal), walk(dout, full)):
            np.testing.assert_allclose(a, c, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(300, 7), (6, 3, 5, 4), (70000, 2)])
def test_minimal_cache_gives_the_same_gradients(rng, dtype, shape):
    x, g, b, dout = make(rng, shape, dtype)
    out_f, full = bn.batchnorm_forward(x, g, b)
    out_m, mini = bn.batchnorm_forward(x, g, b, cache="minimal")
    # float32 with a minimal cache normalizes as x * a + b in float32 arithmetic
    assert ref.rel(out_m, out_f) < (1e-15 if dtype == np.float64 else 1e-6)
    assert mini.kind == "minimal" and mini.nbytes < x.nbytes
    tol = 1e-12 if dtype == np.float64 else 1e-5
    vals = {"gamma": full.gamma, "ivar": full.ivar}
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        a, c = fn(dout, full), fn(dout, mini)
        assert ref.dx_error(c[0], a[0], dout, vals) < tol
        assert ref.rel(c[1], a[1]) < tol and ref.rel(c[2], a[2]) < tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_passed_in(rng, dtype):
    x, g, b, dout = make(rng, (40, 6, 3), dtype)
    out = np.empty_like(x)
    o, cache = bn.batchnorm_forward(x, g, b, out=out)
    assert o is out
    np.testing.assert_array_equal(out, bn.batchnorm_forward(x, g, b)[0])
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        dx = np.full_like(x, np.nan)
        got = fn(dout, cache, dx=dx)
        assert got[0] is dx
        np.testing.assert_array_equal(dx, fn(dout, cache)[0])


def test_eval_cache_staged_dx_passed_in(rng):
    layer = bn.BatchNorm(3).eval()
    x = rng.normal(size=(5, 3))
    layer.forward(x)
    dout = rng.normal(size=x.shape)
    dx = np.empty_like(x)
    got = bn.batchnorm_backward(dout, layer._cache, dx=dx)[0]
    assert got is dx
    np.testing.assert_allclose(dx, dout * layer.gamma / np.sqrt(1 + 1e-5), rtol=1e-14)


@pytest.mark.parametrize("shape, dtype", [((4200, 1001), np.float32), ((2200, 1000), np.float64),
                                          ((64, 10, 81, 81), np.float32)])
def test_outputs_larger_than_the_cache_are_streamed_correctly(rng, shape, dtype):
    # over 16 MiB of output: the fused kernels write rows through an L1 buffer
    # with non-temporal stores (odd row lengths exercise the unaligned ends)
    x, g, b, dout = make(rng, shape, dtype)
    assert x.nbytes > 16 << 20
    out, cache = bn.batchnorm_forward(x, g, b, cache="minimal")
    dx, dgamma, dbeta = bn.batchnorm_backward_fused(dout, cache)
    vals = ref.forward(x, g, b)
    r = ref.backward_staged(dout, vals)
    assert ref.rel(out, vals["out"]) < TOL[dtype]
    assert ref.dx_error(dx, r["dx"], dout, vals) < TOL[dtype] * 20
    assert ref.rel(dgamma, r["dgamma"]) < TOL[dtype] * 20


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (3, 7, 2), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_channels_last_equals_channels_first(rng, shape, dtype, kind):
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    C = shape[-1]
    g, b = rng.uniform(0.5, 2.0, C).astype(dtype), rng.normal(size=C).astype(dtype)
    first = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))  # noqa: E731
    out, cache = bn.batchnorm_forward(x, g, b, axis=-1, cache=kind)
    ref, rcache = bn.batchnorm_forward(first(x), g, b, cache=kind)
    assert out.shape == shape and cache.axis == -1 and cache.x_shape == shape
    assert cache.shape == (x.size // C, C)
    if kind == "minimal":
        assert np.shares_memory(cache.x, x)      # read in place: no transposed copy
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first(out), ref, **tol)
    for walk in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        dx, dgamma, dbeta = walk(dout, cache)
        rdx, rdgamma, rdbeta = walk(first(dout), rcache)
        assert dx.shape == shape
        np.testing.assert_allclose(first(dx), rdx, **tol)
        np.testing.assert_allclose(dgamma, rdgamma, **tol)
        np.testing.assert_allclose(dbeta, rdbeta, **tol)


def test_channels_last_buffers_and_errors(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    dout = rng.normal(size=x.shape)
    g, b = np.ones(5), np.zeros(5)
    out, dx = np.empty_like(x), np.empty_like(x)
    got, cache = bn.batchnorm_forward(x, g, b, axis=-1, cache="minimal", out=out)
    assert got is out
    assert bn.batchnorm_backward_fused(dout, cache, dx=dx)[0] is dx
    np.testing.assert_allclose(dx, bn.batchnorm_backward(dout, cache)[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="^dout: expected shape"):
        bn.batchnorm_backward_fused(np.moveaxis(dout, -1, 1), cache)
    with pytest.raises(ValueError, match="^out: expected"):
        bn.batchnorm_forward(x, g, b, axis=-1, out=np.empty((2, 5, 3, 4)))
    with pytest.raises(ValueError, match="^gamma: expected shape"):
        bn.batchnorm_forward(x, np.ones(3), np.zeros(3), axis=-1)
    for bad, err in ((2, ValueError), (0, ValueError), (True, TypeError), ("c", TypeError)):
        with pytest.raises(err, match="^axis: expected"):
            bn.batchnorm_forward(x, g, b, axis=bad)
    with pytest.raises(ValueError, match="^x: the batch is empty"):
        bn.batchnorm_forward(np.ones((2, 0, 3, 5)), g, b, axis=-1)


@pytest.mark.parametrize("backward", ["fused", "staged"])
def test_layer_channels_last(rng, backward):
    x = rng.normal(1.0, 2.0, (6, 4, 3, 2))
    dout = rng.normal(size=x.shape)
    last = bn.BatchNorm(2, axis=-1, backward=backward)
    first = bn.BatchNorm(2, backward=backward)
    assert "axis=-1" in repr(last)
    move = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))  # noqa: E731
    for training in (True, False):
        last.train(training)
        first.train(training)
        out = last.forward(x)
        np.testing.assert_allclose(move(out), first.forward(move(x)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(move(last.backward(dout)), first.backward(move(dout)),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(last.running_var, first.running_var, rtol=1e-13)
    with pytest.raises(ValueError, match="channels on axis -1"):
        last.forward(rng.normal(size=(6, 2, 3, 4)))
    with pytest.raises(ValueError, match="^axis: expected"):
        bn.BatchNorm(2, axis=2)
