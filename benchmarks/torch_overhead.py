"""Where a small training step of the PyTorch drop-in spends its time,
measured side by side in one process.

    python benchmarks/torch_overhead.py [--json docs/data/torch_overhead.json]

One thread (torch's and the kernels'), float32, 32 x 16, training mode,
forward + backward of a given dout; every time is the median of 9 rounds of
thread CPU time (``time.thread_time``, which a loaded machine disturbs
least), the contenders interleaved in each round; [min-max] across rounds.

Part 1 times whole steps, each one layer less than the one before, so the
differences are what each layer costs:

- ``torch.nn.BatchNorm1d``: the reference;
- the drop-in module: everything;
- a module whose forward only calls ``_ops.forward``: without the module's
  own work (input rank check, reading the parameters, the momentum);
- a module whose forward applies ``_Fast`` with a ready plan: without the
  routing (dispatcher visibility, the plan lookup);
- the same through ``Function.apply`` instead of autograd's C entry;
- an ``autograd.Function`` that computes nothing (empty outputs): the floor
  of any Python drop-in.

Part 2 times the pieces one by one: the two compiled calls (they include the
kernels' arithmetic), the output allocations, the routing. ``--json`` writes
both parts (the Performance page's breakdown is drawn from that file).
"""
import json
import platform
import statistics
import sys
import time

import torch

from cybatchnorm import _engine
import cybatchnorm.torch as cbt
from cybatchnorm.torch import _ops

N, C = 32, 16
ROUNDS = 15


def interleaved(calls, n):
    """Median, min and max microseconds per call of each callable, in turns."""
    samples = {k: [] for k in calls}
    for fn in calls.values():
        for _ in range(50):
            fn()
    for _ in range(ROUNDS):
        for k, fn in calls.items():
            t0 = time.thread_time()
            for _ in range(n):
                fn()
            samples[k].append((time.thread_time() - t0) / n * 1e6)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in samples.items()}


class Nothing(torch.autograd.Function):
    """Saves what batch norm saves, returns empty outputs."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(w), torch.empty_like(w)


class NothingModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(C))
        self.bias = torch.nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return Nothing.apply(x, self.weight, self.bias)


def _plan(m, x):
    return _ops._plan(x, m.weight, m.bias, m.running_mean, m.running_var, True, 1e-5, 1)


class Routed(cbt.BatchNorm1d):
    """The drop-in without the module's own work."""

    def forward(self, x):
        return _ops.forward(x, self.weight, self.bias, self.running_mean, self.running_var,
                            True, 0.1, 1e-5, 1)


class Applied(cbt.BatchNorm1d):
    """_Fast with a ready plan, through autograd's C entry (what the drop-in uses)."""

    def forward(self, x):
        return _ops._fast_apply(x, self.weight, self.bias, (
            self.plan, self.running_mean, self.running_var, True, 0.1, 1e-5, 0))


class AppliedPy(Applied):
    """The same through torch's Function.apply (its Python wrapper)."""

    def forward(self, x):
        return _ops._Fast.apply(x, self.weight, self.bias, (
            self.plan, self.running_mean, self.running_var, True, 0.1, 1e-5, 0))


def steps():
    x, g = torch.randn(N, C, requires_grad=True), torch.randn(N, C)
    mods = {"torch.nn.BatchNorm1d": torch.nn.BatchNorm1d(C),
            "drop-in module": cbt.BatchNorm1d(C, num_threads=1),
            "without the module's own work": Routed(C, num_threads=1),
            "without the routing too": Applied(C, num_threads=1),
            "  the same through Function.apply": AppliedPy(C, num_threads=1),
            "empty autograd.Function": NothingModule()}
    for m in mods.values():
        if isinstance(m, Applied):
            m.plan = _plan(m, x)
    t = interleaved({k: (lambda m=m: m(x).backward(g)) for k, m in mods.items()}, 2000)
    print_steps(t)
    return t


