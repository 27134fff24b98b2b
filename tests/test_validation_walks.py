"""The walks over the graph, the layer's constructor and the remaining public
callables refuse bad input by name, leave every array untouched, and the
next valid walk gives the usual answer."""
from types import SimpleNamespace

from bad_input import CACHE, DOUT, B, G, X, bwd, fwd
import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import graph

# the walks over the graph and the remaining public callables
_FORGED = SimpleNamespace(shape=X.shape, xmu=CACHE.xmu)       # no xhat, ivar, ...
_, _OTHER = bn.batchnorm_forward(np.ones((5, 3)) * np.arange(5)[:, None], G, B)


def _walk(**kw):
    args = dict(dout=DOUT, cache=CACHE)
    args.update(kw)
    return lambda: graph.backward(args.pop("dout"), args.pop("cache"), **args)


def _alias_dout():
    d = DOUT.copy()
    return lambda: graph.backward(d, CACHE, dx=d)


def _out_aliasing_gamma():
    buf = np.ones((4, 3))
    return fwd(out=buf, gamma=buf[1])


WALK_CASES = [
    ("graph.backward forged cache", _walk(cache=_FORGED), TypeError, "cache"),
    ("graph.backward cache dict", _walk(cache={"xhat": X}), TypeError, "cache"),
    ("graph.backward cache None", _walk(cache=None), TypeError, "cache"),
    ("graph.backward cache of another shape", _walk(cache=_OTHER), ValueError, "dout"),
    ("graph.backward dout wrong shape", _walk(dout=np.ones((4, 2))), ValueError, "dout"),
    ("graph.backward dout None", _walk(dout=None), TypeError, "dout"),
    ("graph.backward dout complex", _walk(dout=DOUT.astype(complex)), TypeError, "dout"),
    ("graph.backward dout N == 0", _walk(dout=np.ones((0, 3))), ValueError, "dout"),
    ("graph.backward num_threads negative", _walk(num_threads=-3), ValueError, "num_threads"),
    ("graph.backward num_threads float", _walk(num_threads=2.0), TypeError, "num_threads"),
    ("graph.backward constants not iterable", _walk(constants=5), TypeError, "constants"),
    ("graph.backward dx wrong shape", _walk(dx=np.empty((3, 4))), ValueError, "dx"),
    ("graph.backward dx wrong dtype", _walk(dx=np.empty((4, 3), np.float32)), ValueError, "dx"),
    ("graph.backward dx not an array", _walk(dx=[[0.0] * 3] * 4), TypeError, "dx"),
    ("graph.backward dx read-only", _walk(dx=np.broadcast_to(G, (4, 3))), ValueError, "dx"),
    ("graph.backward dx not contiguous", _walk(dx=np.empty((3, 4)).T), ValueError, "dx"),
    ("graph.backward dx aliasing dout", _alias_dout(), ValueError, "dx"),
    ("graph.forward x None", lambda: graph.forward(None, G, B), TypeError, "x"),
    ("graph.forward x N == 0", lambda: graph.forward(np.ones((0, 3)), G, B), ValueError, "x"),
    ("graph.forward one value per feature",
     lambda: graph.forward(np.ones((1, 3)), G, B), ValueError, "x"),
    ("graph.forward gamma complex",
     lambda: graph.forward(X, G.astype(complex), B), TypeError, "gamma"),
    ("graph.forward eps inf", lambda: graph.forward(X, G, B, float("inf")), ValueError, "eps"),
    ("BatchNorm num_features 0", lambda: bn.BatchNorm(0), ValueError, "num_features"),
    ("BatchNorm num_features str", lambda: bn.BatchNorm("3"), TypeError, "num_features"),
    ("BatchNorm num_features bool", lambda: bn.BatchNorm(True), TypeError, "num_features"),
    ("BatchNorm eps 0", lambda: bn.BatchNorm(3, eps=0.0), ValueError, "eps"),
    ("BatchNorm eps nan", lambda: bn.BatchNorm(3, eps=float("nan")), ValueError, "eps"),
    ("BatchNorm momentum 2", lambda: bn.BatchNorm(3, momentum=2), ValueError, "momentum"),
    ("BatchNorm momentum str", lambda: bn.BatchNorm(3, momentum="0.1"), TypeError, "momentum"),
    ("BatchNorm dtype complex", lambda: bn.BatchNorm(3, dtype=complex), TypeError, "dtype"),
    ("BatchNorm num_threads negative",
     lambda: bn.BatchNorm(3, num_threads=-1), ValueError, "num_threads"),
    ("BatchNorm num_threads float",
     lambda: bn.BatchNorm(3, num_threads=1.5), TypeError, "num_threads"),
    ("BatchNorm eval x None", lambda: bn.BatchNorm(3).eval().forward(None), TypeError, "x"),
    ("BatchNorm eval x wrong channels",
     lambda: bn.BatchNorm(3).eval().forward(np.ones((2, 4))), ValueError, "x"),
    ("check_gradients h 0", lambda: bn.check_gradients(X, G, B, h=0.0), ValueError, "h"),
    ("check_gradients num_threads 0",
     lambda: bn.check_gradients(X, G, B, num_threads=0), ValueError, "num_threads"),
    ("check_gradients one value per feature",
     lambda: bn.check_gradients(np.ones((1, 3)), G, B), ValueError, "x"),
    ("batchnorm_backward dx read-only",
     bwd(bn.batchnorm_backward, dx=np.broadcast_to(G, (4, 3))), ValueError, "dx"),
    ("batchnorm_backward_fused dx not contiguous",
     bwd(bn.batchnorm_backward_fused, dx=np.empty((3, 4)).T), ValueError, "dx"),
    ("batchnorm_backward num_threads negative",
     bwd(bn.batchnorm_backward, num_threads=-1), ValueError, "num_threads"),
    ("batchnorm_backward_fused num_threads float",
     bwd(bn.batchnorm_backward_fused, num_threads=1.0), TypeError, "num_threads"),
    ("batchnorm_forward x None minimal", fwd(x=None, cache="minimal"), TypeError, "x"),
    ("batchnorm_forward gamma object", fwd(gamma=G.astype(object)), TypeError, "gamma"),
    ("batchnorm_forward beta strings", fwd(beta=["a", "b", "c"]), TypeError, "beta"),
    ("batchnorm_forward out aliasing gamma's buffer", _out_aliasing_gamma(), ValueError, "out"),
    ("show_config file not writable", lambda: bn.show_config(file=5), TypeError, "file"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in WALK_CASES],
                         ids=[c[0] for c in WALK_CASES])
def test_walks_layer_and_the_rest_refuse_bad_input_by_name(call, exc, name):
    held = (X, G, B, DOUT, CACHE.xhat, CACHE.xmu, CACHE.mu, CACHE.ivar, _OTHER.xhat, _FORGED.xmu)
    snapshot = [a.copy() for a in held]
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()
    for a, c in zip(held, snapshot):
        np.testing.assert_array_equal(a, c)
    # the next valid walk still works and gives the usual answer
    want = graph.backward(DOUT, CACHE)
    got = graph.backward(DOUT, CACHE, dx=np.empty_like(DOUT))
    for k in want:
        assert got[k].tobytes() == want[k].tobytes()
