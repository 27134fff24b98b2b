"""``python -m cybatchnorm bench``: side-by-side timings, printed as ratios.

Everything is measured in one process, after a warm-up, in ``repeats``
rounds taken in turns (one run of every contender per round, so that the
noise of a shared machine falls on all of them alike): the layer's training
step, the functional forward and fused backward (outputs allocated and passed
in), the staged backward, the channels-last path, numpy doing the same node by
node and in closed form, PyTorch's CPU batch norm (functional and the
``torch.nn.BatchNorm1d/2d`` module) when torch is importable, and the memory
bandwidth, measured on the spot as a copy of an array the size of x with the
same number of threads. Every contender's min, median and max are kept, and
the raw samples go to the JSON with the environment they were taken in.

Two bounds for forward + backward, at that bandwidth, S being the bytes of x:
8S (one read for the statistics, a read and a write to normalize, two reads
for the backward reductions, two reads and a write for dx) and the 5S floor
that cache blocking reaches (read x, write out; read dout and x, write dx). A
copy moves 2S, so the bounds are 4 and 2.5 copy times.

Every case is timed twice: with outputs allocated by each call (page faults on
fresh memory included) and with outputs passed in (``out=``, ``dx=``; torch's
``.out`` overloads), so like is compared with like.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

from .. import _engine
from .._config import config
from .._typing import AnyArray
from .._validation import DEFAULT_EPS, check_num_threads
from .._version import __version__
from ..api import batchnorm_backward, batchnorm_backward_fused, batchnorm_forward
from ..layer import BatchNorm
from ..norm_layers import GroupNorm, LayerNorm
from ..norms import (
    groupnorm_backward_fused,
    groupnorm_forward,
    layernorm_backward_fused,
    layernorm_forward,
)
from .report import (
    case_name,
    format_sweeps,
    format_table,
    format_targets,
    printer,
    targets_met,
)
from .timing import interleaved, peak_bytes, ratio_record, ratio_spread, samples, spread

__all__ = ["CASES", "DROPIN_CASES", "EPS", "Interrupted", "NORM_CASES", "bench_case",
           "check_output_path", "dropin_case", "dropin_table", "environment", "norm_accuracy",
           "norm_case", "norm_dropin_case", "norm_dropin_table", "norm_table", "parse_case",
           "run", "sweep_case", "sweep_table", "training_steps"]


CASES = ["32x16", "256x1024", "4096x1024", "65536x256", "512x16384", "32x64x56x56"]
EPS = DEFAULT_EPS


def parse_case(text: str) -> tuple[int, ...]:
    """``"32x64x56x56"`` -> ``(32, 64, 56, 56)``; at least two positive sizes."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--cases: expected shapes like 256x1024, got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"--cases: expected shapes like 256x1024, got {text!r}")
    return shape


# ---------------------------------------------------------------- numpy

def _axes(x: Any) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _bc(v: Any, x: Any) -> AnyArray:
    res: AnyArray = v.reshape((1, -1) + (1,) * (x.ndim - 2))
    return res


def numpy_forward(x: Any, gamma: Any, beta: Any) -> tuple[AnyArray, dict[str, Any]]:
    """Forward node by node in numpy; returns out and the values the backward needs."""
    ax = _axes(x)
    mu = x.mean(axis=ax)
    xmu = x - _bc(mu, x)
    sq = xmu ** 2
    var = sq.mean(axis=ax)
    sqrtvar = np.sqrt(var + EPS)
    ivar = 1 / sqrtvar
    xhat = xmu * _bc(ivar, x)
    out = _bc(gamma, x) * xhat + _bc(beta, x)
    return out, {"xmu": xmu, "sqrtvar": sqrtvar, "ivar": ivar, "xhat": xhat, "gamma": gamma}


