"""Hypothesis properties over shapes, dtypes and values."""
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import reference as ref

import cybatchnorm as bn

shapes = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=6),
)
dtypes = st.sampled_from([np.float64, np.float32])


@st.composite
def batches(draw):
    shape = draw(shapes)
    assume(shape[0] * int(np.prod(shape[2:])) >= 2)
    dtype = draw(dtypes)
    offset = draw(st.sampled_from([0.0, 1.0, -50.0, 1e4]))
    scale = draw(st.sampled_from([1.0, 1e-2, 1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    C = shape[1]
    g = rng.uniform(0.5, 2, C).astype(dtype)
    b = rng.normal(size=C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, g, b, dout


def condition(x, var):
    """max |x| / std over channels: how many digits xmu = x - mu must lose."""
    std = np.sqrt(np.asarray(var, np.float64))
    xmax = np.abs(x.astype(np.float64)).swapaxes(0, 1).reshape(x.shape[1], -1).max(1)
    return float(np.max(np.where(std > 0, xmax / np.where(std > 0, std, 1), 1.0)))


@given(batches())
def test_forward_and_backward_match_reference(data):
    x, g, b, dout = data
    out, cache = bn.batchnorm_forward(x, g, b)
    r = ref.forward(x, g, b, dtype=np.longdouble)
    f32 = x.dtype == np.float32
    # errors relative to scale; data far from zero compared with its spread
    # (condition |x| / std) loses digits in xmu for any implementation
    eps_ = np.finfo(x.dtype).eps
    tol = (1e-5 if f32 else 1e-12) + 10 * eps_ * condition(x, r["var"])
    assert ref.rel(out, r["out"]) < tol
    rd = ref.backward_staged(dout, r, dtype=np.longdouble)
    xhat = np.asarray(r["xhat"], np.longdouble)
    dg_scale = np.abs(dout * xhat).reshape(x.shape[0], x.shape[1], -1).sum(axis=(0, 2)).max()
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        dx, dg, db = fn(dout, cache)
        assert np.isfinite(dx).all()
        assert ref.dx_error(dx, rd["dx"], dout, r) < tol
        assert ref.rel(db, rd["dbeta"]) < (1e-5 if f32 else 1e-12)
        # dgamma = sum(dout * xhat) can cancel: measure against its terms
        assert float(np.abs(dg - rd["dgamma"]).max() / dg_scale) < tol
    # the minimal cache (float32: float32 arithmetic in the elementwise passes)
    out_m, mini = bn.batchnorm_forward(x, g, b, cache="minimal")
    assert ref.rel(out_m, r["out"]) < tol
    dx, dg, db = bn.batchnorm_backward_fused(dout, mini)
    assert ref.dx_error(dx, rd["dx"], dout, r) < tol
    assert float(np.abs(dg - rd["dgamma"]).max() / dg_scale) < tol


@given(batches())
def test_staged_equals_fused(data):
    x, g, b, dout = data
    _, cache = bn.batchnorm_forward(x, g, b)
    s = bn.batchnorm_backward(dout, cache)
    f = bn.batchnorm_backward_fused(dout, cache)
    # 1e-12 (float64) / 1e-5 (float32) for ordinary data; data far from zero
    # relative to its spread (condition |x| / std) loses digits in xmu = x - mu
    # for every implementation, so the bound grows with that condition number
    eps_ = np.finfo(x.dtype).eps
    std = np.sqrt(cache.var.astype(np.float64))
    xmax = np.abs(x.astype(np.float64)).swapaxes(0, 1).reshape(x.shape[1], -1).max(1)
    cond = float(np.max(np.where(std > 0, xmax / np.where(std > 0, std, 1), 1.0)))
    tol = (1e-5 if x.dtype == np.float32 else 1e-12) + 10 * eps_ * cond
    assert ref.dx_error(f[0], s[0], dout, {"gamma": cache.gamma, "ivar": cache.ivar}) <= tol
    for a, c in zip(f[1:], s[1:]):
        assert ref.rel(a, c) <= tol


@given(batches(), st.integers(2, 6))
def test_thread_count_invariance(data, nt):
    x, g, b, dout = data
    o1, c1 = bn.batchnorm_forward(x, g, b, num_threads=1)
    on, cn = bn.batchnorm_forward(x, g, b, num_threads=nt)
    assert o1.tobytes() == on.tobytes()
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        for a, c in zip(fn(dout, c1, num_threads=1), fn(dout, cn, num_threads=nt)):
            assert a.tobytes() == c.tobytes()


@given(batches())
def test_normalized_output_statistics(data):
    x, _, _, _ = data
    C = x.shape[1]
    out, cache = bn.batchnorm_forward(x, np.ones(C), np.zeros(C))
    o = out.astype(np.float64).swapaxes(0, 1).reshape(C, -1)
    v = cache.var.astype(np.float64)
    tol = 1e-3 if x.dtype == np.float32 else 1e-8
    assert np.all(np.abs(o.mean(1)) < tol)
    # the standardized spread, shrunk by eps: std(out) = sqrt(var / (var + eps))
    live = v > 1e-3
    assert np.all(np.abs(o.std(1)[live] - np.sqrt(v / (v + 1e-5))[live]) < tol * 10)
