"""Property-based fuzzing of the public entry points (hypothesis).

Drawn: shapes (N and D up to 64 for (N, D); 3-D and 4-D with M = N x spatial
up to 4096), dtypes (float64, float32, float16 computed in float32, int32
computed in float64), layouts (C order, Fortran order, slices with a step,
negative steps on every axis, transposes: all views of a larger or
permuted buffer) and, feature by feature, a value family: ordinary data at any
scale, a huge offset (1e8 + N(0, 1)), a tiny variance (1 + 1e-12 N(0, 1)),
constant features, zeros, subnormals.

Properties (each one a test below):

1. finite input: forward, staged and fused backward match an
   extended-precision (``np.longdouble``) reference within the per-feature
   bound documented in docs/numerics.md (see ``bounds``);
2. a NaN, +inf or -inf in one feature of x, dout or gamma leaves every other
   feature's out, dx, dgamma and dbeta bitwise equal to the clean run;
3. staged == fused within the same bound;
4. num_threads = 1, 2 and 3 give bitwise equal results (also on arrays big
   enough to be split into row chunks);
5. anything (NaN and inf anywhere) never crashes, never writes to an input,
   and gives arrays of the right shape and dtype.

The example budget comes from the hypothesis profile (tests/conftest.py):
``ci`` (the default under tox) is fixed and derandomized, 240 examples for
each cheap property and 60 for the thread-count one; a longer run by hand
(8000 and 2000):

    HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py
"""
from types import SimpleNamespace

from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn

pytestmark = pytest.mark.longdouble

# the cheap properties get four times the profile's budget (240 examples each
# under "ci", 8000 under "long"); the thread-count one, on arrays of 2**17
# values half the time, gets the profile's budget
CHEAP = settings(max_examples=4 * settings.default.max_examples)

EPS64 = float(np.finfo(np.float64).eps)
BN_EPS = 1e-5

# dtype given -> dtype computed in
DTYPES = {np.dtype(np.float64): np.float64, np.dtype(np.float32): np.float32,
          np.dtype(np.float16): np.float32, np.dtype(np.int32): np.float64}
FAMILIES = ("normal", "offset", "tiny", "constant", "zeros", "subnormal")


@st.composite
def shapes(draw):
    kind = draw(st.sampled_from(["2d", "2d", "3d", "4d"]))
    if kind == "2d":
        shape = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    elif kind == "3d":
        shape = (draw(st.integers(1, 32)), draw(st.integers(1, 16)), draw(st.integers(1, 16)))
    else:
        shape = tuple(draw(st.integers(1, 8)) for _ in range(4))
    assume(shape[0] * int(np.prod(shape[2:])) >= 2)
    return shape


def family_values(rng, fam, size, dtype):
    """``size`` values of one feature from family ``fam``, as ``dtype``."""
    dt = np.dtype(dtype)
    if dt.kind == "i":      # integers: ordinary spreads, big offsets, constants
        if fam in ("tiny", "subnormal"):
            fam = "constant"
        base = {"normal": rng.normal(0, 10 ** rng.uniform(0, 3), size),
                "offset": 1e8 + rng.normal(0, 100, size),
                "constant": np.full(size, rng.integers(-1000, 1000)),
                "zeros": np.zeros(size)}[fam]
        return np.round(base).astype(dt)
    if dt == np.float16 and fam in ("offset", "tiny"):
        fam = "normal"      # 1e8 is not a float16
    if fam == "normal":
        v = rng.uniform(-3, 3) + 10 ** rng.uniform(-3, 3) * rng.standard_normal(size)
    elif fam == "offset":
        v = 1e8 + rng.standard_normal(size)
    elif fam == "tiny":
        v = 1.0 + 1e-12 * rng.standard_normal(size)
    elif fam == "constant":
        v = np.full(size, rng.uniform(-1e3, 1e3))
    elif fam == "zeros":
        v = np.zeros(size)
    else:   # subnormals of the given dtype
        return (rng.integers(-1000, 1000, size) * np.finfo(dt).smallest_subnormal).astype(dt)
    return v.astype(dt)