def numpy_staged_backward(dout: Any, c: Any) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Backward node by node, as a textbook writes it in numpy."""
    ax = _axes(dout)
    M = dout.size // dout.shape[1]
    xmu, xhat, ivar, sqrtvar = c["xmu"], c["xhat"], c["ivar"], c["sqrtvar"]
    dbeta = dout.sum(axis=ax)
    dgamma = (dout * xhat).sum(axis=ax)
    dxhat = dout * _bc(c["gamma"], dout)
    divar = (dxhat * xmu).sum(axis=ax)
    dxmu1 = dxhat * _bc(ivar, dout)
    dvar = 0.5 * (-divar / sqrtvar ** 2) / sqrtvar
    dxmu2 = 2 * xmu * (np.ones_like(dout) * _bc(dvar, dout) / M)
    dxmu = dxmu1 + dxmu2
    dmu = -dxmu.sum(axis=ax)
    dx = dxmu + np.ones_like(dout) * _bc(dmu, dout) / M
    return dx, dgamma, dbeta


def numpy_fused_backward(dout: Any, c: Any) -> tuple[AnyArray, AnyArray, AnyArray]:
    """Closed-form backward in numpy."""
    ax = _axes(dout)
    M = dout.size // dout.shape[1]
    xhat = c["xhat"]
    dbeta = dout.sum(axis=ax)
    dgamma = (dout * xhat).sum(axis=ax)
    k = _bc(c["gamma"] * c["ivar"] / M, dout)
    dx = k * (M * dout - _bc(dbeta, dout) - xhat * _bc(dgamma, dout))
    return dx, dgamma, dbeta


def _torch() -> Any:
    try:
        import torch
        return torch
    except ImportError:
        return None


def torch_calls(
    torch: Any,
    x: Any,
    gamma: Any,
    beta: Any,
    dout: Any,
    threads: Any,
) -> dict[str, Callable[[], Any]]:
    """Timed callables for PyTorch: forward and autograd backward with outputs
    allocated (F.batch_norm), and with outputs passed in (aten
    native_batch_norm(_backward).out)."""
    torch.set_num_threads(threads)
    F = torch.nn.functional
    aten = torch.ops.aten
    xt = torch.from_numpy(x).requires_grad_(True)
    w = torch.from_numpy(gamma).requires_grad_(True)
    b = torch.from_numpy(beta).requires_grad_(True)
    g = torch.from_numpy(dout)
    out = F.batch_norm(xt, None, None, w, b, training=True, eps=EPS)
    C = x.shape[1]
    xd, wd, bd = xt.detach(), w.detach(), b.detach()
    o = torch.empty_like(xd)
    sm, si = torch.empty(C, dtype=xd.dtype), torch.empty(C, dtype=xd.dtype)
    gi = torch.empty_like(xd)
    gw, gb = torch.empty(C, dtype=xd.dtype), torch.empty(C, dtype=xd.dtype)

    def fwd_passed() -> Any:
        with torch.no_grad():
            aten.native_batch_norm.out(xd, wd, bd, None, None, True, 0.1, EPS,
                                       out=o, save_mean=sm, save_invstd=si)

    def bwd_passed() -> Any:
        with torch.no_grad():
            aten.native_batch_norm_backward.out(g, xd, wd, None, None, sm, si, True, EPS,
                                                [True, True, True], out0=gi, out1=gw, out2=gb)
    fwd_passed()
    module = (torch.nn.BatchNorm1d if x.ndim < 4 else torch.nn.BatchNorm2d)(C, eps=EPS)
    module = module.to(xd.dtype)
    xm = xd.clone().requires_grad_(True)

    def module_step() -> Any:
        module(xm).backward(g)
    return {
        "torch_alloc_fwd": lambda: F.batch_norm(xt, None, None, w, b, training=True, eps=EPS),
        "torch_alloc_bwd": lambda: torch.autograd.grad(out, (xt, w, b), g, retain_graph=True),
        "torch_passed_fwd": fwd_passed,
        "torch_passed_bwd": bwd_passed,
        "torch_module": module_step,
    }


# ------------------------------------------------------- torch drop-in

DROPIN_CASES = [(case, fmt, dt) for case, fmt in
                (("32x16", None), ("256x1024", None), ("4096x1024", None), ("65536x256", None),
                 ("512x16384", None), ("32x64x56x56", None), ("32x64x56x56", "channels_last"))
                for dt in ("float32", "float64")]


def dropin_target(shape: Sequence[int], itemsize: int) -> float:
    """The drop-in's target for one case, as a ratio to torch.nn's training
    step: 1.15 on 32x16 (where Python's per-call cost dominates), 1.2 on
    256x1024, 0.6 on every case of 16 MiB or more, 1.0 elsewhere."""
    if tuple(shape) == (32, 16):
        return 1.15
    if tuple(shape) == (256, 1024):
        return 1.2
    n = 1
    for s in shape:
        n *= s
    return 0.6 if n * itemsize >= 16 << 20 else 1.0


def training_steps(torch: Any, steps: dict[str, Callable[[], Any]], inner: int, repeats: int,
                   threads: int | None) -> dict[str, list[float]]:
    """Seconds per call of each step (``inner`` calls per sample), the steps
    interleaved without pauses as a model alternating them runs; ``threads``
    None: torch's threads as they are, wall time; else torch set to that many
    threads (restored after), timed in thread CPU time (``time.thread_time``),
    which a loaded machine disturbs least."""
    def repeat(step: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                step()
        return run
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        clock = time.perf_counter if threads is None else time.thread_time
        t = interleaved({k: repeat(s) for k, s in steps.items()}, repeats, clock)
    finally:
        torch.set_num_threads(before)
    return {k: [s / inner for s in v] for k, v in t.items()}


def dropin_case(torch: Any, shape: Any, fmt: Any, dtype: str, repeats: int,
                threads: int | None) -> dict[str, list[float]]:
    """Seconds of one training step (forward, then backward of a given dout)
    of ``cybatchnorm.torch.BatchNorm1d/2d`` and of torch's, one sample per
    round, the two interleaved without pauses as a model alternating them
    runs. ``threads`` None: every core, wall time; 1: one thread each, timed
    in thread CPU time (``time.thread_time``), which a loaded machine
    disturbs least."""
    import cybatchnorm.torch as cbt
    nn = torch.nn
    dt = getattr(torch, dtype)
    ours = (cbt.BatchNorm1d if len(shape) < 4 else cbt.BatchNorm2d)(
        shape[1], dtype=dt, num_threads=threads)
    theirs = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(shape[1], dtype=dt)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dt)
    dout = torch.randn(shape, generator=gen, dtype=dt)
    if fmt:
        x = x.to(memory_format=getattr(torch, fmt))
        dout = dout.to(memory_format=getattr(torch, fmt))
    x.requires_grad_(True)
    steps = {"ours": lambda: ours(x).backward(dout), "torch": lambda: theirs(x).backward(dout)}
    return training_steps(torch, steps, max(1, min(2000, int(2e7 // x.numel()))), repeats,
                          threads)


def dropin_table(torch: Any, repeats: int, file: Any) -> list[dict[str, Any]]:
    """Print the drop-in against torch.nn.BatchNorm1d/2d, one line per case:
    every core in wall time (the targets) and one thread in thread CPU time."""
    w = printer(file)
    nt = torch.get_num_threads()
    w(f"cybatchnorm.torch.BatchNorm1d/2d against torch.nn's: training step (forward + "
      f"backward), interleaved, median of {repeats} rounds, [min-max] of the per-round ratios;"
      f" 'all' = {nt} threads each, wall time (the targets); '1 thr' = one thread each, thread "
      f"CPU time; layout: contiguous (NCHW) or channels_last (NHWC)")
    w(f"  {'case':>11} {'layout':>6} {'dtype':>7} {'ours ms':>9} {'torch ms':>9} {'all':>5}"
      f" {'[min-max]':>11} {'1 thr':>5} {'[min-max]':>11} {'target':>6}")
    rows = []
    for case, fmt, dtype in DROPIN_CASES:
        shape = parse_case(case)
        itemsize = np.dtype(dtype).itemsize
        target = dropin_target(shape, itemsize)
        r = ratio_record(dropin_case(torch, shape, fmt, dtype, repeats, None),
                         dropin_case(torch, shape, fmt, dtype, repeats, 1),
                         shape=shape, format=fmt or "contiguous", dtype=dtype, target=target,
                         threads=nt)
        rows.append(r)
        w(f"  {case:>11} {'NHWC' if fmt else 'NCHW':>6} {dtype:>7}"
          f" {r['ours'] * 1e3:9.3f} {r['torch'] * 1e3:9.3f} {r['ratio']:5.2f}"
          f" [{r['ratio_min']:4.2f}-{r['ratio_max']:4.2f}] {r['ratio_1thread']:5.2f}"
          f" [{r['ratio_1thread_min']:4.2f}-{r['ratio_1thread_max']:4.2f}] {target:5.2f}x"
          f" {'met' if r['ratio'] <= target else 'NOT met'}")
    w(targets_met("drop-in", rows))
    return rows


# ------------------------------------------- layer, group and instance norm

#: (label, shape, groups): groups None is layer norm over the last axis
NORM_CASES = [("layer", (8192, 768), None), ("layer", (64, 197, 768), None),
              ("group", (32, 64, 56, 56), 32), ("group", (8, 256, 32, 32), 32),
              ("instance", (32, 64, 56, 56), 64)]
NORM_TARGET = 0.8


def _norm_layers(torch: Any, shape: Sequence[int], groups: int | None, dtype: Any,
                 threads: int | None) -> tuple[Any, Any]:
    # ours (numpy layer) and torch.nn's module for one case
    if groups is None:
        return (LayerNorm(shape[-1], dtype=dtype, num_threads=threads),
                torch.nn.LayerNorm(shape[-1], dtype=getattr(torch, np.dtype(dtype).name)))
    return (GroupNorm(groups, shape[1], dtype=dtype, num_threads=threads),
            torch.nn.GroupNorm(groups, shape[1], dtype=getattr(torch, np.dtype(dtype).name)))


def norm_case(torch: Any, shape: Sequence[int], groups: int | None, dtype: Any, repeats: int,
              threads: int | None) -> dict[str, list[float]]:
    """Seconds of one training step (forward, then backward of a given dout)
    of cybatchnorm's numpy LayerNorm/GroupNorm and of torch.nn's module,
    interleaved; ``threads`` None: every core, wall time; 1: one thread each,
    thread CPU time."""
    ours, theirs = _norm_layers(torch, shape, groups, dtype, threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(dout)

    def ours_step() -> None:
        ours.forward(x)
        ours.backward(dout)
    steps = {"ours": ours_step, "torch": lambda: theirs(xt).backward(gt)}
    return training_steps(torch, steps, max(1, min(200, int(2e7 // x.size))), repeats, threads)


NORM_DROPIN_TARGET = 1.0


def _norm_modules(torch: Any, kind: str, shape: Sequence[int], groups: int | None,
                  threads: int | None) -> tuple[Any, Any]:
    # the drop-in and torch.nn's module for one case (float32)
    import cybatchnorm.torch as cbt
    if kind == "layer":
        return cbt.LayerNorm(shape[-1], num_threads=threads), torch.nn.LayerNorm(shape[-1])
    if kind == "group":
        assert groups is not None       # NORM_CASES gives every group-norm case its G
        return (cbt.GroupNorm(groups, shape[1], num_threads=threads),
                torch.nn.GroupNorm(groups, shape[1]))
    return (cbt.InstanceNorm2d(shape[1], affine=True, num_threads=threads),
            torch.nn.InstanceNorm2d(shape[1], affine=True))


def norm_dropin_case(torch: Any, kind: str, shape: Sequence[int], groups: int | None,
                     fmt: str | None, repeats: int,
                     threads: int | None) -> dict[str, list[float]]:
    """Seconds of one training step (forward, then backward of a given
    dout) of ``cybatchnorm.torch``'s LayerNorm/GroupNorm/InstanceNorm2d and of
    torch.nn's, float32, contiguous or in ``fmt`` ("channels_last"),
    interleaved; ``threads`` None: every core, wall time; 1: one thread
    each, thread CPU time."""
    ours, theirs = _norm_modules(torch, kind, shape, groups, threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=gen)
    dout = torch.randn(tuple(shape), generator=gen)
    if fmt:
        x = x.to(memory_format=getattr(torch, fmt))
        dout = dout.to(memory_format=getattr(torch, fmt))
    x.requires_grad_(True)
    steps = {"ours": lambda: ours(x).backward(dout), "torch": lambda: theirs(x).backward(dout)}
    return training_steps(torch, steps, max(1, min(200, int(2e7 // x.numel()))), repeats,
                          threads)


def norm_accuracy(torch: Any, shape: Sequence[int], groups: int | None,
                  offset: float) -> dict[str, float]:
    """float32 relative errors (max |error| / max |exact|) of out and dx,
    ours (a minimal cache's path, what the timed layer runs) and torch.nn's,
    against float64 on the same float32 data of std 1 shifted by ``offset``."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) + offset).astype(np.float32)
    dout = rng.normal(size=shape).astype(np.float32)
    P = (shape[-1],) if groups is None else (shape[1],)
    gamma, beta = rng.uniform(0.5, 2, P).astype(np.float32), rng.normal(size=P).astype(np.float32)
    F = torch.nn.functional

    def run(a: Any, d: Any, g: Any, b: Any) -> tuple[Any, Any]:
        # the timed layer's path: a minimal cache (float32 in float32 where exact enough)
        if groups is None:
            out, cache = layernorm_forward(a, g, b, cache="minimal")
            return out, layernorm_backward_fused(d, cache)[0]
        out, cache = groupnorm_forward(a, g, b, groups, cache="minimal")
        return out, groupnorm_backward_fused(d, cache)[0]

    def torch_run(a: Any, d: Any) -> tuple[Any, Any]:
        xt = torch.from_numpy(a).requires_grad_(True)
        gt, bt = torch.from_numpy(gamma.astype(a.dtype)), torch.from_numpy(beta.astype(a.dtype))
        out = (F.layer_norm(xt, P, gt, bt, EPS) if groups is None
               else F.group_norm(xt, groups, gt, bt, EPS))
        out.backward(torch.from_numpy(d))
        return out.detach().numpy(), xt.grad.numpy()
    exact = run(x.astype(np.float64), dout.astype(np.float64), gamma.astype(np.float64),
                beta.astype(np.float64))
    ours, theirs = run(x, dout, gamma, beta), torch_run(x, dout)

    def err(a: Any, e: Any) -> float:
        return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-300))
    return {"out": err(ours[0], exact[0]), "dx": err(ours[1], exact[1]),
            "torch_out": err(theirs[0], exact[0]), "torch_dx": err(theirs[1], exact[1])}


