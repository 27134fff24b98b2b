"""The graph as data, every node kernel against its numpy one-liner, and the walks."""
from cases import DTYPES
import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn
from cybatchnorm import graph, nodes, staged

ORDER = ["mu", "xmu", "sq", "var", "sqrtvar", "ivar", "xhat", "gammax", "out"]


def test_nodes_in_forward_order():
    assert [n.name for n in graph.NODES] == ORDER
    assert graph.node("xhat").inputs == ("xmu", "ivar")
    with pytest.raises(KeyError, match="name"):
        graph.node("nope")


def test_every_input_is_made_before_it_is_used():
    made = {"x", "gamma", "beta", "eps"}
    for n in graph.NODES:
        assert set(n.inputs) <= made, n.name
        made.add(n.name)


def test_backward_grads_named_after_inputs():
    for n in graph.NODES:
        assert set(n.targets()) <= set(n.inputs), n.name
        assert all(g.startswith("d") for g in n.grads)
    assert graph.node("xhat").grads == ("divar", "dxmu1")
    assert graph.node("sq").grads == ("dxmu2",)
    assert graph.node("xmu").grads == ("dx1", "dmu")
    assert graph.node("mu").grads == ("dx2",)
    assert graph.node("out").grads == ("dbeta", "dgammax")
    assert graph.node("gammax").grads == ("dgamma", "dxhat")


def test_kinds():
    kinds = {n.name: n.kind for n in graph.NODES}
    assert {k for k, v in kinds.items() if v == "channel"} == {"mu", "var", "sqrtvar", "ivar"}


@pytest.fixture(params=[(10, 4), (5, 3, 2, 3)], ids=["2d", "4d"])
def case(request, rng):
    shape = request.param
    x = rng.normal(1.5, 2.0, shape)
    g, b = rng.uniform(0.5, 2, shape[1]), rng.uniform(-1, 1, shape[1])
    dout = rng.normal(size=shape)
    vals = ref.forward(x, g, b)
    return x, g, b, dout, vals, ref.backward_staged(dout, vals)


def bc(v, like):
    # (C,) broadcast along axis 1 of an (N, C, ...) array
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


def axes(a):
    return (0,) + tuple(range(2, a.ndim))


def close(a, b):
    assert ref.rel(a, b) < 1e-13


def test_forward_kernels_one_liners(case):
    x, g, b, dout, v, d = case
    close(nodes.mu_forward(x), x.mean(axis=axes(x)))
    close(nodes.xmu_forward(x, v["mu"]), x - bc(v["mu"], x))
    close(nodes.sq_forward(v["xmu"]), v["xmu"] ** 2)
    close(nodes.var_forward(v["sq"]), v["sq"].mean(axis=axes(x)))
    close(nodes.sqrtvar_forward(v["var"], 1e-5), np.sqrt(v["var"] + 1e-5))
    close(nodes.ivar_forward(v["sqrtvar"]), 1 / v["sqrtvar"])
    close(nodes.xhat_forward(v["xmu"], v["ivar"]), v["xmu"] * bc(v["ivar"], x))
    close(nodes.gammax_forward(v["xhat"], g), bc(g, x) * v["xhat"])
    close(nodes.out_forward(v["gammax"], b), v["gammax"] + bc(b, x))


def test_backward_kernels_one_liners(case):
    x, g, b, dout, v, d = case
    ax = axes(x)
    dbeta, dgammax = nodes.out_backward(dout)
    close(dbeta, dout.sum(axis=ax))
    assert np.shares_memory(dgammax, dout)   # passed through, not copied
    dgamma, dxhat = nodes.gammax_backward(dout, v["xhat"], g)
    close(dgamma, (dout * v["xhat"]).sum(axis=ax))
    close(dxhat, dout * bc(g, x))
    divar, dxmu1 = nodes.xhat_backward(d["dxhat"], v["xmu"], v["ivar"])
    close(divar, (d["dxhat"] * v["xmu"]).sum(axis=ax))
    close(dxmu1, d["dxhat"] * bc(v["ivar"], x))
    close(nodes.ivar_backward(d["divar"], v["sqrtvar"]), -d["divar"] / v["sqrtvar"] ** 2)
    close(nodes.sqrtvar_backward(d["dsqrtvar"], v["sqrtvar"]), 0.5 * d["dsqrtvar"] / v["sqrtvar"])
    M = x.size // x.shape[1]
    close(nodes.var_backward(d["dvar"], x.shape), np.ones_like(x) * bc(d["dvar"], x) / M)
    close(nodes.sq_backward(d["dsq"], v["xmu"]), 2 * v["xmu"] * d["dsq"])
    dx1, dmu = nodes.xmu_backward(d["dxmu"])
    assert np.shares_memory(dx1, d["dxmu"])
    close(dmu, -d["dxmu"].sum(axis=ax))
    close(nodes.mu_backward(d["dmu"], x.shape), np.ones_like(x) * bc(d["dmu"], x) / M)
    close(nodes.branch_sum(d["dx1"], d["dx2"]), d["dx1"] + d["dx2"])