#: what each step of Part 1 leaves out, against the step before it
LAYERS = (("the module's own work (rank check, parameters and buffers, momentum)",
           "drop-in module", "without the module's own work"),
          ("the routing (dispatcher visibility, plan lookup, counter)",
           "without the module's own work", "without the routing too"),
          ("Function.apply's Python wrapper (not used: autograd's C entry is called)",
           "  the same through Function.apply", "without the routing too"),
          ("the compiled calls, the five outputs, the plan's reads",
           "without the routing too", "empty autograd.Function"),
          ("autograd's machinery for any Python Function (the floor)",
           "empty autograd.Function", None))


def layers(t):
    """[(what, microseconds), ...]: each layer's cost, from Part 1's medians."""
    return [(what, t[a][0] - (t[b][0] if b else 0.0)) for what, a, b in LAYERS]


def print_steps(t):
    ref = t["torch.nn.BatchNorm1d"][0]
    print(f"Part 1: {N}x{C} float32 training step, 1 thread, thread CPU time (us), "
          f"median [min-max] of {ROUNDS} rounds")
    for k, (med, lo, hi) in t.items():
        print(f"  {k:34s} {med:6.1f} [{lo:5.1f}-{hi:5.1f}] = {med / ref:4.2f}x torch")
    print("  what each layer costs (differences of the medians):")
    for what, us in layers(t):
        print(f"    {what:75s} {us:5.1f}")


def pieces():
    torch.manual_seed(0)
    x, g = torch.randn(N, C, requires_grad=True), torch.randn(N, C)
    m = cbt.BatchNorm1d(C, num_threads=1)
    w, b, rm, rv = (t.detach() for t in (m.weight, m.bias, m.running_mean, m.running_var))
    plan = _plan(m, x)
    out, dx = torch.empty_like(x), torch.empty_like(x)
    stats, dw, db = torch.empty(3, C, dtype=torch.float64), torch.empty(C), torch.empty(C)
    sp = stats.data_ptr()
    xd = x.detach()

    def fwd():
        _engine.forward_tensor(xd.data_ptr(), out.data_ptr(), plan.N, C, plan.S, plan.f64,
                               w.data_ptr(), b.data_ptr(), 1e-5, rm.data_ptr(), rv.data_ptr(),
                               True, 0.1, sp, 0, plan.K, 1)

    def bwd():
        _engine.backward_tensor(g.data_ptr(), xd.data_ptr(), dx.data_ptr(), plan.N, C, plan.S,
                                plan.f64, sp, sp + 8 * C, w.data_ptr(), dw.data_ptr(),
                                db.data_ptr(), True, plan.K, 1)
    fwd()
    t = interleaved({
        "forward_tensor (compiled call)": fwd,
        "backward_tensor (compiled call)": bwd,
        "5 outputs (empty_like)": lambda: [torch.empty_like(v) for v in (xd, xd, stats, dw, db)],
        "dispatcher_visible": lambda: _ops.dispatcher_visible(xd, w, b, rm, rv),
        "plan lookup": lambda: _ops._plan(xd, w, b, rm, rv, True, 1e-5, 1),
        "torch F.batch_norm forward (no grad)": lambda: torch.nn.functional.batch_norm(
            xd, None, None, w, b, True),
    }, 20000)
    print("Part 2: the pieces (us per call)")
    for k, (med, lo, hi) in t.items():
        print(f"  {k:40s} {med:6.2f} [{lo:5.2f}-{hi:5.2f}]")
    return t


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t = steps()
    result = {"steps": t, "layers": layers(t), "pieces": pieces(),
              "meta": {"torch": torch.__version__, "machine": platform.machine(),
                       "processor": platform.processor(), "simd": _engine.SIMD,
                       "shape": [N, C], "rounds": ROUNDS}}
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as fh:
            json.dump(result, fh, indent=1)
