"""Where the PyTorch drop-in's time goes, measured side by side in one process.

    python benchmarks/torch_overhead.py

Prints, as ratios to torch.nn.BatchNorm1d (float32, training, interleaved
runs, medians):

1. the floor any Python drop-in has: an ``autograd.Function`` inside an
   ``nn.Module`` that computes nothing (empty outputs), forward + backward on
   a 32x16 batch;
2. the compiled kernels alone (fused forward, closed-form backward; outputs
   and scratch preallocated, no Python around them) against torch's forward
   and backward on 256x1024;
3. the drop-in's training step on the same cases.

The target of 0.8x torch's training step on every case needs (1) far below
0.8 and (2) below 0.8 with room for the conversions (2) leaves out.
"""
import statistics
import time

import numpy as np
import torch

import cybatchnorm.torch as cbt
from cybatchnorm._engine import fused


def interleaved(calls, n, repeats=9):
    """Median microseconds per call of each callable, timed in turns."""
    times = {k: [] for k in calls}
    for fn in calls.values():
        for _ in range(10):
            fn()
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t0) / n * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


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
    def __init__(self, C):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(C))
        self.bias = torch.nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return Nothing.apply(x, self.weight, self.bias)


def floor():
    x, g = torch.randn(32, 16, requires_grad=True), torch.randn(32, 16)
    empty, ref, ours = NothingModule(16), torch.nn.BatchNorm1d(16), cbt.BatchNorm1d(16)
    t = interleaved({"empty": lambda: empty(x).backward(g), "torch": lambda: ref(x).backward(g),
                     "ours": lambda: ours(x).backward(g)}, 2000)
    print(f"32x16 training step: torch {t['torch']:.1f} us; an empty autograd.Function module "
          f"{t['empty']:.1f} us = {t['empty'] / t['torch']:.2f}x torch; the drop-in "
          f"{t['ours']:.1f} us = {t['ours'] / t['torch']:.2f}x")


def kernels(N=256, C=1024):
    xt, gt = torch.randn(N, C, requires_grad=True), torch.randn(N, C)
    x3, g3 = xt.detach().numpy().reshape(N, C, 1), gt.numpy().reshape(N, C, 1)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    stats = [np.empty(C, np.float32) for _ in range(4)]
    mu64, ivar64 = np.empty(C), np.empty(C)
    K = fused.row_chunks(N, C, 1, 4)
    pa, pb, sh, coef = np.empty((K, C)), np.empty((K, C)), np.empty(C), np.empty((3, C))
    out, dx = np.empty_like(x3), np.empty_like(x3)
    dgamma, dbeta = np.empty(C, np.float32), np.empty(C, np.float32)
    w, b = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    o = torch.nn.functional.batch_norm(xt, None, None, w, b, training=True)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.batch_norm(xt, None, None, w, b, training=True)
    t = interleaved({
        "kernel fwd": lambda: fused.forward(x3, ones, zeros, 1e-5, out, out, out, False, *stats,
                                            mu64, ivar64, False, pa, pb, sh, 2),
        "torch fwd": torch_fwd,
        "kernel bwd": lambda: fused.backward(g3, x3, True, mu64, ivar64, ones, dx, dgamma, dbeta,
                                             True, pa, pb, coef, 2),
        "torch bwd": lambda: torch.autograd.grad(o, (xt, w, b), gt, retain_graph=True),
    }, 300)
    print(f"{N}x{C} float32, kernels alone: forward {t['kernel fwd']:.1f} us = "
          f"{t['kernel fwd'] / t['torch fwd']:.2f}x torch's, backward {t['kernel bwd']:.1f} us = "
          f"{t['kernel bwd'] / t['torch bwd']:.2f}x torch's; together "
          f"{(t['kernel fwd'] + t['kernel bwd']) / (t['torch fwd'] + t['torch bwd']):.2f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    floor()
    kernels()
