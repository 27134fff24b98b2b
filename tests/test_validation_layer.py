"""The same categories of bad input against the layer, the gradient checker
and the graph walks."""
from bad_input import CACHE, DOUT, B, G, X
import numpy as np
import pytest

import cybatchnorm as bn


# the same categories against the layer, the gradient checker and the graph walks
def _layer_forward(x, **kw):
    return lambda: bn.BatchNorm(3, **kw).forward(x)


def _layer_backward(dout):
    layer = bn.BatchNorm(3)
    layer.forward(X)
    return lambda: layer.backward(dout)


MORE_CASES = [
    ("layer x strings", _layer_forward([["a", "b", "c"]] * 2), TypeError, "x"),
    ("layer x complex", _layer_forward(X.astype(complex)), TypeError, "x"),
    ("layer x 1-d", _layer_forward(np.ones(3)), ValueError, "x"),
    ("layer x N == 0", _layer_forward(np.zeros((0, 3))), ValueError, "x"),
    ("layer x wrong channels", _layer_forward(np.ones((4, 2))), ValueError, "x"),
    ("layer x one value per channel", _layer_forward(np.ones((1, 3))), ValueError, "x"),
    ("layer num_threads 0", _layer_forward(X, num_threads=0), ValueError, "num_threads"),
    ("layer dout wrong shape", _layer_backward(np.ones((4, 2))), ValueError, "dout"),
    ("layer dout None", _layer_backward(None), TypeError, "dout"),
    ("check_gradients x complex",
     lambda: bn.check_gradients(X.astype(complex), G, B), TypeError, "x"),
    ("check_gradients gamma shape",
     lambda: bn.check_gradients(X, np.ones(2), B), ValueError, "gamma"),
    ("check_gradients dout shape",
     lambda: bn.check_gradients(X, G, B, np.ones((2, 3))), ValueError, "dout"),
    ("check_gradients eps", lambda: bn.check_gradients(X, G, B, eps=0.0), ValueError, "eps"),
    ("graph.forward x 1-d", lambda: bn.graph.forward(np.ones(4), G, B), ValueError, "x"),
    ("graph.forward beta", lambda: bn.graph.forward(X, G, np.ones(5)), ValueError, "beta"),
    ("graph.forward num_threads",
     lambda: bn.graph.forward(X, G, B, num_threads=-1), ValueError, "num_threads"),
    ("graph.backward dout strings",
     lambda: bn.graph.backward(np.array([["a"] * 3] * 4), CACHE), TypeError, "dout"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in MORE_CASES],
                         ids=[c[0] for c in MORE_CASES])
def test_bad_input_to_layer_gradcheck_and_graph(call, exc, name):
    snapshot = [a.copy() for a in (X, G, B, DOUT)]
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()
    for a, c in zip((X, G, B, DOUT), snapshot):
        np.testing.assert_array_equal(a, c)
