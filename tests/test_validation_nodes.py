"""The matrix over every public node function (cybatchnorm.nodes): each
parameter of each function against each category of bad input that applies
to it."""
import inspect

from bad_input import CACHE, DOUT, B, G, X
import numpy as np
import pytest

from cybatchnorm import graph, nodes

# ---------------------------------------------------------------------------
# The matrix over every public node function of cybatchnorm.graph: each
# parameter of each function against each category that applies to it.
# VALID holds one valid call per function (owned arrays, from a forward walk
# of X); a case replaces one argument. After the refusal every array of the
# call is unchanged and the valid call gives its usual answer, bitwise.

_V = {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
      for k, v in graph.forward(X, G + 0.5, B + 1.0).items()}
_GR = {k: np.array(v, copy=True)
       for k, v in graph.backward(DOUT * np.arange(1, 4), CACHE, keep=True).items()}

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
_CHANNEL_BAD = _VEC_BAD + [("wrong length", np.ones(4), ValueError),
                           ("empty", np.ones(0), ValueError)]
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
_EPS_BAD = [("0", 0.0, ValueError), ("negative", -1e-5, ValueError),
            ("nan", float("nan"), ValueError), ("inf", float("inf"), ValueError),
            ("string", "1e-5", TypeError), ("None", None, TypeError), ("bool", True, TypeError)]
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
    fresh = _flat(getattr(nodes, fname)(**kw))
    target = IN_PLACE[fname][0]
    res = _flat(getattr(nodes, fname)(**kw, out=kw[target]))
    assert any(np.shares_memory(r, kw[target]) for r in res)
    for a, b in zip(fresh, res):
        assert a.tobytes() == b.tobytes()


def _categories(fname):
    valid = VALID[fname]
    params = inspect.signature(getattr(nodes, fname)).parameters
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
_BASELINE = {f: getattr(nodes, f)(**VALID[f]) for f in NODE_FUNCTIONS}


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
    fn = getattr(nodes, fname)
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
