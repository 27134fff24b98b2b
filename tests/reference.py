"""A plain numpy reference for batch norm, written independently of the package.

Everything is computed in ``dtype`` (float64 by default, ``np.longdouble`` for
the extended-precision checks) on the (N, C, S) view: channel axis 1, reduced
over the batch and every spatial axis.
"""
import numpy as np

AXES = (0, 2)


def _view(a):
    a = np.asarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _b(v):
    # a (C,) vector broadcast against (N, C, S)
    return v[None, :, None]


def forward(x, gamma, beta, eps=1e-5, dtype=np.float64):
    """Every node value of the forward pass, by name (full values shaped like x)."""
    shape = np.shape(x)
    x3 = _view(x).astype(dtype)
    g, b = np.asarray(gamma, dtype), np.asarray(beta, dtype)
    mu = x3.mean(axis=AXES)
    xmu = x3 - _b(mu)
    sq = xmu ** 2
    var = sq.mean(axis=AXES)
    sqrtvar = np.sqrt(var + dtype(eps))
    ivar = 1 / sqrtvar
    xhat = xmu * _b(ivar)
    gammax = _b(g) * xhat
    out = gammax + _b(b)
    full = {"xmu": xmu, "sq": sq, "xhat": xhat, "gammax": gammax, "out": out}
    vals = {k: v.reshape(shape) for k, v in full.items()}
    vals.update(mu=mu, var=var, sqrtvar=sqrtvar, ivar=ivar, gamma=g, beta=b)
    return vals


def backward_staged(dout, vals, dtype=np.float64):
    """Node-by-node backward (the CS231n way); returns every gradient by name."""
    shape = np.shape(dout)
    g = _view(dout).astype(dtype)
    xmu, xhat = _view(vals["xmu"]).astype(dtype), _view(vals["xhat"]).astype(dtype)
    ivar, sqrtvar, gamma = (np.asarray(vals[k], dtype) for k in ("ivar", "sqrtvar", "gamma"))
    M = g.shape[0] * g.shape[2]
    d = {}
    d["dbeta"] = g.sum(axis=AXES)
    d["dgammax"] = g
    d["dgamma"] = (g * xhat).sum(axis=AXES)
    d["dxhat"] = g * _b(gamma)
    d["divar"] = (d["dxhat"] * xmu).sum(axis=AXES)
    d["dxmu1"] = d["dxhat"] * _b(ivar)
    d["dsqrtvar"] = -d["divar"] / sqrtvar ** 2
    d["dvar"] = 0.5 * d["dsqrtvar"] / sqrtvar
    d["dsq"] = np.ones_like(g) * _b(d["dvar"]) / M
    d["dxmu2"] = 2 * xmu * d["dsq"]
    d["dxmu"] = d["dxmu1"] + d["dxmu2"]
    d["dx1"] = d["dxmu"]
    d["dmu"] = -d["dxmu"].sum(axis=AXES)
    d["dx2"] = np.ones_like(g) * _b(d["dmu"]) / M
    d["dx"] = d["dx1"] + d["dx2"]
    return {k: (v.reshape(shape) if v.ndim == 3 else v) for k, v in d.items()}


def backward_fused(dout, vals, dtype=np.float64):
    """The closed form: dx, dgamma, dbeta."""
    shape = np.shape(dout)
    g = _view(dout).astype(dtype)
    xhat = _view(vals["xhat"]).astype(dtype)
    ivar, gamma = np.asarray(vals["ivar"], dtype), np.asarray(vals["gamma"], dtype)
    M = g.shape[0] * g.shape[2]
    sg, sgx = g.sum(axis=AXES), (g * xhat).sum(axis=AXES)
    dx = _b(gamma * ivar / M) * (M * g - _b(sg) - xhat * _b(sgx))
    return dx.reshape(shape), sgx, sg


def rel(a, b):
    """max |a - b| / max |b|: the error relative to the array's scale."""
    a, b = np.asarray(a, np.longdouble), np.asarray(b, np.longdouble)
    scale = np.abs(b).max(initial=0)
    return float(np.abs(a - b).max(initial=0) / scale) if scale else float(np.abs(a).max(initial=0))


def dx_error(dx, dx_ref, dout, vals):
    """Error of dx relative to the size of its terms, gamma * ivar * dout.

    dx is a difference of terms that can cancel almost exactly (N = 2, or
    dout nearly linear in xhat), so its own size is no yardstick.
    """
    g = _view(dout).astype(np.longdouble)
    scale = np.abs(g * _b(np.asarray(vals["gamma"] * vals["ivar"], np.longdouble))).max(initial=0)
    err = np.abs(np.asarray(dx, np.longdouble) - np.asarray(dx_ref, np.longdouble)).max(initial=0)
    return float(err / scale) if scale else float(err)


def _norm(x, gamma, beta, dout, eps, rows, bshape, dtype):
    # per-row statistics of x seen as ``rows`` (R, M); gamma and beta
    # reshaped to ``bshape`` broadcast against x; returns out and the
    # closed-form dx, dgamma, dbeta (summed over every axis gamma is not on)
    shape = np.shape(x)
    x2 = np.asarray(x, dtype).reshape(rows)
    mu = x2.mean(axis=1, keepdims=True)
    var = ((x2 - mu) ** 2).mean(axis=1, keepdims=True)
    ivar = 1 / np.sqrt(var + dtype(eps))
    xhat = ((x2 - mu) * ivar).reshape(shape)
    g = np.asarray(gamma, dtype).reshape(bshape)
    out = g * xhat + np.asarray(beta, dtype).reshape(bshape)
    d = np.asarray(dout, dtype)
    dxhat = (d * g).reshape(rows)
    xh2 = xhat.reshape(rows)
    dx = ivar * (dxhat - dxhat.mean(axis=1, keepdims=True)
                 - xh2 * (dxhat * xh2).mean(axis=1, keepdims=True))
    over = tuple(i for i, n in enumerate(bshape) if n == 1)
    dgamma = (d * xhat).sum(axis=over).reshape(np.shape(gamma))
    dbeta = d.sum(axis=over).reshape(np.shape(gamma))
    return out, dx.reshape(shape), dgamma, dbeta


def layernorm(x, gamma, beta, dout, eps=1e-5, dtype=np.float64):
    """Layer norm over x's trailing gamma.ndim axes: ``(out, dx, dgamma, dbeta)``."""
    k = np.ndim(gamma)
    shape = np.shape(x)
    return _norm(x, gamma, beta, dout, eps, (-1, int(np.prod(shape[len(shape) - k:]))),
                 (1,) * (len(shape) - k) + tuple(np.shape(gamma)), dtype)


def groupnorm(x, gamma, beta, num_groups, dout, eps=1e-5, dtype=np.float64):
    """Group norm of x (N, C, *spatial) in num_groups groups of channels:
    ``(out, dx, dgamma, dbeta)``."""
    shape = np.shape(x)
    return _norm(x, gamma, beta, dout, eps, (shape[0] * num_groups, -1),
                 (1, shape[1]) + (1,) * (len(shape) - 2), dtype)