def make_view(rng, values, layout):
    """A view with ``values``' logical content and the given layout, and the
    buffer it lives in (checked unchanged afterwards)."""
    nd = values.ndim
    if layout == "c":
        base = values.copy()
        return base, base
    if layout == "fortran":
        base = np.asfortranarray(values)
        return base, base
    if layout == "step":      # every other element along one axis
        axis = int(rng.integers(nd))
        big = list(values.shape)
        big[axis] *= 2
        base = np.full(big, 7, values.dtype)
        idx = [slice(None)] * nd
        idx[axis] = slice(None, None, 2)
        base[tuple(idx)] = values
        return base[tuple(idx)], base
    if layout == "negative":  # negative steps on every axis
        rev = (slice(None, None, -1),) * nd
        base = np.ascontiguousarray(values[rev])
        return base[rev], base
    perm = rng.permutation(nd)  # "transpose": a permuted buffer seen through a transpose
    base = np.ascontiguousarray(values.transpose(perm))
    return base.transpose(np.argsort(perm)), base


@st.composite
def batches(draw, families=FAMILIES, dtypes=tuple(DTYPES)):
    shape = draw(shapes())
    dt = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    C = shape[1]
    fams = [draw(st.sampled_from(families)) for _ in range(C)]
    note(f"shape={shape} dtype={dt} families={fams}")
    x = np.empty(shape, dt)
    for c, fam in enumerate(fams):
        x[:, c] = family_values(rng, fam, x[:, c].size, dt).reshape(x[:, c].shape)
    cdt = DTYPES[np.dtype(dt)]
    gdt = dt if np.dtype(dt).kind == "f" else cdt
    gamma = (rng.uniform(0.5, 2, C) * rng.choice([-1, 1], C)).astype(gdt)
    beta = rng.normal(size=C).astype(gdt)
    dout = rng.standard_normal(shape).astype(gdt)
    layout = draw(st.sampled_from(["c", "fortran", "step", "negative", "transpose"]))
    xv, xbase = make_view(rng, x, layout)
    dv, dbase = make_view(rng, dout, draw(st.sampled_from(["c", "negative", "transpose"])))
    return dict(x=xv, gamma=gamma, beta=beta, dout=dv, bases=(xbase, dbase, gamma, beta),
                cdt=np.dtype(cdt), families=fams)


def snapshot(arrays):
    return [a.tobytes() for a in arrays]


def per_channel(a):
    """(N, C, ...) -> (C, N * spatial) in extended precision."""
    a = np.asarray(a, np.longdouble)
    return a.reshape(a.shape[0], a.shape[1], -1).swapaxes(0, 1).reshape(a.shape[1], -1)


def bounds(x, r, cdt, kind="full"):
    """The documented per-feature bound (docs/numerics.md):

        tol_c = 16 (u + u_x kappa_c) + 4 M eps64,  kappa_c = max|x_c| / sqrt(var_c + eps)

    u is the unit roundoff of the computation dtype (eps64 for float64,
    eps32 for float32), M the number of values per feature. kappa_c, the
    feature's condition number, multiplies the rounding of the mean as it is
    subtracted: u_x = eps64 with a full cache (x - mu is formed from the
    float64 mean), u_x = max(eps64, u**2) with a minimal cache (the float32
    path computes (x - mh) * a + b in float32, mh the mean rounded to float32
    and its rest folded into b in float64: together they carry it to about
    u**2).
    4 M eps64 covers the float64 sums.
    """
    u = float(np.finfo(cdt).eps)
    ux = EPS64 if kind == "full" else max(EPS64, u * u)
    M = per_channel(x).shape[1]
    kappa = np.abs(per_channel(x)).max(1) / np.asarray(r["sqrtvar"], np.longdouble)
    return 16 * (u + ux * kappa) + 4 * M * EPS64


def errors(x, dout, out, dx, dg, db, r, rd):
    """Per-feature errors, each relative to the scale of its own terms:
    out against |gamma| + |beta|, dx against |gamma| ivar max|dout|, dgamma
    against sum|dout| (1 + max|xhat|), dbeta against sum|dout|."""
    g, b = np.abs(r["gamma"]), np.abs(r["beta"])
    D = per_channel(dout)
    xhat = per_channel(r["xhat"])
    sabs = np.abs(D).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        e_out = np.abs(per_channel(out) - per_channel(r["out"])).max(1) / np.maximum(g + b, 1e-300)
        dx_scale = np.maximum(g * r["ivar"] * np.abs(D).max(1), 1e-300)
        e_dx = np.abs(per_channel(dx) - per_channel(rd["dx"])).max(1) / dx_scale
        dg_scale = np.maximum(sabs * (1 + np.abs(xhat).max(1)), 1e-300)
        e_dg = np.abs(np.asarray(dg, np.longdouble) - rd["dgamma"]) / dg_scale
        e_db = np.abs(np.asarray(db, np.longdouble) - rd["dbeta"]) / np.maximum(sabs, 1e-300)
    return e_out, e_dx, e_dg, e_db