def norm_table(torch: Any, repeats: int, file: Any) -> list[dict[str, Any]]:
    """Print the numpy LayerNorm/GroupNorm training step against torch.nn's
    module (every core in wall time, the target; one thread in thread CPU
    time) and the float32 errors at offsets 1e3 and 1e6, ours and torch's."""
    w = printer(file)
    nt = torch.get_num_threads()
    w(f"layer, group and instance norm: numpy LayerNorm/GroupNorm training step against "
      f"torch.nn's module (float32, contiguous), interleaved, median of {repeats} rounds, "
      f"[min-max] of the per-round ratios; 'all' = {nt} threads, wall time (the target, "
      f"<= {NORM_TARGET}); '1 thr' = one thread, thread CPU time; float32 error (max |err| / "
      f"max |exact|) of out and dx at offsets 1e3 and 1e6, ours / torch's")
    w(f"  {'case':>9} {'shape':>14} {'G':>3} {'ours ms':>8} {'torch ms':>8} {'all':>5}"
      f" {'[min-max]':>11} {'1 thr':>5}  {'dx err 1e3':>17}  {'dx err 1e6':>17}")
    rows = []
    for label, shape, groups in NORM_CASES:
        acc = {off: norm_accuracy(torch, shape, groups, off) for off in (1e3, 1e6)}
        r = ratio_record(norm_case(torch, shape, groups, np.float32, repeats, None),
                         norm_case(torch, shape, groups, np.float32, repeats, 1),
                         kind=label, shape=list(shape), groups=groups, threads=nt,
                         target=NORM_TARGET, errors={str(k): v for k, v in acc.items()})
        rows.append(r)
        errs = "  ".join(f"{acc[o]['dx']:.1e}/{acc[o]['torch_dx']:.1e}" for o in (1e3, 1e6))
        w(f"  {label:>9} {'x'.join(map(str, shape)):>14} {groups or '-':>3}"
          f" {r['ours'] * 1e3:8.3f} {r['torch'] * 1e3:8.3f} {r['ratio']:5.2f}"
          f" [{r['ratio_min']:4.2f}-{r['ratio_max']:4.2f}] {r['ratio_1thread']:5.2f}  {errs}"
          f" {'met' if r['ratio'] <= NORM_TARGET else 'NOT met'}")
    w(targets_met("norm", rows))
    return rows