def test_node_kernels_against_centred_differences(rng):
    # each node's local derivative, checked numerically through the node alone
    x = rng.normal(size=(4, 3))
    h = 1e-6
    sqrtvar = rng.uniform(0.5, 2, 3)
    divar = rng.normal(size=3)
    num = np.array([(np.sum(divar * nodes.ivar_forward(sqrtvar + h * e))
                     - np.sum(divar * nodes.ivar_forward(sqrtvar - h * e))) / (2 * h)
                    for e in np.eye(3)])
    assert ref.rel(nodes.ivar_backward(divar, sqrtvar), num) < 1e-8
    dsq = rng.normal(size=(4, 3))
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        up, down = nodes.sq_forward(x + e), nodes.sq_forward(x - e)
        g[i] = (np.sum(dsq * up) - np.sum(dsq * down)) / (2 * h)
    assert ref.rel(nodes.sq_backward(dsq, x), g) < 1e-8


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_walk_matches_fused_forward(rng, dtype):
    x = rng.normal(2, 3, (12, 4, 5)).astype(dtype)
    g, b = np.full(4, 1.5, dtype), np.full(4, 0.25, dtype)
    vals = graph.forward(x, g, b)
    out, cache = bn.batchnorm_forward(x, g, b)
    assert list(vals)[4:] == ORDER
    tol = 1e-14 if dtype == np.float64 else 1e-6
    assert ref.rel(vals["out"], out) < tol
    assert ref.rel(vals["mu"], cache.mu) < tol
    for name in ("var", "xmu", "xhat", "ivar"):
        assert ref.rel(vals[name], getattr(cache, name)) < tol * 10, name


def test_backward_walk_keeps_every_named_gradient(case):
    x, g, b, dout, v, d = case
    _, cache = bn.batchnorm_forward(x, g, b)
    grads = graph.backward(dout, cache, keep=True)
    expected = ["dbeta", "dgammax", "dgamma", "dxhat", "divar", "dxmu1", "dsqrtvar",
                "dvar", "dsq", "dxmu2", "dxmu", "dx1", "dmu", "dx2", "dx"]
    assert list(grads) == expected
    for name in expected:
        assert ref.rel(grads[name], d[name]) < 1e-11, name
    # keep=True must not have summed in place into a gradient it reported
    assert ref.rel(grads["dxmu1"], d["dxmu1"]) < 1e-12
    assert ref.rel(grads["dx1"], d["dx1"]) < 1e-12


def test_staged_backward_walks_the_node_kernels(monkeypatch, rng):
    # batchnorm_backward must go through NODES; a broken node breaks it
    x, dout = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    _, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    good = bn.batchnorm_backward(dout, cache)
    i = [n.name for n in graph.NODES].index("sq")
    orig = graph.NODES[i]

    def wrong_op(dsq, xmu3, nt, out):      # 3 instead of 2, dsq the (C,) vector
        return np.multiply(3 * xmu3, dsq[None, :, None], out=out)
    broken = orig.__class__(**{**orig.__dict__, "adds": False,
                               "backward": lambda dsq, xmu, num_threads: 3 * xmu * dsq,
                               "backward_op": wrong_op})
    monkeypatch.setattr(graph, "NODES", graph.NODES[:i] + (broken,) + graph.NODES[i + 1:])
    for bad in (bn.batchnorm_backward(dout, cache), staged.walk(dout[:, :, None], cache, 1),
                [graph.backward(dout, cache)[k] for k in ("dx", "dgamma", "dbeta")]):
        assert ref.rel(bad[0].reshape(x.shape), good[0]) > 1e-3
        np.testing.assert_array_equal(bad[2], good[2])   # dbeta does not pass through sq


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (16, 512)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adding_into_the_other_branch_is_the_branch_sum_bit_for_bit(rng, shape, dtype):
    x, dout = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
    _, cache = bn.batchnorm_forward(x, np.ones(shape[1], dtype), np.zeros(shape[1], dtype))
    dxmu1 = rng.normal(size=shape).astype(dtype)
    for dsq in (nodes.var_backward(rng.normal(size=shape[1]).astype(dtype), shape),
                rng.normal(size=shape).astype(dtype)):         # per channel, and full
        expected = nodes.branch_sum(dxmu1, nodes.sq_backward(dsq, cache.xmu))
        target = dxmu1.copy()
        got = nodes.sq_backward(dsq, cache.xmu, add_to=target)
        assert np.shares_memory(got, target)
        assert got.tobytes() == expected.tobytes()
    # the walk (which adds into dxmu1) and the kept walk (explicit branch_sum) agree
    fast = graph.backward(dout, cache)
    kept = graph.backward(dout, cache, keep=True)
    for k in ("dx", "dgamma", "dbeta"):
        assert fast[k].tobytes() == kept[k].tobytes()


