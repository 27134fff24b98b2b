"""The walkthrough's check table: every gradient of the tiny batch, checked twice.

    python docs/scripts/check_table.py OUTDIR

Writes OUTDIR/walkthrough_checks.md, a table with one row per gradient, in
the order of the backward walk: the compiled node kernel against a numpy
one-liner (written here, independently of the package) and against centred
differences of the node's own compiled forward kernel, in the style of
Karpathy's "exact / approximate / max diff" checks. Every number is computed
when the site is built.
"""
import os
import sys

from draw_circuit import BETA, DOUT, EPS, GAMMA, X, compute
import numpy as np

from cybatchnorm import graph, nodes

H = 1e-6   # centred differences: error ~ H**2 * f''' plus rounding ~ eps64 / H


def numgrad(f, a, g, h=H):
    """Centred differences of sum(f(a) * g) with respect to every entry of a."""
    a = np.array(a, dtype=float)
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = np.sum(f(a) * g)
        a[i] = old - h
        down = np.sum(f(a) * g)
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def checks():
    """(node, gradient, kernel, numpy, numeric) for every gradient of the walk."""
    v, d = compute()
    N = X.shape[0]
    x, mu, xmu, sq, var = v["x"], v["mu"], v["xmu"], v["sq"], v["var"]
    sqrtvar, ivar, xhat, gammax = v["sqrtvar"], v["ivar"], v["xhat"], v["gammax"]

    def from_xmu(m):   # out as a function of xmu, through both of its branches
        iv = nodes.ivar_forward(nodes.sqrtvar_forward(nodes.var_forward(nodes.sq_forward(m)), EPS))
        return nodes.out_forward(nodes.gammax_forward(nodes.xhat_forward(m, iv), GAMMA), BETA)

    def from_x(a):     # out as a function of x: the whole forward walk
        return graph.forward(a, GAMMA, BETA, EPS)["out"]

    rows = [
        ("out", "dbeta", DOUT.sum(0), lambda b: nodes.out_forward(gammax, b), BETA, DOUT),
        ("out", "dgammax", DOUT, lambda t: nodes.out_forward(t, BETA), gammax, DOUT),
        ("gammax", "dgamma", (d["dgammax"] * xhat).sum(0),
         lambda gm: nodes.gammax_forward(xhat, gm), GAMMA, d["dgammax"]),
        ("gammax", "dxhat", d["dgammax"] * GAMMA,
         lambda h: nodes.gammax_forward(h, GAMMA), xhat, d["dgammax"]),
        ("xhat", "divar", (d["dxhat"] * xmu).sum(0),
         lambda iv: nodes.xhat_forward(xmu, iv), ivar, d["dxhat"]),
        ("xhat", "dxmu1", d["dxhat"] * ivar,
         lambda m: nodes.xhat_forward(m, ivar), xmu, d["dxhat"]),
        ("ivar", "dsqrtvar", -d["divar"] / sqrtvar ** 2, nodes.ivar_forward, sqrtvar, d["divar"]),
        ("sqrtvar", "dvar", 0.5 * d["dsqrtvar"] / sqrtvar,
         lambda s: nodes.sqrtvar_forward(s, EPS), var, d["dsqrtvar"]),
        ("var", "dsq", np.ones_like(sq) * d["dvar"] / N, nodes.var_forward, sq, d["dvar"]),
        ("sq", "dxmu2", 2 * xmu * d["dsq"], nodes.sq_forward, xmu, d["dsq"]),
        ("xmu (branch sum)", "dxmu", d["dxmu1"] + d["dxmu2"], from_xmu, xmu, DOUT),
        ("xmu", "dx1", d["dxmu"], lambda t: nodes.xmu_forward(t, mu), x, d["dxmu"]),
        ("xmu", "dmu", -d["dxmu"].sum(0), lambda m: nodes.xmu_forward(x, m), mu, d["dxmu"]),
        ("mu", "dx2", np.ones_like(x) * d["dmu"] / N, nodes.mu_forward, x, d["dmu"]),
        ("x (branch sum)", "dx", d["dx1"] + d["dx2"], from_x, x, DOUT),
    ]
    return [(node, name, np.asarray(d[name]), np.asarray(ref), numgrad(f, a, g))
            for node, name, ref, f, a, g in rows]


def table():
    """The Markdown table; raises when a kernel is not close to its centred differences
    (a wrong kernel fails the build instead of printing a bad row)."""
    lines = ["| node | gradient | kernel == numpy | close to centred differences "
             "| max abs diff, kernel vs numpy | max abs diff, kernel vs centred differences |",
             "|---|---|---|---|---|---|"]
    wrong = []
    for node, name, kernel, ref, num in checks():
        exact = bool(np.array_equal(kernel, ref))
        close = bool(np.allclose(kernel, num, rtol=1e-6, atol=1e-8))
        if not close:
            wrong.append(f"{name} of {node}: max diff {np.abs(kernel - num).max():.1e}")
        lines.append(
            f"| `{node}` | `{name}` | {'exact' if exact else 'no'} | "
            f"{'close' if close else 'NO'} | {np.abs(kernel - ref).max():.1e} | "
            f"{np.abs(kernel - num).max():.1e} |")
    if wrong:
        raise RuntimeError("node kernels disagree with centred differences: " + "; ".join(wrong))
    return "\n".join(lines) + "\n"


def main(outdir):
    path = os.path.join(outdir, "walkthrough_checks.md")
    with open(path, "w") as f:
        f.write(table())
    return path


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(main(sys.argv[1] if len(sys.argv) > 1 else "."))
