"""The per-sample normalizations' kernels against PyTorch's, one thread.

    python benchmarks/norm_kernels.py [ROUNDS]

cybatchnorm's layer, group and instance norm kernels (``_engine.norm_forward``
and ``norm_backward`` with the float32 path a minimal cache and the drop-ins
take; "forward+copy" also writes the numpy layer's own copy of x) against
ATen's (``torch.native_layer_norm``/``native_group_norm`` and their
backwards), float32, contiguous, one thread each; thread CPU time, the
contenders interleaved, median of ROUNDS rounds (default 15) and the ratio of
the medians. No Python layer on either side: what the kernels cost, except
that torch's return fresh outputs where ours write into given ones: the first
touch of fresh memory faults, or not, with the allocator's state (torch's
instance-norm forward measured 1.7 ms in one process, 6.4 in another), so read
a torch figure far above its neighbours' as that. Each case runs in a process
of its own (in one process a case's times depended on the cases before it;
ours also moved with whether numpy's arrays got huge pages: telling malloc to
keep freed memory made them twice as slow).
"""
import subprocess
import sys
import time

import numpy as np
import torch

from cybatchnorm import _engine

CASES = [("layer", (8192, 768), None), ("group", (32, 64, 56, 56), 32),
         ("group", (8, 256, 32, 32), 32), ("instance", (32, 64, 56, 56), 64)]


def calls(shape, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    d = rng.standard_normal(shape).astype(np.float32)
    P = shape[-1] if groups is None else shape[1]
    g = rng.uniform(0.5, 2.0, P).astype(np.float32)
    b = rng.standard_normal(P).astype(np.float32)
    G, S = (1, 1) if groups is None else (groups, int(np.prod(shape[2:])))
    x2 = x.reshape(shape[0] * G, -1)
    d2 = d.reshape(x2.shape)
    out, dx, xc = np.empty_like(x2), np.empty_like(x2), np.empty_like(x2)
    mean, _, ivar = _engine.norm_forward(x2, g, b, 1e-5, G, S, out, 1, fast=True)
    tx, td = torch.from_numpy(x), torch.from_numpy(d)
    tg, tb = torch.from_numpy(g), torch.from_numpy(b)
    if groups is None:
        _, tm, tr = torch.native_layer_norm(tx, (P,), tg, tb, 1e-5)
        theirs = {
            "forward": lambda: torch.native_layer_norm(tx, (P,), tg, tb, 1e-5),
            "backward": lambda: torch.ops.aten.native_layer_norm_backward(
                td, tx, (P,), tm, tr, tg, tb, [True, True, True])}
    else:
        N, C = shape[:2]
        _, tm, tr = torch.native_group_norm(tx, tg, tb, N, C, S, G, 1e-5)
        theirs = {
            "forward": lambda: torch.native_group_norm(tx, tg, tb, N, C, S, G, 1e-5),
            "backward": lambda: torch.ops.aten.native_group_norm_backward(
                td, tx, tm, tr, tg, N, C, S, G, [True, True, True])}
    ours = {
        "forward": lambda: _engine.norm_forward(x2, g, b, 1e-5, G, S, out, 1, fast=True),
        "forward+copy": lambda: _engine.norm_forward(x2, g, b, 1e-5, G, S, out, 1, xc,
                                                     fast=True),
        "backward": lambda: _engine.norm_backward(d2, x2, mean, ivar, g, G, S, dx, 1,
                                                  fast=True)}
    return ours, theirs


def main(rounds=15):
    print(f"per-sample norm kernels, float32, one thread, thread CPU time, median of {rounds} "
          f"interleaved rounds (ms); ratio = ours / torch's", flush=True)
    for i in range(len(CASES)):
        subprocess.run([sys.executable, __file__, str(rounds), str(i)], check=True)


def run_case(rounds, i):
    torch.set_num_threads(1)
    for label, shape, groups in CASES[i:i + 1]:
        ours, theirs = calls(shape, groups)
        contenders = {("ours", k): f for k, f in ours.items()}
        contenders.update({("torch", k): f for k, f in theirs.items()})
        times = {k: [] for k in contenders}
        for fn in contenders.values():
            fn()
        for _ in range(rounds):
            for k, fn in contenders.items():
                t0 = time.thread_time()
                fn()
                times[k].append(time.thread_time() - t0)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        name = f"{label} {'x'.join(map(str, shape))}" + (f" G={groups}" if groups else "")
        parts = []
        for step in ("forward", "forward+copy", "backward"):
            torch_ms = med[("torch", "forward" if step == "forward+copy" else step)]
            parts.append(f"{step} {med[('ours', step)]:.2f}/{torch_ms:.2f} "
                         f"({med[('ours', step)] / torch_ms:.2f})")
        print(f"  {name:28s} " + "  ".join(parts))


if __name__ == "__main__":
    if len(sys.argv) > 2:
        run_case(int(sys.argv[1]), int(sys.argv[2]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
