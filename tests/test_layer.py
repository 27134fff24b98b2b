"""BatchNorm: running statistics as PyTorch keeps them, train/eval, gradients."""
import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn
from cybatchnorm import BatchNorm


def batches(rng, shape=(8, 3), n=4):
    return [rng.normal(2 + i, 1 + i, shape) for i in range(n)]


def test_running_stats_by_hand(rng):
    layer = BatchNorm(3, momentum=0.1)
    xs = batches(rng)
    rm, rv = np.zeros(3), np.ones(3)
    for x in xs:
        layer.forward(x)
        rm = 0.9 * rm + 0.1 * x.mean(0)
        rv = 0.9 * rv + 0.1 * x.var(0, ddof=1)   # unbiased, as PyTorch
    np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, rv, rtol=1e-13)
    assert layer.num_batches_tracked == 4


def test_cumulative_average_with_momentum_none(rng):
    layer = BatchNorm(3, momentum=None)
    xs = batches(rng)
    for x in xs:
        layer.forward(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([x.mean(0) for x in xs], 0), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, np.mean([x.var(0, ddof=1) for x in xs], 0),
                               rtol=1e-13)


def test_spatial_running_stats(rng):
    layer = BatchNorm(2)
    x = rng.normal(3, 2, (4, 2, 3, 5))
    layer.forward(x)
    m = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(layer.running_mean, 0.1 * m.mean(1), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * m.var(1, ddof=1), rtol=1e-13)


def test_eval_uses_running_stats_and_its_gradient(rng):
    layer = BatchNorm(3)
    layer.gamma[:] = [1.0, 2.0, 0.5]
    layer.beta[:] = [0.0, 1.0, -1.0]
    for x in batches(rng):
        layer.forward(x)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    layer.eval()
    assert not layer.training
    x = rng.normal(size=(5, 3))
    out = layer.forward(x)
    np.testing.assert_allclose(out, layer.gamma * (x - rm) / np.sqrt(rv + 1e-5) + layer.beta,
                               rtol=1e-13)
    np.testing.assert_array_equal(layer.running_mean, rm)    # eval does not update
    dout = rng.normal(size=x.shape)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, dout * layer.gamma / np.sqrt(rv + 1e-5), rtol=1e-13)
    np.testing.assert_allclose(layer.dgamma, (dout * (x - rm) / np.sqrt(rv + 1e-5)).sum(0),
                               rtol=1e-12)
    np.testing.assert_allclose(layer.dbeta, dout.sum(0), rtol=1e-13)
    # the fused path gives the same eval gradient
    fused = bn.batchnorm_backward_fused(dout, layer._cache)
    np.testing.assert_allclose(fused[0], dx, rtol=1e-14)
    # eval mode with one sample is fine: the statistics are not the batch's
    layer.forward(x[:1])


def test_eval_gradient_matches_finite_differences(rng):
    layer = BatchNorm(2).eval()
    layer.running_mean[:] = [0.5, -1.0]
    layer.running_var[:] = [2.0, 0.25]
    x, dout = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    layer.forward(x)
    dx = layer.backward(dout)
    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        up, down = layer.forward(x + e), layer.forward(x - e)
        num[i] = (np.sum(up * dout) - np.sum(down * dout)) / (2 * h)
    assert ref.rel(dx, num) < 1e-8


@pytest.mark.parametrize("backward,kind", [("fused", "minimal"), ("staged", "full")])
def test_train_backward_matches_functional(rng, backward, kind):
    # the layer is the functional path it names, bit for bit
    layer = BatchNorm(4, dtype=np.float32, backward=backward)
    x, dout = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    out = layer.forward(x)
    dx = layer.backward(dout)
    o2, cache = bn.batchnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32),
                                     cache=kind)
    walk = bn.batchnorm_backward_fused if backward == "fused" else bn.batchnorm_backward
    np.testing.assert_array_equal(out, o2)
    np.testing.assert_array_equal(dx, walk(dout, cache)[0])
    assert layer.running_mean.dtype == np.float32