def norm_dropin_table(torch: Any, repeats: int, file: Any) -> list[dict[str, Any]]:
    """Print cybatchnorm.torch's LayerNorm/GroupNorm/InstanceNorm2d training
    step against torch.nn's (float32; contiguous, and channels_last for the
    4-D cases): every core in wall time (the target, <= 1.0) and one thread
    in thread CPU time."""
    w = printer(file)
    nt = torch.get_num_threads()
    w(f"cybatchnorm.torch.LayerNorm/GroupNorm/InstanceNorm2d against torch.nn's: training step "
      f"(float32), interleaved, median of {repeats} rounds, [min-max] of the per-round ratios;"
      f" 'all' = {nt} threads, wall time (the target, <= {NORM_DROPIN_TARGET}); '1 thr' = one "
      f"thread, thread CPU time")
    w(f"  {'case':>9} {'shape':>14} {'G':>3} {'layout':>6} {'ours ms':>8} {'torch ms':>8}"
      f" {'all':>5} {'[min-max]':>11} {'1 thr':>5} {'[min-max]':>11}")
    rows = []
    for label, shape, groups in NORM_CASES:
        for fmt in (None, "channels_last") if len(shape) == 4 else (None,):
            r = ratio_record(norm_dropin_case(torch, label, shape, groups, fmt, repeats, None),
                             norm_dropin_case(torch, label, shape, groups, fmt, repeats, 1),
                             kind=label, shape=list(shape), groups=groups,
                             format=fmt or "contiguous", threads=nt, target=NORM_DROPIN_TARGET)
            rows.append(r)
            w(f"  {label:>9} {'x'.join(map(str, shape)):>14} {groups or '-':>3}"
              f" {'NHWC' if fmt else 'NCHW':>6} {r['ours'] * 1e3:8.3f} {r['torch'] * 1e3:8.3f}"
              f" {r['ratio']:5.2f} [{r['ratio_min']:4.2f}-{r['ratio_max']:4.2f}]"
              f" {r['ratio_1thread']:5.2f}"
              f" [{r['ratio_1thread_min']:4.2f}-{r['ratio_1thread_max']:4.2f}]"
              f" {'met' if r['ratio'] <= NORM_DROPIN_TARGET else 'NOT met'}")
    w(targets_met("norm drop-in", rows))
    return rows


