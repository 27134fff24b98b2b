"""The fused chapter's cost table, measured on the kernels as they run.

    python docs/scripts/cost_table.py OUTDIR

Writes OUTDIR/fused_costs.md (batch norm) and OUTDIR/norm_costs.md (layer
norm and group norm, for the normalizations chapter). Both backward paths are run on one batch with
every compiled kernel call intercepted: for each call, which arguments are
arrays the size of x, which of them the kernel read and which it wrote
(a written array is one whose bytes changed; one passed in both as input and
output, or added into, is read and written). A traversal is one read or one
write of a whole (N, D) array. The fused backward is a single compiled call
that sweeps its inputs twice (pass 1: the two sums per feature; pass 2: dx,
see ``_fused.backward``), so its reads count twice; the per-sample norms'
fused kernel (``_norms.backward``) reads each row from memory once and its
later passes over the row from cache (a row is at most a few tens of KiB), so
its reads count once. Temporaries are the distinct x-sized buffers a path
wrote besides the dx it returns.
"""
import os
import sys

import numpy as np

import cybatchnorm as bn
from cybatchnorm import _engine

FUSED_SWEEPS = 2   # _fused.backward: pass 1 reduces, pass 2 writes dx
NORM_SWEEPS = 1    # _norms.backward: every pass over a row after the first reads it from cache


class _Recorder:
    """Stands in for a compiled kernel module; logs x-sized reads and writes."""

    def __init__(self, module, size):
        self._module, self._size, self.calls = module, size, []

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def call(*args):
            # x-sized data: (N, C, S) views, or the per-sample norms' (R, M) rows
            full = [(i, a) for i, a in enumerate(args)
                    if isinstance(a, np.ndarray) and a.size == self._size and a.ndim >= 2]
            before = {i: a.copy() for i, a in full}
            res = fn(*args)
            reads, writes = [], []
            for i, a in full:
                written = not np.array_equal(before[i], a, equal_nan=True)
                # sq_backward(..., add, n_threads): add=True adds into its output
                adds = written and name.startswith("sq_backward") and args[3] is True
                passed_twice = any(j != i and np.may_share_memory(a, b) for j, b in full)
                if written:
                    writes.append(a)
                if not written or adds or passed_twice:
                    reads.append(a)
            if full:   # a kernel over x-sized data (not a grid helper)
                self.calls.append((name, _distinct(reads), _distinct(writes)))
            return res
        return call


def _distinct(arrays):
    # an array passed twice (as input and as output) is one buffer
    out = []
    for a in arrays:
        if not any(np.may_share_memory(a, b) for b in out):
            out.append(a)
    return out


def _measure(run, owner, attr, size):
    rec = _Recorder(getattr(owner, attr), size)
    setattr(owner, attr, rec)
    try:
        dx = run()
    finally:
        setattr(owner, attr, rec._module)
    return rec.calls, dx


def _temporaries(calls, dx):
    bufs = []
    for _, _, writes in calls:
        for w in writes:
            if not np.may_share_memory(w, dx) and not any(np.may_share_memory(w, b) for b in bufs):
                bufs.append(w)
    return len(bufs)


def _rows(name, staged_run, fused_run, fused_module, sweeps, size):
    staged, sdx = _measure(staged_run, _engine, "nodes", size)
    fused, fdx = _measure(fused_run, _engine, fused_module, size)
    rows = []
    for path, calls, dx, sw in (("staged", staged, sdx, 1), ("fused", fused, fdx, sweeps)):
        per = [f"`{n}` {len(r) * sw}r+{len(w)}w" for n, r, w in calls if r or w]
        total = sum(len(r) * sw + len(w) for _, r, w in calls)
        rows.append((f"{path} (`{name}_backward{'' if path == 'staged' else '_fused'}`)",
                     len(calls), ", ".join(per), total, _temporaries(calls, dx)))
    return rows


def costs():
    """Batch norm's rows: the staged walk and the fused kernel on one (64, 32) batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32))
    gamma, beta, dout = rng.uniform(0.5, 2, 32), rng.normal(size=32), rng.normal(size=x.shape)
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    return _rows("batchnorm", lambda: bn.batchnorm_backward(dout, cache)[0],
                 lambda: bn.batchnorm_backward_fused(dout, cache)[0], "fused", FUSED_SWEEPS,
                 x.size)


def norm_costs():
    """Layer norm's and group norm's rows: the same staged walk (batch norm's node
    kernels in their views) and the per-sample fused kernel."""
    rng = np.random.default_rng(0)
    # 96 rows: the fused kernel's (64, 32) parameter partials are not x-sized
    x = rng.normal(size=(96, 32))
    g, b, dout = rng.uniform(0.5, 2, 32), rng.normal(size=32), rng.normal(size=x.shape)
    _, lc = bn.layernorm_forward(x, g, b)
    img = rng.normal(size=(8, 32, 4, 4))
    dimg = rng.normal(size=img.shape)
    _, gc = bn.groupnorm_forward(img, g, b, num_groups=4)
    layer = _rows("layernorm", lambda: bn.layernorm_backward(dout, lc)[0],
                  lambda: bn.layernorm_backward_fused(dout, lc)[0], "norms", NORM_SWEEPS,
                  x.size)
    group = _rows("groupnorm", lambda: bn.groupnorm_backward(dimg, gc)[0],
                  lambda: bn.groupnorm_backward_fused(dimg, gc)[0], "norms", NORM_SWEEPS,
                  img.size)
    return [("layer norm, " + r[0],) + r[1:] for r in layer] + \
        [("group norm, " + r[0],) + r[1:] for r in group]


def table(rows=None):
    lines = ["| path | compiled calls over x-sized data "
             "| x-sized reads (r) and writes (w) per call "
             "| traversals of (N, D) data | x-sized temporaries |",
             "|---|---|---|---|---|"]
    for name, ncalls, per, total, temps in (costs() if rows is None else rows):
        lines.append(f"| {name} | {ncalls} | {per} | {total} | {temps} |")
    return "\n".join(lines) + "\n"


def main(outdir):
    path = os.path.join(outdir, "fused_costs.md")
    with open(path, "w") as f:
        f.write(table())
    npath = os.path.join(outdir, "norm_costs.md")
    with open(npath, "w") as f:
        f.write(table(norm_costs()))
    return path


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(table())
    print(table(norm_costs()))