def test_add_to_is_checked(rng):
    xmu, dsq = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="^add_to:"):
        nodes.sq_backward(dsq, xmu, add_to=np.empty((4, 2)))
    with pytest.raises(ValueError, match="^add_to:"):
        nodes.sq_backward(dsq, xmu, add_to=xmu)                 # aliasing an input
    with pytest.raises(TypeError, match="^add_to:"):
        nodes.sq_backward(dsq, xmu, add_to=[[0.0] * 3] * 4)
    with pytest.raises(ValueError, match="^out:"):
        nodes.sq_backward(dsq, xmu, out=np.empty((4, 3)), add_to=np.empty((4, 3)))


def test_constants_cut_the_graph(rng):
    x, dout = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    _, cache = bn.batchnorm_forward(x, np.ones(3) * 2, np.zeros(3))
    grads = graph.backward(dout, cache, constants=("mu", "ivar"), keep=True)
    assert "dsq" not in grads and "dx2" not in grads
    close(grads["dx"], dout * 2 * cache.ivar)


@pytest.mark.parametrize("call, match", [
    (lambda: nodes.xhat_backward(np.ones((3, 2)), np.ones((3, 3)), np.ones(2)), "xmu"),
    (lambda: nodes.xhat_backward(np.ones((3, 2)), np.ones((3, 2)), np.ones(3)), "ivar"),
    (lambda: nodes.mu_backward(np.ones(2), (3, 4)), "shape"),
    (lambda: nodes.var_backward(np.ones((2, 2)), (3, 2)), "dvar"),
    (lambda: nodes.sqrtvar_forward(np.ones(2), -1.0), "eps"),
    (lambda: nodes.mu_forward(np.ones(3)), "x"),
    (lambda: nodes.sq_forward(np.ones((2, 2), complex)), "xmu"),
    (lambda: nodes.branch_sum(np.ones((2, 2)), np.ones((2, 2)),
                              out=np.ones((2, 2), np.float32)), "out"),
])
def test_node_functions_validate(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (300, 40)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_planned_walk_is_the_docs_walk_bit_for_bit(rng, shape, dtype, mode, kind):
    from cybatchnorm._validation import forward_args
    from cybatchnorm.api import run_forward
    x = rng.normal(2, 3, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    stats = None if mode == "train" else (rng.normal(size=shape[1]), rng.uniform(1, 2, shape[1]))
    _, cache = run_forward(forward_args(x, g, b, 1e-5, cache=kind, stats=stats))
    walk = graph.backward(dout, cache, constants=("mu", "ivar") if mode == "eval" else ())
    planned = bn.batchnorm_backward(dout, cache)
    for name, value in zip(("dx", "dgamma", "dbeta"), planned):
        assert value.tobytes() == np.asarray(walk[name]).tobytes(), name


def test_the_plan_needs_one_buffer_the_size_of_x():
    # train: dxhat, dxmu1, dxmu (added into), dx1 and dx share one buffer
    for constants in (frozenset(), frozenset(("mu", "ivar"))):
        steps, (dx_loc, dgamma_loc, dbeta_loc), nbuf = staged.plan(graph.NODES, constants)
        assert nbuf == 1 and dx_loc == 0
        assert (dgamma_loc, dbeta_loc) == ("dgamma", "dbeta")
    steps = staged.plan(graph.NODES, frozenset())[0]
    assert [s[0].name if s[0] else "branch_sum" for s in steps] == [
        "out", "gammax", "xhat", "ivar", "sqrtvar", "var", "sq", "xmu", "mu", "branch_sum"]


def test_planned_walk_writes_into_dx_and_allocates_nothing_else(rng):
    import tracemalloc
    x, dout = rng.normal(size=(512, 300)), rng.normal(size=(512, 300))
    _, cache = bn.batchnorm_forward(x, np.ones(300), np.zeros(300))
    dx = np.empty_like(x)
    bn.batchnorm_backward(dout, cache, dx=dx)
    tracemalloc.start()
    try:
        res = bn.batchnorm_backward(dout, cache, dx=dx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res[0] is dx and peak < x.nbytes / 4
    np.testing.assert_array_equal(dx, bn.batchnorm_backward(dout, cache)[0])