# ------------------------------------------------------- per-sweep table

def sweep_case(shape: Sequence[int], dtype: Any, repeats: int, torch: Any) -> dict[str, Any]:
    """Each sweep of the fused kernels alone (``_engine.sweep_calls``) on one
    thread, in thread CPU time (what a loaded machine disturbs least),
    interleaved with a read of x (the unit S) and, with torch, torch's
    training forward (``torch.batch_norm``, no grad, one thread). Returns
    the median seconds of each and the [min, max] of the per-round ratio
    of our forward to torch's."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    N, C = shape[0], shape[1]
    x3, g3 = x.reshape(N, C, -1), dout.reshape(N, C, -1)
    calls = _engine.sweep_calls(x3, g3, 1)
    inner = max(1, min(2000, int(4e6 // x.size)))
    if torch is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        xt = torch.from_numpy(x)
        calls["torch_forward"] = lambda: torch.batch_norm(xt, None, None, None, None, True, 0.1,
                                                          EPS, False)

    def repeat(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                fn()
        return run
    try:
        times = interleaved({k: repeat(fn) for k, fn in calls.items()}, repeats, time.thread_time)
    finally:
        if torch is not None:
            torch.set_num_threads(before)
    r: dict[str, Any] = {"shape": list(shape), "dtype": np.dtype(dtype).name,
                         "mib": x.nbytes / 2**20}
    r.update({k: statistics.median(v) / inner for k, v in times.items()})
    if torch is not None:
        ratio, lo, hi = ratio_spread(times["forward"], times["torch_forward"])
        r.update(forward_torch=ratio, forward_torch_min=lo, forward_torch_max=hi)
    return r


def sweep_table(shapes: Sequence[Sequence[int]], dtypes: Sequence[str], repeats: int,
                torch: Any, file: Any) -> list[dict[str, Any]]:
    """Print the per-sweep table (``format_sweeps``) for every case."""
    w = printer(file)
    w(f"sweeps of the fused kernels, one thread, thread CPU time, in S = one read of x (S us: "
      f"its time), interleaved, median of {repeats} rounds: a copy of x; the forward's "
      f"statistics and normalize sweeps and the backward's sums and dx sweeps (minimal cache) "
      f"each alone; the whole forward (out given) and backward (dx given)"
      + ("; torch: torch.batch_norm's training forward (no grad); f/torch: our forward / "
         "torch's, [min-max] of the per-round ratios" if torch is not None else ""))
    rows = [sweep_case(shape, np.dtype(dt), repeats, torch) for shape in shapes for dt in dtypes]
    w(format_sweeps(rows), wrap=False)
    return rows


# ---------------------------------------------------------------- runner

def fused_peak(x: Any, gamma: Any, beta: Any, dout: Any, nt: int | None, passed: Any) -> int:
    """Peak memory of a minimal-cache forward plus fused backward, outputs
    allocated by the calls or passed in."""
    out, dx = (np.empty_like(x), np.empty_like(x)) if passed else (None, None)

    def both() -> None:
        _, cache = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt, cache="minimal", out=out)
        batchnorm_backward_fused(dout, cache, num_threads=nt, dx=dx)
    return peak_bytes(both)


def bench_case(shape: Any, dtype: Any, threads: Any, repeats: int, torch: Any) -> dict[str, Any]:
    """All timings of one case; returns a dict of medians in seconds."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.normal(size=C).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    # all threads: our calls get num_threads=None, the default a user gets
    # (small batches then run on fewer threads); the copy uses them all
    nt = None if threads == check_num_threads(None) else threads
    r = {"shape": list(shape), "dtype": np.dtype(dtype).name, "threads": threads,
         "mib": x.nbytes / 2**20}

    buf = np.empty_like(x)
    _, full = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt)
    _, mini = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt, cache="minimal")
    _, npc = numpy_forward(x, gamma, beta)
    out, dx = np.empty_like(x), np.empty_like(x)
    layer = BatchNorm(C, dtype=dtype, num_threads=nt)

    def layer_step() -> None:
        layer.forward(x)
        layer.backward(dout)
    calls = {
        "copy": lambda: _engine.copy(x.reshape(-1), buf.reshape(-1), threads),
        "alloc_fwd": lambda: batchnorm_forward(x, gamma, beta, EPS, num_threads=nt,
                                               cache="minimal"),
        "alloc_bwd": lambda: batchnorm_backward_fused(dout, mini, num_threads=nt),
        "passed_fwd": lambda: batchnorm_forward(x, gamma, beta, EPS, num_threads=nt,
                                                cache="minimal", out=out),
        "passed_bwd": lambda: batchnorm_backward_fused(dout, mini, num_threads=nt, dx=dx),
        "staged_bwd": lambda: batchnorm_backward(dout, full, num_threads=nt),
        "numpy_fwd": lambda: numpy_forward(x, gamma, beta),
        "numpy_staged_bwd": lambda: numpy_staged_backward(dout, npc),
        "numpy_fused_bwd": lambda: numpy_fused_backward(dout, npc),
        "layer": layer_step,
    }
    if len(shape) > 2:
        # the same data channels last, (N, *spatial, C), through axis=-1
        x_cl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        dout_cl = np.ascontiguousarray(np.moveaxis(dout, 1, -1))

        def channels_last() -> Any:
            _, c = batchnorm_forward(x_cl, gamma, beta, EPS, axis=-1, num_threads=nt,
                                     cache="minimal")
            batchnorm_backward_fused(dout_cl, c, num_threads=nt)
        calls["channels_last"] = channels_last
    if torch is not None:
        calls.update(torch_calls(torch, x, gamma, beta, dout, threads))
    times = samples(calls, repeats)
    r["samples"] = times
    r["spread"] = spread(times)
    r.update({k: v["median"] for k, v in r["spread"].items()})
    r["bandwidth_gbs"] = 2 * x.nbytes / r["copy"] / 1e9
    r["bound"] = 4 * r["copy"]          # 8S
    r["bound5"] = 2.5 * r["copy"]       # the 5S floor
    for mode in ("alloc", "passed"):
        r[f"{mode}_total"] = r[f"{mode}_fwd"] + r[f"{mode}_bwd"]
        if torch is not None:
            r[f"torch_{mode}_total"] = r[f"torch_{mode}_fwd"] + r[f"torch_{mode}_bwd"]
    r["peak_alloc"] = fused_peak(x, gamma, beta, dout, nt, passed=False)
    r["peak_passed"] = fused_peak(x, gamma, beta, dout, nt, passed=True)
    return r


