"""check_node: a learner's backward of one node against the compiled kernel."""
import io

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import graph


def _axes(a):
    return tuple(i for i in range(a.ndim) if i != 1)


def _col(v, a):
    shape = [1] * a.ndim
    shape[1] = -1
    return np.reshape(v, shape)


# what a learner would write: plain numpy, independent of the package
SOLUTIONS = {
    "out": lambda dout: (dout.sum(axis=_axes(dout)), dout),
    "gammax": lambda dgammax, xhat, gamma: ((dgammax * xhat).sum(axis=_axes(xhat)),
                                            dgammax * _col(gamma, xhat)),
    "xhat": lambda dxhat, xmu, ivar: ((dxhat * xmu).sum(axis=_axes(xmu)),
                                      dxhat * _col(ivar, xmu)),
    "ivar": lambda divar, sqrtvar: -divar / sqrtvar ** 2,
    "sqrtvar": lambda dsqrtvar, sqrtvar: 0.5 * dsqrtvar / sqrtvar,
    "var": lambda dvar, shape: np.broadcast_to(
        _col(dvar, np.empty(shape)) / (np.prod(shape) / shape[1]), shape),
    "sq": lambda dsq, xmu: 2 * xmu * dsq,
    "xmu": lambda dxmu: (dxmu, -dxmu.sum(axis=_axes(dxmu))),
    "mu": lambda dmu, shape: np.broadcast_to(
        _col(dmu, np.empty(shape)) / (np.prod(shape) / shape[1]), shape),
}


@pytest.mark.parametrize("name", [n.name for n in graph.NODES])
def test_the_kernel_itself_passes_exactly(name):
    out = io.StringIO()
    assert bn.check_node(name, graph.node(name).backward, file=out)
    rows = [line.split() for line in out.getvalue().splitlines()[2:-1]]
    assert rows and all(r[-3] == "True" for r in rows), out.getvalue()


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_a_correct_numpy_solution_passes(name):
    out = io.StringIO()
    assert bn.check_node(name, SOLUTIONS[name], file=out), out.getvalue()
    assert "all" in out.getvalue().splitlines()[-1]


def test_a_wrong_solution_fails_and_the_table_says_where():
    out = io.StringIO()
    assert not bn.check_node("sq", lambda dsq, xmu: xmu * dsq, file=out)   # the 2 forgotten
    text = out.getvalue()
    assert "False" in text and text.splitlines()[-1].startswith("NOT all")


def test_a_solution_that_is_slightly_off_fails():
    out = io.StringIO()
    assert not bn.check_node("ivar", lambda d, s: -d / s ** 2 * (1 + 1e-5), file=out)


def test_the_learner_gets_copies():
    # the kernel's dgammax is dout itself (passed through): a learner who
    # clears dout after computing a right answer must not spoil the comparison
    def out_backward(dout):
        result = dout.sum(axis=_axes(dout)), dout.copy()
        dout[...] = 0.0
        return result
    assert bn.check_node("out", out_backward, file=io.StringIO())


def test_clear_errors():
    with pytest.raises(ValueError, match=r"name: expected one of \['mu', 'xmu'"):
        bn.check_node("dx", SOLUTIONS["sq"])
    with pytest.raises(TypeError, match="backward: expected a function backward\\(dsq, xmu\\)"):
        bn.check_node("sq", None)
    with pytest.raises(TypeError, match=r"calls backward\(dxhat, xmu, ivar\).*cannot take 3"):
        bn.check_node("xhat", lambda dxhat, xmu: dxhat)
    with pytest.raises(ValueError, match=r"returned 1 array; xhat's backward returns 2: "
                                         r"\(divar, dxmu1\)"):
        bn.check_node("xhat", lambda dxhat, xmu, ivar: dxhat, file=io.StringIO())
    with pytest.raises(ValueError, match=r"dbeta has shape \(1, 3\), expected \(3,\)"):
        bn.check_node("out", lambda d: (d.sum(axis=0, keepdims=True), d), file=io.StringIO())


@pytest.mark.parametrize("name", [n.name for n in graph.NODES])
def test_layer_norm_nodes_the_kernel_and_the_same_solutions_pass(name):
    # the nodes are batch norm's, each in its view of x: a solution written
    # for (N, C, S) arrays (reducing over every axis but 1) serves both
    out = io.StringIO()
    assert bn.check_node(name, graph.node(name).backward, file=out, reduction="layer")
    rows = [line.split() for line in out.getvalue().splitlines()[2:-1]]
    assert rows and all(r[-3] == "True" for r in rows), out.getvalue()
    assert "(layer norm)" in out.getvalue().splitlines()[0]
    assert bn.check_node(name, SOLUTIONS[name], file=io.StringIO(), reduction="layer")


def test_layer_norm_nodes_come_in_their_views():
    seen = []

    def var_backward(dvar, shape):
        seen.append((dvar.shape, shape))
        return SOLUTIONS["var"](dvar, shape)
    assert bn.check_node("var", var_backward, shapes=[(4, 3), (6, 3, 2, 2)],
                         file=io.StringIO(), reduction="layer")
    # the stats view (1, N, M): a "channel" per sample
    assert seen == [((4,), (1, 4, 3)), ((6,), (1, 6, 12))]
    # dividing by the number of samples (batch norm's count) is wrong for layer norm
    wrong = lambda dvar, shape: np.broadcast_to(dvar[None, :, None] / shape[1], shape)  # noqa: E731
    assert not bn.check_node("var", wrong, shapes=[(4, 3)], file=io.StringIO(),
                             reduction="layer")


def test_reduction_must_be_one_check_node_walks():
    with pytest.raises(ValueError, match=r"reduction: expected one of \['batch', 'layer'\], "
                                         r"got 'group'"):
        bn.check_node("sq", SOLUTIONS["sq"], reduction="group")
