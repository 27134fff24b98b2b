"""Float32 gradients over float32's range: the relative error of dx from
every backward against a float64 computation, at data std 1e-20 (eps 1e-45),
1, 1e20, 1e25 and 3e37 (values up to ~1.8e38, near float32's maximum).

    python benchmarks/extremes.py

Each row: the max |dx - dx64| / max |dx64| of one backward on float32 input,
dx64 being the closed form evaluated in float64 on the same float32 values
(tests/reference.py's formula); for the drop-in's double backward, the
gradient of <dx, v> with respect to x against the same operator on float64
values. ``inf``/``nan``: the backward gave non-finite values for finite
input.
"""
import numpy as np

import cybatchnorm as bn


def reference_dx(x, gamma, dout, eps):
    x, gamma, dout = (np.asarray(a, np.float64) for a in (x, gamma, dout))
    M = x.shape[0]
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    ivar = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * ivar
    return (gamma * ivar / M) * (M * dout - dout.sum(0) - xhat * (dout * xhat).sum(0))


def rel(a, b):
    a = np.asarray(a, np.float64)
    if not np.all(np.isfinite(a)):
        return float("nan") if np.isnan(a).any() else float("inf")
    return float(np.abs(a - b).max() / np.abs(b).max())


def backwards(x, gamma, beta, dout, eps):
    """dx of every backward on float32 input, by name."""
    res = {}
    for kind in ("full", "minimal"):
        _, cache = bn.batchnorm_forward(x, gamma, beta, eps, cache=kind)
        res[f"staged ({kind} cache)"] = bn.batchnorm_backward(dout, cache)[0]
        res[f"fused ({kind} cache)"] = bn.batchnorm_backward_fused(dout, cache)[0]
    _, cache = bn.batchnorm_forward(x, gamma, beta, eps)
    res["graph.backward (the docs' walk)"] = bn.graph.backward(dout, cache)["dx"]
    for backward in ("fused", "staged"):
        layer = bn.BatchNorm(x.shape[1], eps, dtype=np.float32, backward=backward)
        layer.gamma, layer.beta = gamma.copy(), beta.copy()
        with np.errstate(over="ignore"):    # the running variance overflows, as torch's
            layer.forward(x)
        res[f"BatchNorm(backward={backward!r})"] = layer.backward(dout)
    count, mean, m2 = bn.batch_stats(x)
    ivar = bn.split.inverse_std(m2 / count, eps)
    sd, sdx = bn.backward_reduce(dout, x, mean)
    res["split backward_elementwise"] = bn.backward_elementwise(dout, x, mean, ivar, gamma, sd,
                                                                sdx, count)
    try:
        import torch

        from cybatchnorm.torch import batch_norm
    except ImportError:
        return res
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = batch_norm(xt, None, None, torch.from_numpy(gamma), torch.from_numpy(beta), True, 0.1,
                     eps)
    out.backward(torch.from_numpy(dout))
    res["cybatchnorm.torch"] = xt.grad.numpy()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = torch.nn.functional.batch_norm(xt, None, None, torch.from_numpy(gamma),
                                         torch.from_numpy(beta), True, 0.1, eps)
    out.backward(torch.from_numpy(dout))
    res["torch.nn (for comparison)"] = xt.grad.numpy()
    return res


def double_backward_errors(x, gamma, beta, dout, eps):
    """The drop-in's second derivatives of <dx, v> with respect to x and to
    dout, in float32 against the same operator on float64 values; None where
    float32 cannot hold the float64 values."""
    import torch

    from cybatchnorm.torch import batch_norm
    v = np.random.default_rng(1).standard_normal(x.shape)
    got = []
    for dt in (torch.float32, torch.float64):
        xt = torch.tensor(x, dtype=dt, requires_grad=True)
        gt = torch.tensor(dout, dtype=dt, requires_grad=True)
        out = batch_norm(xt, None, None, torch.tensor(gamma, dtype=dt),
                         torch.tensor(beta, dtype=dt), True, 0.1, eps)
        (dx,) = torch.autograd.grad(out, xt, gt, create_graph=True)
        ddx, ddout = torch.autograd.grad(dx, (xt, gt), torch.tensor(v, dtype=dt))
        got.append((ddx.detach().numpy(), ddout.detach().numpy()))
    lo, hi = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    res = []
    for a, b in zip(*got):
        big = float(np.abs(b).max())
        res.append(rel(a, b) if lo <= big <= hi else None)
    return res


def table(stds=(1e-20, 1.0, 1e20, 1e25, 3e37), shape=(64, 4), seed=0):
    """{std: {backward: relative error}}."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 2.0, shape[1]).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, shape[1]).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    rows = {}
    for std in stds:
        eps = 1e-45 if std < 1e-10 else 1e-5
        x = (3 * std + std * z).astype(np.float32)
        ref = reference_dx(x, gamma, dout, eps)
        rows[std] = {k: rel(v, ref) for k, v in backwards(x, gamma, beta, dout, eps).items()}
        try:
            dd = double_backward_errors(x, gamma, beta, dout, eps)
        except ImportError:
            continue
        rows[std]["cybatchnorm.torch double backward, d/dx"] = dd[0]
        rows[std]["cybatchnorm.torch double backward, d/ddout"] = dd[1]
    return rows


if __name__ == "__main__":
    rows = table()
    names = list(next(iter(rows.values())))
    print(f"{'backward (float32 input)':44}" + "".join(f"{f'std {s:g}':>12}" for s in rows))
    for n in names:
        print(f"{n:44}" + "".join(f"{'(n/r)':>12}" if rows[s][n] is None
                                  else f"{rows[s][n]:12.1e}" for s in rows))
    print("(n/r): the float64 values lie outside float32's normal range, so no float32 "
          "result can hold them")