def environment(threads: Any, torch: Any) -> dict[str, Any]:
    """Where the numbers were taken, from ``show_config``'s facts
    (:func:`cybatchnorm._config.config`): versions, SIMD level, OpenMP, CPU,
    caches; and the thread counts measured and torch's version."""
    c = config()
    run = c["Runtime"]
    return {"cybatchnorm": c["cybatchnorm"]["version"], "python": c["Python"]["version"],
            "numpy": c["numpy"]["version"], "torch": torch.__version__ if torch else None,
            "simd": run["simd"], "openmp": c["Build"]["openmp"].startswith("enabled"),
            "openmp_runtime": run["openmp runtimes loaded"], "threads": list(threads),
            "cpu": c["Machine"]["cpu"], "cpus": c["Machine"]["cpus"],
            "usable_cpus": run["usable cpus"], "caches": c["Machine"]["caches"],
            "platform": c["Machine"]["platform"]}


def check_output_path(path: Any, name: str = "json_path") -> str | None:
    """Refuse, before a long run, a results file that could not be written."""
    if path is None:
        return None
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a directory, expected a file name")
    if not os.path.isdir(parent):
        raise ValueError(f"{name}: the directory of {path!r} does not exist")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise ValueError(f"{name}: {path!r} is not writable")
    return str(path)


