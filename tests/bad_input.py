"""The arguments the validation tests share: a small batch, its cache and
gradient, and calls of the functional API with one argument replaced
(imported by the tests/test_validation_*.py modules)."""
import numpy as np

import cybatchnorm as bn

X = np.arange(12.0).reshape(4, 3) ** 1.5
G, B = np.ones(3), np.zeros(3)
_, CACHE = bn.batchnorm_forward(X, G, B)
DOUT = np.ones((4, 3))


def fwd(**kw):
    args = dict(x=X, gamma=G, beta=B)
    args.update(kw)
    return lambda: bn.batchnorm_forward(args.pop("x"), args.pop("gamma"), args.pop("beta"), **args)


def bwd(fn, dout=DOUT, cache=CACHE, **kw):
    return lambda: fn(dout, cache, **kw)
