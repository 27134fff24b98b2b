"""Every bad input gets a TypeError or ValueError naming the argument, before
any kernel runs; inputs stay untouched and the next valid call still works."""
import numpy as np
import pytest

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
    ("check_gradients x complex", lambda: bn.check_gradients(X.astype(complex), G, B), TypeError, "x"),
    ("check_gradients gamma shape", lambda: bn.check_gradients(X, np.ones(2), B), ValueError, "gamma"),
    ("check_gradients dout shape", lambda: bn.check_gradients(X, G, B, np.ones((2, 3))), ValueError, "dout"),
    ("check_gradients eps", lambda: bn.check_gradients(X, G, B, eps=0.0), ValueError, "eps"),
    ("graph.forward x 1-d", lambda: bn.graph.forward(np.ones(4), G, B), ValueError, "x"),
    ("graph.forward beta", lambda: bn.graph.forward(X, G, np.ones(5)), ValueError, "beta"),
    ("graph.forward num_threads", lambda: bn.graph.forward(X, G, B, num_threads=-1), ValueError, "num_threads"),
    ("graph.backward dout strings", lambda: bn.graph.backward(np.array([["a"] * 3] * 4), CACHE), TypeError, "dout"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in MORE_CASES], ids=[c[0] for c in MORE_CASES])
def test_bad_input_to_layer_gradcheck_and_graph(call, exc, name):
    snapshot = [a.copy() for a in (X, G, B, DOUT)]
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()
    for a, c in zip((X, G, B, DOUT), snapshot):
        np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------------
# The matrix over every public node function of cybatchnorm.graph: each
# parameter of each function against each category that applies to it.
# VALID holds one valid call per function (owned arrays, from a forward walk
# of X); a case replaces one argument. After the refusal every array of the
# call is unchanged and the valid call gives its usual answer, bitwise.
import inspect  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from cybatchnorm import graph, nodes  # noqa: E402

_V = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
      for k, v in graph.forward(X, G + 0.5, B + 1.0).items()}
_GR = {k: np.array(v, copy=True) for k, v in graph.backward(DOUT * np.arange(1, 4), CACHE, keep=True).items()}

VALID = {
    "mu_forward": dict(x=X),
    "xmu_forward": dict(x=X, mu=_V["mu"]),
    "sq_forward": dict(xmu=_V["xmu"]),
    "var_forward": dict(sq=_V["sq"]),
    "sqrtvar_forward": dict(var=_V["var"], eps=1e-5),
    "ivar_forward": dict(sqrtvar=_V["sqrtvar"]),
    "xhat_forward": dict(xmu=_V["xmu"], ivar=_V["ivar"]),
    "gammax_forward": dict(xhat=_V["xhat"], gamma=_V["gamma"]),
    "out_forward": dict(gammax=_V["gammax"], beta=_V["beta"]),
    "out_backward": dict(dout=_GR["dgammax"]),
    "gammax_backward": dict(dgammax=_GR["dgammax"], xhat=_V["xhat"], gamma=_V["gamma"]),
    "xhat_backward": dict(dxhat=_GR["dxhat"], xmu=_V["xmu"], ivar=_V["ivar"]),
    "ivar_backward": dict(divar=_GR["divar"], sqrtvar=_V["sqrtvar"]),
    "sqrtvar_backward": dict(dsqrtvar=_GR["dsqrtvar"], sqrtvar=_V["sqrtvar"]),
    "var_backward": dict(dvar=_GR["dvar"], shape=X.shape),
    "sq_backward": dict(dsq=_GR["dsq"], xmu=_V["xmu"]),
    "xmu_backward": dict(dxmu=_GR["dxmu"]),
    "mu_backward": dict(dmu=_GR["dmu"], shape=X.shape),
    "branch_sum": dict(a=_GR["dxmu1"], b=_GR["dxmu2"]),
}
NODE_FUNCTIONS = sorted(nodes.__all__)
NODE_FUNCTIONS = [n for n in NODE_FUNCTIONS if n not in ("forward", "backward")]