@CHEAP
@given(batches(), st.sampled_from(["full", "minimal"]))
def test_finite_input_matches_extended_reference(data, kind):
    x, gamma, beta, dout = data["x"], data["gamma"], data["beta"], data["dout"]
    before = snapshot(data["bases"])
    cdt = data["cdt"]
    xc = np.asarray(x, cdt)           # what the package computes on
    r = ref.forward(xc, np.asarray(gamma, cdt), np.asarray(beta, cdt), BN_EPS, dtype=np.longdouble)
    rd = ref.backward_staged(np.asarray(dout, cdt), r, dtype=np.longdouble)
    tol = bounds(xc, r, cdt, kind)
    out, cache = bn.batchnorm_forward(x, gamma, beta, BN_EPS, cache=kind)
    assert out.dtype == cdt and out.shape == x.shape
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        dx, dg, db = fn(dout, cache)
        errs = errors(xc, dout, out, dx, dg, db, r, rd)
        for name, e in zip(("out", "dx", "dgamma", "dbeta"), errs):
            bad = ~(e <= tol)
            assert not bad.any(), (fn.__name__, name, e[bad], tol[bad],
                                   [data["families"][c] for c in np.flatnonzero(bad)])
    assert snapshot(data["bases"]) == before


@CHEAP
@given(batches(), st.sampled_from(["full", "minimal"]))
def test_staged_equals_fused(data, kind):
    x, gamma, beta, dout = data["x"], data["gamma"], data["beta"], data["dout"]
    cdt = data["cdt"]
    xc = np.asarray(x, cdt)
    r = ref.forward(xc, np.asarray(gamma, cdt), np.asarray(beta, cdt), BN_EPS, dtype=np.longdouble)
    tol = bounds(xc, r, cdt, kind)
    _, cache = bn.batchnorm_forward(x, gamma, beta, BN_EPS, cache=kind)
    s = bn.batchnorm_backward(dout, cache)
    f = bn.batchnorm_backward_fused(dout, cache)
    # the fused results measured against the staged ones as if they were the
    # reference: both are within tol of the truth, so within 2 tol of each other
    rd = dict(dx=s[0], dgamma=np.asarray(s[1], np.longdouble),
              dbeta=np.asarray(s[2], np.longdouble))
    _, e_dx, e_dg, e_db = errors(xc, dout, r["out"], f[0], f[1], f[2], r, rd)
    for e in (e_dx, e_dg, e_db):
        assert (e <= 2 * tol).all(), (e, tol)


def _run_all(x, gamma, beta, dout, num_threads=None, kind="full"):
    out, cache = bn.batchnorm_forward(x, gamma, beta, BN_EPS, num_threads=num_threads, cache=kind)
    res = {"out": out}
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        dx, dg, db = fn(dout, cache, num_threads=num_threads)
        name = fn.__name__
        res.update({f"{name} dx": dx, f"{name} dgamma": dg, f"{name} dbeta": db})
    return res


def _channel(a, c):
    a = np.asarray(a)
    return a[c] if a.ndim == 1 else a[:, c]


@CHEAP
@given(batches(families=("normal", "offset", "tiny", "constant", "zeros")),
       st.sampled_from(["x", "dout", "gamma"]), st.sampled_from([np.nan, np.inf, -np.inf]),
       st.data())
