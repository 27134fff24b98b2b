"""Accuracy figures of cybatchnorm against an extended-precision numpy reference.

    python benchmarks/accuracy.py

Prints, for float64 and float32, (N, D) and (N, C, H, W): the largest error of
the forward output and of dx, dgamma, dbeta (staged and fused) against a
long-double reference; the staged-vs-fused difference; and the mean-1e6 case.
Errors are relative to scale (max |error| / max |reference|; for dx relative
to the size of its terms, max |gamma * ivar * dout|).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import reference as ref  # noqa: E402

import cybatchnorm as bn  # noqa: E402

SHAPES = [(256, 64), (64, 1000), (16, 8, 12, 12)]


def errors(x, g, b, dout):
    out, cache = bn.batchnorm_forward(x, g, b)
    r = ref.forward(x, g, b, dtype=np.longdouble)
    rd = ref.backward_staged(dout, r, dtype=np.longdouble)
    res = {"out": ref.rel(out, r["out"]), "var": ref.rel(cache.var, r["var"])}
    grads = {}
    for name, fn in (("staged", bn.batchnorm_backward), ("fused", bn.batchnorm_backward_fused)):
        dx, dg, db = grads[name] = fn(dout, cache)
        res[f"{name} dx"] = ref.dx_error(dx, rd["dx"], dout, r)
        res[f"{name} dgamma"] = ref.rel(dg, rd["dgamma"])
        res[f"{name} dbeta"] = ref.rel(db, rd["dbeta"])
    s, f = grads["staged"], grads["fused"]
    res["staged vs fused dx"] = ref.dx_error(f[0], s[0], dout,
                                             {"gamma": cache.gamma, "ivar": cache.ivar})
    res["staged vs fused dgamma"] = ref.rel(f[1], s[1])
    return res


def main():
    rng = np.random.default_rng(2026)
    for dtype in (np.float64, np.float32):
        worst = {}
        for shape in SHAPES:
            for _trial in range(5):
                x = rng.normal(3.0, 2.0, shape).astype(dtype)
                C = shape[1]
                g = rng.uniform(0.5, 2, C).astype(dtype)
                b = rng.normal(size=C).astype(dtype)
                dout = rng.normal(size=shape).astype(dtype)
                for k, v in errors(x, g, b, dout).items():
                    worst[k] = max(worst.get(k, 0.0), v)
        print(f"{np.dtype(dtype).name}: worst over shapes {SHAPES} x 5 trials")
        for k, v in worst.items():
            print(f"  {k:24} {v:.2e}")
    x = rng.normal(1e6, 1.0, (4000, 8))
    out, cache = bn.batchnorm_forward(x, np.ones(8), np.zeros(8))
    r = ref.forward(x, np.ones(8), np.zeros(8), dtype=np.longdouble)
    naive = (x ** 2).mean(0) - x.mean(0) ** 2
    print("mean 1e6, std 1, float64, (4000, 8):")
    print(f"  var relative error        {ref.rel(cache.var, r['var']):.2e}   "
          f"(E[x^2]-E[x]^2 in numpy: {ref.rel(naive, r['var']):.2e})")
    print(f"  mu relative error         {ref.rel(cache.mu, r['mu']):.2e}")
    print(f"  out error (to scale)      {ref.rel(out, r['out']):.2e}")


if __name__ == "__main__":
    main()