# what each category puts in place of a valid argument, and the error it gets
_FULL_BAD = [
    ("list of strings", [["a", "b", "c"]] * 4, TypeError),
    ("None", None, TypeError),
    ("dict", {"a": 1}, TypeError),
    ("complex dtype", X.astype(complex), TypeError),
    ("object dtype", X.astype(object), TypeError),
    ("string dtype", X.astype(str), TypeError),
    ("1-d", np.arange(12.0), ValueError),
    ("0-d", np.float64(1.0), ValueError),
    ("N == 0", np.zeros((0, 3)), ValueError),
    ("spatial size 0", np.zeros((4, 3, 0)), ValueError),
]
# a second full-size input must match the first (dout against a cache's xhat)
_SECOND_FULL_BAD = _FULL_BAD + [
    ("from a call of another shape", np.ones((5, 3)), ValueError),
    ("transposed", np.ones((3, 4)), ValueError),
]
_VEC_BAD = [
    ("list of strings", ["a", "b", "c"], TypeError),
    ("None", None, TypeError),
    ("dict", {"a": 1}, TypeError),
    ("complex dtype", np.ones(3, complex), TypeError),
    ("object dtype", np.ones(3, object), TypeError),
    ("string dtype", np.ones(3).astype(str), TypeError),
    ("2-d", np.ones((1, 3)), ValueError),
    ("0-d", 1.0, ValueError),
]
_CHANNEL_BAD = _VEC_BAD + [("wrong length", np.ones(4), ValueError), ("empty", np.ones(0), ValueError)]
_SHAPE_BAD = [
    ("None", None, TypeError),
    ("strings", ("a", "b"), TypeError),
    ("floats", (4.5, 3), TypeError),
    ("N == 0", (0, 3), ValueError),
    ("1-d", (3,), ValueError),
    ("negative", (-4, 3), ValueError),
    ("spatial size 0", (4, 3, 0), ValueError),
    ("channels differ from the gradient", (4, 2), ValueError),
]
_EPS_BAD = [("0", 0.0, ValueError), ("negative", -1e-5, ValueError), ("nan", float("nan"), ValueError),
            ("inf", float("inf"), ValueError), ("string", "1e-5", TypeError), ("None", None, TypeError),
            ("bool", True, TypeError)]
_THREADS_BAD = [("0", 0, ValueError), ("negative", -1, ValueError), ("float", 1.5, TypeError),
                ("string", "2", TypeError), ("bool", True, TypeError)]


def _out_bad(fname, valid):
    # out= for the functions that write a full-size gradient
    shape = X.shape
    rows = [
        ("wrong shape", np.empty((3, 4)), ValueError),
        ("wrong size", np.empty((5, 3)), ValueError),
        ("wrong dtype", np.empty(shape, np.float32), ValueError),
        ("not an array", [[0.0] * 3] * 4, TypeError),
        ("not contiguous", np.empty((3, 4)).T, ValueError),
        ("read-only", np.broadcast_to(np.zeros(3), shape), ValueError),
    ]
    full_inputs = [k for k, v in valid.items() if isinstance(v, np.ndarray) and v.ndim == 2]
    for k in full_inputs:
        if k in IN_PLACE.get(fname, ()):
            # out may be this very array (elementwise, in place); a partial overlap is refused
            rows.append((f"overlapping {k}", ("overlap", k), ValueError))
        else:
            rows.append((f"aliasing {k}", ("alias", k), ValueError))
    return rows


# the full-size inputs a node function may be asked to overwrite with its result
IN_PLACE = {"branch_sum": ("a", "b"), "gammax_backward": ("dgammax",),
            "xhat_backward": ("dxhat",), "sq_backward": ("dsq",)}


@pytest.mark.parametrize("fname", sorted(IN_PLACE))
def test_in_place_node_results_equal_fresh_ones(fname):
    kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in VALID[fname].items()}
    fresh = _flat(getattr(graph, fname)(**kw))
    target = IN_PLACE[fname][0]
    res = _flat(getattr(graph, fname)(**kw, out=kw[target]))
    assert any(np.shares_memory(r, kw[target]) for r in res)
    for a, b in zip(fresh, res):
        assert a.tobytes() == b.tobytes()


def _categories(fname):
    valid = VALID[fname]
    params = inspect.signature(getattr(graph, fname)).parameters
    rows = []
    for i, (p, v) in enumerate(valid.items()):
        if p == "shape":
            table = _SHAPE_BAD
        elif p == "eps":
            table = _EPS_BAD
        elif isinstance(v, np.ndarray) and v.ndim > 1:
            table = _FULL_BAD if i == 0 else _SECOND_FULL_BAD
        elif i == 0:
            table = _VEC_BAD            # a lone vector: its length sets C
        else:
            table = _CHANNEL_BAD        # must match C
        rows += [(p, label, bad, exc) for label, bad, exc in table]
    rows += [("num_threads", label, bad, exc) for label, bad, exc in _THREADS_BAD]
    if "out" in params:
        rows += [("out", label, bad, exc) for label, bad, exc in _out_bad(fname, valid)]
    return rows


def _args(fname, param, bad):
    kw = dict(VALID[fname])
    if isinstance(bad, tuple) and bad and bad[0] in ("alias", "overlap"):
        src = kw[bad[1]]
        if bad[0] == "alias":
            kw[bad[1]] = src.copy()         # its own array, then written to? must be refused
            bad = kw[bad[1]]
        else:
            base = np.zeros((src.shape[0] + 1,) + src.shape[1:])
            base[:-1] = src
            kw[bad[1]] = base[:-1]
            bad = base[1:]
    kw[param] = bad
    return kw


NODE_CASES = [(f"{f} {p} {label}", f, p, bad, exc)
              for f in NODE_FUNCTIONS for p, label, bad, exc in _categories(f)]
_BASELINE = {f: getattr(graph, f)(**VALID[f]) for f in NODE_FUNCTIONS}