def test_nan_or_inf_in_one_feature_leaves_the_others_exact(data, where, bad, d):
    assume(np.dtype(data["x"].dtype).kind == "f")      # integers hold no NaN
    x, gamma, beta, dout = (np.array(data[k]) for k in ("x", "gamma", "beta", "dout"))
    C = x.shape[1]
    c = d.draw(st.integers(0, C - 1), label="feature")
    kind = d.draw(st.sampled_from(["full", "minimal"]), label="cache")
    clean = _run_all(x, gamma, beta, dout, kind=kind)
    arr = {"x": x, "dout": dout, "gamma": gamma}[where]
    if where == "gamma":
        arr[c] = bad
    else:
        pos = tuple(int(d.draw(st.integers(0, s - 1))) if i != 1 else c
                    for i, s in enumerate(arr.shape))
        arr[pos] = bad
    before = snapshot((x, gamma, beta, dout))
    dirty = _run_all(x, gamma, beta, dout, kind=kind)
    assert snapshot((x, gamma, beta, dout)) == before
    others = [k for k in range(C) if k != c]
    for name in clean:
        a, b = np.asarray(clean[name]), np.asarray(dirty[name])
        for k in others:
            assert _channel(a, k).tobytes() == _channel(b, k).tobytes(), (name, k)
    # the feature that got it: every value that depends on the bad one is
    # non-finite all along the feature, every other value is exact
    # (dbeta = sum(dout) involves neither x nor gamma, dgamma = sum(dout * xhat)
    # not gamma, out not dout)
    depends = {"x": ("out", "dx", "dgamma"), "dout": ("dx", "dgamma", "dbeta"),
               "gamma": ("out", "dx")}[where]
    for name, v in dirty.items():
        got = _channel(v, c)
        if name.split()[-1] in depends:
            assert not np.isfinite(got).any(), (name, got)
        else:
            assert got.tobytes() == _channel(clean[name], c).tobytes(), name


@st.composite
def big_batches(draw):
    # rows repeated (with fresh noise) so the array holds more than 2**16
    # values: the reductions are then split into several row chunks, merged
    # in a fixed order
    data = draw(batches(families=("normal", "offset", "constant")))
    if draw(st.booleans()):
        x = np.asarray(data["x"])
        reps = -(-(1 << 17) // x.size)
        rng = np.random.default_rng(x.size)
        noise = (rng.standard_normal((x.shape[0] * reps,) + x.shape[1:])
                 if x.dtype.kind == "f" else 0)
        data["x"] = (np.repeat(x, reps, axis=0) + noise).astype(x.dtype)
        data["dout"] = np.repeat(np.asarray(data["dout"]), reps, axis=0)
    return data


@given(big_batches(), st.sampled_from(["full", "minimal"]))
def test_thread_count_invariance(data, kind):
    x, gamma, beta, dout = data["x"], data["gamma"], data["beta"], data["dout"]
    one = _run_all(x, gamma, beta, dout, num_threads=1, kind=kind)
    for nt in (2, 3):
        many = _run_all(x, gamma, beta, dout, num_threads=nt, kind=kind)
        for name in one:
            assert one[name].tobytes() == many[name].tobytes(), (name, nt)


@st.composite
def anything(draw):
    data = draw(batches())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if data["x"].dtype.kind == "f":
        for k in ("x", "dout"):
            a = np.array(data[k])
            mask = rng.random(a.shape) < draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
            a[mask] = rng.choice([np.nan, np.inf, -np.inf], mask.sum())
            data[k] = a
            data["bases"] += (a,)
    return data


@CHEAP
@given(anything(), st.sampled_from(["full", "minimal"]), st.sampled_from([None, 1, 2]))
def test_never_crashes_never_writes_to_inputs(data, kind, nt):
    x, gamma, beta, dout = data["x"], data["gamma"], data["beta"], data["dout"]
    before = snapshot(data["bases"])
    res = _run_all(x, gamma, beta, dout, num_threads=nt, kind=kind)
    values = SimpleNamespace(shape=x.shape,
                             **bn.graph.forward(x, gamma, beta, BN_EPS, num_threads=nt))
    walk = bn.graph.backward(dout, values, num_threads=nt)
    assert snapshot(data["bases"]) == before
    C = x.shape[1]
    for name, v in list(res.items()) + list(walk.items()):
        assert v.dtype == data["cdt"]
        assert v.shape == (x.shape if name.endswith(("dx", "out")) else (C,))


def test_float32_minimal_cache_keeps_a_constant_feature_at_beta():
    x = np.full((7, 2), 1e8, np.float32)
    x[:, 1] = 1e4
    beta = np.array([0.25, -1.5], np.float32)
    full, _ = bn.batchnorm_forward(x, np.ones(2), beta)
    assert (full == beta).all()             # the full-cache path: exactly beta
    mini, _ = bn.batchnorm_forward(x, np.ones(2), beta, cache="minimal")
    assert (mini == beta).all()             # x - mu is formed before scaling: nothing cancels
