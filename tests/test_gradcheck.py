import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import api, gradcheck


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 2, 3)])
def test_analytic_gradients_pass(rng, shape):
    x = rng.normal(2, 3, shape)
    err = bn.check_gradients(x, rng.uniform(0.5, 2, shape[1]), rng.normal(size=shape[1]))
    assert err.passed(1e-7), err
    assert isinstance(err, gradcheck.GradientCheck)


def test_a_wrong_gradient_fails(monkeypatch, rng):
    real = api.batchnorm_backward

    def wrong(dout, cache, **kw):
        dx, dg, db = real(dout, cache, **kw)
        return dx * 1.01, dg, db

    monkeypatch.setattr(gradcheck, "batchnorm_backward", wrong)
    err = bn.check_gradients(rng.normal(size=(5, 3)), np.ones(3), np.zeros(3))
    assert err.dx > 1e-3 and err.dgamma < 1e-7
    assert not err.passed()


def test_inputs_untouched_and_dout_used(rng):
    x = rng.normal(size=(4, 2))
    xc = x.copy()
    dout = rng.normal(size=(4, 2))
    err = bn.check_gradients(x, np.ones(2), np.zeros(2), dout)
    np.testing.assert_array_equal(x, xc)
    assert max(err) < 1e-7


def test_relative_error():
    assert gradcheck.relative_error([0, 0], [0, 0]) == 0.0
    assert gradcheck.relative_error([1, 0], [1, 0]) == 0.0
    assert abs(gradcheck.relative_error([1.0], [3.0]) - 0.5) < 1e-15


def test_bad_step():
    with pytest.raises(ValueError, match="^h"):
        bn.check_gradients(np.ones((3, 2)) * [[1], [2], [3]], np.ones(2), np.zeros(2), h=0)
