"""Every bad input to the functional API gets a TypeError or ValueError
naming the argument, before any kernel runs; inputs stay untouched and the
next valid call still works."""
from bad_input import CACHE, DOUT, B, G, X, bwd, fwd
import numpy as np
import pytest

import cybatchnorm as bn

FORWARD_CASES = [
    ("x list of strings", fwd(x=[["a", "b"], ["c", "d"]]), TypeError, "x"),
    ("x None", fwd(x=None), TypeError, "x"),
    ("x dict", fwd(x={"a": 1}), TypeError, "x"),
    ("x ragged", fwd(x=[[1.0, 2.0], [3.0]]), TypeError, "x"),
    ("x complex", fwd(x=X.astype(complex)), TypeError, "x"),
    ("x object", fwd(x=X.astype(object)), TypeError, "x"),
    ("x string dtype", fwd(x=X.astype(str)), TypeError, "x"),
    ("x longdouble", fwd(x=X.astype(np.longdouble)), TypeError, "x"),
    ("x datetime", fwd(x=np.zeros((4, 3), "datetime64[s]")), TypeError, "x"),
    ("x 1-d", fwd(x=np.arange(5.0)), ValueError, "x"),
    ("x 0-d", fwd(x=np.float64(3)), ValueError, "x"),
    ("x N == 0", fwd(x=np.zeros((0, 3))), ValueError, "x"),
    ("x one value per feature", fwd(x=np.ones((1, 3))), ValueError, "x"),
    ("x 4-d one value per channel", fwd(x=np.ones((1, 3, 1, 1))), ValueError, "x"),
    ("x spatial size 0", fwd(x=np.ones((2, 3, 0))), ValueError, "x"),
    ("gamma wrong shape", fwd(gamma=np.ones(4)), ValueError, "gamma"),
    ("gamma 2-d", fwd(gamma=np.ones((1, 3))), ValueError, "gamma"),
    ("gamma scalar", fwd(gamma=1.0), ValueError, "gamma"),
    ("gamma complex", fwd(gamma=np.ones(3, complex)), TypeError, "gamma"),
    ("gamma strings", fwd(gamma=["a", "b", "c"]), TypeError, "gamma"),
    ("beta wrong shape", fwd(beta=np.zeros(2)), ValueError, "beta"),
    ("beta None", fwd(beta=None), TypeError, "beta"),
    ("eps zero", fwd(eps=0.0), ValueError, "eps"),
    ("eps negative", fwd(eps=-1e-5), ValueError, "eps"),
    ("eps nan", fwd(eps=float("nan")), ValueError, "eps"),
    ("eps inf", fwd(eps=float("inf")), ValueError, "eps"),
    ("eps string", fwd(eps="1e-5"), TypeError, "eps"),
    ("eps None", fwd(eps=None), TypeError, "eps"),
    ("num_threads 0", fwd(num_threads=0), ValueError, "num_threads"),
    ("num_threads negative", fwd(num_threads=-2), ValueError, "num_threads"),
    ("num_threads float", fwd(num_threads=2.0), TypeError, "num_threads"),
    ("cache kind unknown", fwd(cache="tiny"), ValueError, "cache"),
    ("out wrong shape", fwd(out=np.empty((4, 2))), ValueError, "out"),
    ("out wrong dtype", fwd(out=np.empty((4, 3), np.float32)), ValueError, "out"),
    ("out not an array", fwd(out=[[0.0] * 3] * 4), TypeError, "out"),
    ("out not contiguous", fwd(out=np.empty((3, 4)).T), ValueError, "out"),
    ("out read-only", fwd(out=np.broadcast_to(np.zeros(3), (4, 3))), ValueError, "out"),
]

BACKWARD_CASES = []
for _fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
    _n = _fn.__name__
    BACKWARD_CASES += [
        (f"{_n} dout wrong shape", bwd(_fn, dout=np.ones((4, 2))), ValueError, "dout"),
        (f"{_n} dout transposed", bwd(_fn, dout=np.ones((3, 4))), ValueError, "dout"),
        (f"{_n} dout complex", bwd(_fn, dout=DOUT.astype(complex)), TypeError, "dout"),
        (f"{_n} dout None", bwd(_fn, dout=None), TypeError, "dout"),
        (f"{_n} cache dict", bwd(_fn, cache={"mu": 1}), TypeError, "cache"),
        (f"{_n} cache tuple", bwd(_fn, cache=(X, G)), TypeError, "cache"),
        (f"{_n} cache None", bwd(_fn, cache=None), TypeError, "cache"),
        (f"{_n} num_threads 0", bwd(_fn, num_threads=0), ValueError, "num_threads"),
        (f"{_n} num_threads str", bwd(_fn, num_threads="all"), TypeError, "num_threads"),
        (f"{_n} dx wrong shape", bwd(_fn, dx=np.empty((3, 4))), ValueError, "dx"),
        (f"{_n} dx wrong dtype", bwd(_fn, dx=np.empty((4, 3), np.float32)), ValueError, "dx"),
    ]

CASES = FORWARD_CASES + BACKWARD_CASES


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name(call, exc, name):
    snapshot = [a.copy() for a in (X, G, B, DOUT, CACHE.xhat, CACHE.mu)]
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()
    for a, c in zip((X, G, B, DOUT, CACHE.xhat, CACHE.mu), snapshot):
        np.testing.assert_array_equal(a, c)
    # the next valid call still works and gives the usual answer
    out, cache = bn.batchnorm_forward(X, G, B)
    np.testing.assert_array_equal(bn.batchnorm_backward(DOUT, cache)[1],
                                  bn.batchnorm_backward(DOUT, CACHE)[1])


def test_cache_from_another_shape_is_refused():
    _, other = bn.batchnorm_forward(np.ones((5, 3)) * np.arange(5)[:, None], G, B)
    with pytest.raises(ValueError, match="^dout"):
        bn.batchnorm_backward(DOUT, other)


def test_damaged_cache_is_refused():
    _, cache = bn.batchnorm_forward(X, G, B)
    object.__setattr__(cache, "_xhat", np.ones((2, 3)))  # forced past the read-only guard
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        with pytest.raises(ValueError, match="^cache: its xhat"):
            fn(DOUT, cache)
    _, cache = bn.batchnorm_forward(X, G, B)
    object.__setattr__(cache, "ivar", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="^cache: its ivar"):
        bn.batchnorm_backward_fused(DOUT, cache)


def test_nan_and_inf_do_not_raise():
    x = X.copy()
    x[0, 0] = np.nan
    x[1, 1] = np.inf
    out, cache = bn.batchnorm_forward(x, G, B)
    assert np.isnan(out[:, 0]).all() and np.isnan(out[:, 1]).any()
    assert np.isfinite(out[:, 2]).all()


def test_outputs_aliasing_inputs_are_refused():
    x = X.copy()
    with pytest.raises(ValueError, match="^out"):
        bn.batchnorm_forward(x, G, B, out=x)
    np.testing.assert_array_equal(x, X)
    _, cache = bn.batchnorm_forward(X, G, B)
    _, mini = bn.batchnorm_forward(x, G, B, cache="minimal")
    dout = DOUT.copy()
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        with pytest.raises(ValueError, match="^dx"):
            fn(dout, cache, dx=dout)
        with pytest.raises(ValueError, match="^dx"):
            fn(dout, mini, dx=x)                # x is held by the minimal cache
    np.testing.assert_array_equal(dout, DOUT)
    np.testing.assert_array_equal(x, X)