def _flat(res):
    return res if isinstance(res, tuple) else (res,)


def _arrays(kw):
    return {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}


def test_every_public_node_function_is_in_the_matrix():
    public = {n for n in dir(nodes) if callable(getattr(nodes, n)) and n.endswith(
        ("_forward", "_backward", "_sum")) and getattr(nodes, n).__module__ == nodes.__name__}
    assert public == set(VALID) == set(NODE_FUNCTIONS)


@pytest.mark.parametrize("fname, param, bad, exc", [c[1:] for c in NODE_CASES],
                         ids=[c[0] for c in NODE_CASES])
def test_node_function_refuses_bad_input_by_name(fname, param, bad, exc):
    fn = getattr(graph, fname)
    kw = _args(fname, param, bad)
    arrays = {**_arrays(kw), **{f"valid {k}": v for k, v in _arrays(VALID[fname]).items()}}
    snapshot = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(exc, match=rf"^{param}\b"):
        fn(**kw)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, snapshot[k], err_msg=f"{k} changed")
    # the next valid call still works and gives the same answer, bitwise
    for got, want in zip(_flat(fn(**VALID[fname])), _flat(_BASELINE[fname])):
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_branch_sum_may_work_in_place_on_request():
    a, b = _GR["dxmu1"].copy(), _GR["dxmu2"].copy()
    want = a + b
    assert nodes.branch_sum(a, b, out=a) is not None
    np.testing.assert_array_equal(a, want)


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
    ("graph.forward one value per feature", lambda: graph.forward(np.ones((1, 3)), G, B), ValueError, "x"),
    ("graph.forward gamma complex", lambda: graph.forward(X, G.astype(complex), B), TypeError, "gamma"),
    ("graph.forward eps inf", lambda: graph.forward(X, G, B, float("inf")), ValueError, "eps"),
    ("BatchNorm num_features 0", lambda: bn.BatchNorm(0), ValueError, "num_features"),
    ("BatchNorm num_features str", lambda: bn.BatchNorm("3"), TypeError, "num_features"),
    ("BatchNorm num_features bool", lambda: bn.BatchNorm(True), TypeError, "num_features"),
    ("BatchNorm eps 0", lambda: bn.BatchNorm(3, eps=0.0), ValueError, "eps"),
    ("BatchNorm eps nan", lambda: bn.BatchNorm(3, eps=float("nan")), ValueError, "eps"),
    ("BatchNorm momentum 2", lambda: bn.BatchNorm(3, momentum=2), ValueError, "momentum"),
    ("BatchNorm momentum str", lambda: bn.BatchNorm(3, momentum="0.1"), TypeError, "momentum"),
    ("BatchNorm dtype complex", lambda: bn.BatchNorm(3, dtype=complex), TypeError, "dtype"),
    ("BatchNorm num_threads negative", lambda: bn.BatchNorm(3, num_threads=-1), ValueError, "num_threads"),
    ("BatchNorm num_threads float", lambda: bn.BatchNorm(3, num_threads=1.5), TypeError, "num_threads"),
    ("BatchNorm eval x None", lambda: bn.BatchNorm(3).eval().forward(None), TypeError, "x"),
    ("BatchNorm eval x wrong channels", lambda: bn.BatchNorm(3).eval().forward(np.ones((2, 4))), ValueError, "x"),
    ("check_gradients h 0", lambda: bn.check_gradients(X, G, B, h=0.0), ValueError, "h"),
    ("check_gradients num_threads 0", lambda: bn.check_gradients(X, G, B, num_threads=0), ValueError, "num_threads"),
    ("check_gradients one value per feature", lambda: bn.check_gradients(np.ones((1, 3)), G, B), ValueError, "x"),
    ("batchnorm_backward dx read-only", bwd(bn.batchnorm_backward, dx=np.broadcast_to(G, (4, 3))), ValueError, "dx"),
    ("batchnorm_backward_fused dx not contiguous",
     bwd(bn.batchnorm_backward_fused, dx=np.empty((3, 4)).T), ValueError, "dx"),
    ("batchnorm_backward num_threads negative", bwd(bn.batchnorm_backward, num_threads=-1), ValueError, "num_threads"),
    ("batchnorm_backward_fused num_threads float",
     bwd(bn.batchnorm_backward_fused, num_threads=1.0), TypeError, "num_threads"),
    ("batchnorm_forward x None minimal", fwd(x=None, cache="minimal"), TypeError, "x"),
    ("batchnorm_forward gamma object", fwd(gamma=G.astype(object)), TypeError, "gamma"),
    ("batchnorm_forward beta strings", fwd(beta=["a", "b", "c"]), TypeError, "beta"),
    ("batchnorm_forward out aliasing gamma's buffer", _out_aliasing_gamma(), ValueError, "out"),
    ("show_config file not writable", lambda: bn.show_config(file=5), TypeError, "file"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in WALK_CASES], ids=[c[0] for c in WALK_CASES])
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
