"""Where a large training step of the PyTorch drop-in goes, against torch.nn's.

    python benchmarks/dropin_breakdown.py [SHAPE:DTYPE ...]

For each case (default: the bench's float32 cases of 1 MiB and more), in one
process, all threads, wall time, median of 9 interleaved rounds (ms):

- the drop-in's training step and torch.nn's (forward, then backward of a
  given dout, x.grad accumulating as in a training loop);
- the drop-in's two compiled calls alone (``forward_tensor`` and
  ``backward_tensor``, outputs preallocated): the kernels' share of the step;
- torch's two native calls alone (``native_batch_norm.out`` with preallocated
  outputs, ``native_batch_norm_backward``): its kernels' share;
- ``x.grad += dx``: the accumulation both steps pay.

What the step costs beyond its kernels is allocation (page faults on fresh
memory), autograd and Python; when the kernels alone are not well below
torch's, no pooling or per-call saving brings the step below 0.6x of torch's.
"""
import statistics
import sys
import time

import torch

from cybatchnorm import _engine
import cybatchnorm.torch as cbt
from cybatchnorm.torch import _ops

CASES = ["256x1024:float32", "4096x1024:float32", "32x64x56x56:float32",
         "65536x256:float32", "512x16384:float32"]


def case(spec, rounds=9):
    shape, dts = spec.split(":")
    shape = tuple(int(v) for v in shape.split("x"))
    dt = getattr(torch, dts)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=dt, generator=gen).requires_grad_(True)
    g = torch.randn(shape, dtype=dt, generator=gen)
    C = shape[1]
    ours = cbt.BatchNorm(C, dtype=dt)
    ref = (torch.nn.BatchNorm1d if len(shape) < 4 else torch.nn.BatchNorm2d)(C, dtype=dt)
    plan = _ops._plan(x, ours.weight, ours.bias, ours.running_mean, ours.running_var, True,
                      1e-5, 0)
    out, dx = torch.empty_like(x), torch.empty_like(x)
    stats = torch.empty(3, C, dtype=torch.float64)
    dw, db = torch.empty(C, dtype=dt), torch.empty(C, dtype=dt)
    w, b = ours.weight.detach(), ours.bias.detach()
    xd, sp = x.detach(), stats.data_ptr()

    def kernels():
        _engine.forward_tensor(xd.data_ptr(), out.data_ptr(), plan.N, C, plan.S, plan.f64,
                               w.data_ptr(), b.data_ptr(), 1e-5, 0, 0, True, 0.1, sp, 0,
                               plan.K, plan.threads)
        _engine.backward_tensor(g.data_ptr(), xd.data_ptr(), dx.data_ptr(), plan.N, C, plan.S,
                                plan.f64, sp, sp + 8 * C, w.data_ptr(), dw.data_ptr(),
                                db.data_ptr(), True, plan.K, plan.threads)
    o2, sm, si = torch.empty_like(xd), torch.empty(C, dtype=dt), torch.empty(C, dtype=dt)
    wr, br = ref.weight.detach(), ref.bias.detach()

    def torch_kernels():
        torch.ops.aten.native_batch_norm.out(xd, wr, br, None, None, True, 0.1, 1e-5,
                                             out=o2, save_mean=sm, save_invstd=si)
        torch.ops.aten.native_batch_norm_backward(g, xd, wr, None, None, sm, si, True, 1e-5,
                                                  [True, True, True])
    acc = torch.empty_like(xd)
    calls = {"drop-in step": lambda: ours(x).backward(g),
             "torch.nn step": lambda: ref(x).backward(g),
             "our compiled calls": kernels, "torch's native calls": torch_kernels,
             "x.grad += dx": lambda: acc.add_(dx)}
    t = {k: [] for k in calls}
    for f in calls.values():
        f()
        f()
    n = max(1, int(2e7 // x.numel()))
    for _ in range(rounds):
        for k, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            t[k].append((time.perf_counter() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in t.items()}
    step = med["drop-in step"] / med["torch.nn step"]
    kern = med["our compiled calls"] / med["torch's native calls"]
    print(f"{spec} ({torch.get_num_threads()} torch threads; ms, medians): "
          + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
          + f"; step ratio {step:.2f}, kernels ratio {kern:.2f}", flush=True)


if __name__ == "__main__":
    for spec in sys.argv[1:] or CASES:
        case(spec)