class Interrupted(list[dict[str, Any]]):
    """The results measured before Ctrl-C (a list; ``run`` returns it)."""


def run(cases: Sequence[str] | None = None, dtypes: Sequence[str] = ("float32", "float64"),
        threads: Sequence[int] | None = None, repeats: int = 7, json_path: Any = None,
        file: Any = None, wide: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark; print a line per case (with the default cases and
    torch importable, then the PyTorch drop-in's table: :func:`dropin_table`),
    then the table and the targets, and write the JSON. Returns the results; on Ctrl-C, what was
    measured so far is printed and written, and returned as an
    :class:`Interrupted` list."""
    file = file or sys.stdout
    json_path = check_output_path(json_path)
    shapes = [parse_case(c) for c in (cases or CASES)]
    all_threads = check_num_threads(None)
    thread_list = threads or sorted({1, all_threads})
    torch = _torch()
    cpu = config()["Machine"]["cpu"]
    w = printer(file)
    w(f"cybatchnorm {__version__} bench: {cpu}, "
      f"{os.cpu_count()} cpus, numpy {np.__version__}, "
      + (f"torch {torch.__version__}" if torch else "torch not importable: no torch columns")
      + f"; {_engine.SIMD} kernels; {repeats} runs of each after a warm-up")
    results = []
    dropin = None
    norm_rows = None
    norm_dropin_rows = None
    sweeps: list[dict[str, Any]] = []
    todo = [(shape, dt, nt) for shape in shapes for dt in dtypes for nt in thread_list]
    try:
        for shape, dt, nt in todo:
            r = bench_case(shape, np.dtype(dt), nt, repeats, torch)
            results.append(r)
            t = f", torch module {r['torch_module'] * 1e3:.2f} ms" if torch else ""
            w(f"  {case_name(r)} {dt} {nt} thr: fwd+bwd {r['alloc_total'] * 1e3:.2f} ms"
              f" (outputs passed in {r['passed_total'] * 1e3:.2f} ms), layer"
              f" {r['layer'] * 1e3:.2f} ms, staged bwd {r['staged_bwd'] * 1e3:.2f} ms{t};"
              f" 5S {r['bound5'] * 1e3:.2f} ms, 8S {r['bound'] * 1e3:.2f} ms; tracemalloc peak"
              f" of fwd+bwd {r['peak_alloc'] / 2**20:.2f} MiB"
              f" ({r['peak_alloc'] / (r['mib'] * 2**20):.2f} x the size of x), with outputs"
              f" passed in {r['peak_passed'] / 2**10:.1f} KiB")
        w("")
        sweeps = sweep_table(shapes, dtypes, repeats, torch, file)
        if torch is not None and (cases is None or list(cases) == CASES):
            w("")
            dropin = dropin_table(torch, repeats, file)
            w("")
            norm_rows = norm_table(torch, repeats, file)
            w("")
            norm_dropin_rows = norm_dropin_table(torch, repeats, file)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
        w("")
        w(f"interrupted: {len(results)} of {len(todo)} cases measured; reporting those")
    if results:
        w("")
        w(format_table(results, wide=wide), wrap=False)
        w("")
        w("f+b: functional forward (minimal cache) + fused backward, median of the runs;"
          " layer: BatchNorm training step; staged: staged backward (full cache); torch:"
          " torch.nn.BatchNorm1d/2d training step; 8S: 8 x bytes of x at the copy"
          " bandwidth measured with the same threads; lay/tm: layer / torch module;"
          " stg/fus: staged / fused backward"
          + ("; 5S: the 5-pass floor; min-max: the spread of f+b" if wide
             else " (--wide: more columns)"))
        w("")
        w(format_targets(results, sweeps=sweeps))
    if json_path:
        meta = {"version": __version__, "machine": platform.machine(),
                "description": f"{cpu}, {platform.system()} {platform.machine()}",
                "cpus": os.cpu_count(), "numpy": np.__version__,
                "torch": torch.__version__ if torch else None, "repeats": repeats,
                "interrupted": interrupted,
                "environment": environment(thread_list, torch)}
        with open(json_path, "w") as fh:
            json.dump({"meta": meta, "results": results, "sweeps": sweeps, "dropin": dropin,
                       "norms": norm_rows, "norm_dropins": norm_dropin_rows}, fh,
                      indent=1)
        w(f"results written to {json_path}")
    return Interrupted(results) if interrupted else results