def test_no_affine_no_tracking(rng):
    layer = BatchNorm(3, affine=False, track_running_stats=False)
    assert layer.gamma is None and layer.running_mean is None
    x = rng.normal(size=(5, 3))
    layer.eval()
    out = layer.forward(x)       # no running stats: batch statistics even in eval
    np.testing.assert_allclose(out, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-12)
    layer.backward(np.ones_like(x))
    assert layer.dgamma is None and layer.dbeta is None


def test_train_eval_toggle_and_repr():
    layer = BatchNorm(2)
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
    assert "BatchNorm(2" in repr(layer)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(num_features=0), ValueError, "num_features"),
    (dict(num_features=2.5), TypeError, "num_features"),
    (dict(num_features=True), TypeError, "num_features"),
    (dict(num_features=2, eps=0), ValueError, "eps"),
    (dict(num_features=2, momentum=1.5), ValueError, "momentum"),
    (dict(num_features=2, momentum="0.1"), TypeError, "momentum"),
    (dict(num_features=2, dtype=np.int32), TypeError, "dtype"),
    (dict(num_features=2, dtype="nonsense"), TypeError, "dtype"),
])
def test_constructor_validates(kw, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        BatchNorm(**kw)


def test_forward_validates_channels_and_backward_needs_forward(rng):
    layer = BatchNorm(3)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="^x"):
        layer.forward(np.ones((4, 2)))
    with pytest.raises(ValueError, match="^x"):
        layer.forward(np.ones((1, 3)))          # training needs 2 values
    assert layer.num_batches_tracked == 0       # failed calls change nothing
    np.testing.assert_array_equal(layer.running_mean, np.zeros(3))


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 6)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
def test_fused_default_equals_staged(rng, shape, dtype, training):
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    fused = BatchNorm(shape[1], dtype=dtype)
    staged = BatchNorm(shape[1], dtype=dtype, backward="staged")
    assert fused.backward_kind == "fused" and "staged" in repr(staged)
    for layer in (fused, staged):
        layer.gamma[:] = np.linspace(0.5, 2.0, shape[1])
        layer.forward(x)              # moves the running statistics
        layer.train(training)
    a, b = fused.forward(x), staged.forward(x)
    assert fused._cache.kind == "minimal" and staged._cache.kind == "full"
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    # float32 without xmu/xhat to keep takes the affine fast path: within an ulp
    np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(fused.backward(dout), staged.backward(dout), **tol)
    np.testing.assert_allclose(fused.dgamma, staged.dgamma, **tol)
    np.testing.assert_allclose(fused.dbeta, staged.dbeta, **tol)


# the layer's own copy of x is written by the forward kernel's normalize sweep:
# every path of that sweep (float64 rows, float32 rows, strips, row chunks,
# spatial runs, outputs streamed past the caches, channels last, eval mode)
COPY_CASES = [((8, 3), np.float64, 1, True), ((64, 4096), np.float32, 1, True),
              ((40000, 4), np.float32, 1, True), ((4, 8, 5, 5), np.float64, 1, True),
              ((1100, 4096), np.float32, 1, True), ((6, 5, 5, 3), np.float32, -1, True),
              ((40000, 4), np.float64, 1, False)]


@pytest.mark.parametrize("shape, dtype, axis, training", COPY_CASES)
@pytest.mark.parametrize("backward", ["fused", "staged"])
def test_changing_x_after_forward_does_not_change_the_gradient(rng, backward, shape, dtype,
                                                               axis, training):
    x = rng.normal(size=shape).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    C = shape[axis]
    want = BatchNorm(C, backward=backward, dtype=dtype, axis=axis).train(training)
    want.forward(x.copy())
    expected = want.backward(dout)
    layer = BatchNorm(C, backward=backward, dtype=dtype, axis=axis).train(training)
    layer.forward(x)
    x[...] = 0.0                      # the caller reuses its buffer
    np.testing.assert_array_equal(layer.backward(dout), expected)


def test_backward_option_is_checked():
    with pytest.raises(ValueError, match="^backward: expected 'fused' or 'staged'"):
        BatchNorm(3, backward="closed")
