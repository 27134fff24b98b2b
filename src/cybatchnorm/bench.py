"""``python -m cybatchnorm bench``: side-by-side timings, printed as ratios.

Everything is measured in one process, after a warm-up, as the median of
``repeats`` runs taken in turns (one run of every contender per round, so
that the noise of a shared machine falls on all of them alike): cybatchnorm's forward, staged backward and fused backward;
numpy doing the same node by node and in closed form; PyTorch's CPU batch norm
when torch is importable; and the memory-bandwidth bound, measured on the spot
as a copy of an array the size of x with the same number of threads.

The bound for forward + backward is 8 x the bytes of x at that bandwidth: one
read for the statistics, a read and a write to normalize, two reads for the
backward reductions, two reads and a write for dx. A copy moves 2 x the bytes,
so the bound is 4 copy times.

Every case is timed twice: with outputs allocated by each call (page faults on
fresh memory included) and with outputs passed in (``out=``, ``dx=``; torch's
``.out`` overloads), so like is compared with like.
"""
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np

from . import _engine
from ._threads import effective_num_threads
from ._validation import DEFAULT_EPS
from .api import batchnorm_backward, batchnorm_backward_fused, batchnorm_forward
from .layer import BatchNorm
from ._version import __version__

CASES = ["256x1024", "4096x1024", "65536x256", "512x16384", "32x64x56x56"]
EPS = DEFAULT_EPS


def parse_case(text):
    """``"32x64x56x56"`` -> ``(32, 64, 56, 56)``; at least two positive sizes."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--cases: expected shapes like 256x1024, got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"--cases: expected shapes like 256x1024, got {text!r}")
    return shape


# ---------------------------------------------------------------- numpy

def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bc(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def numpy_forward(x, gamma, beta):
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


def numpy_staged_backward(dout, c):
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


def numpy_fused_backward(dout, c):
    """Closed-form backward in numpy."""
    ax = _axes(dout)
    M = dout.size // dout.shape[1]
    xhat = c["xhat"]
    dbeta = dout.sum(axis=ax)
    dgamma = (dout * xhat).sum(axis=ax)
    k = _bc(c["gamma"] * c["ivar"] / M, dout)
    dx = k * (M * dout - _bc(dbeta, dout) - xhat * _bc(dgamma, dout))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- torch

def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def torch_calls(torch, x, gamma, beta, dout, threads):
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
    gi, gw, gb = torch.empty_like(xd), torch.empty(C, dtype=xd.dtype), torch.empty(C, dtype=xd.dtype)

    def fwd_passed():
        with torch.no_grad():
            aten.native_batch_norm.out(xd, wd, bd, None, None, True, 0.1, EPS,
                                       out=o, save_mean=sm, save_invstd=si)

    def bwd_passed():
        with torch.no_grad():
            aten.native_batch_norm_backward.out(g, xd, wd, None, None, sm, si, True, EPS,
                                                [True, True, True], out0=gi, out1=gw, out2=gb)
    fwd_passed()
    return {
        "torch_alloc_fwd": lambda: F.batch_norm(xt, None, None, w, b, training=True, eps=EPS),
        "torch_alloc_bwd": lambda: torch.autograd.grad(out, (xt, w, b), g, retain_graph=True),
        "torch_passed_fwd": fwd_passed,
        "torch_passed_bwd": bwd_passed,
    }


# Pause between two timed calls: longer than an OpenMP runtime's spin-wait
# after a parallel region (libgomp spins about 0.3 ms by default). torch
# brings its own OpenMP runtime; without the pause, the threads one contender
# leaves spinning would steal the cores from the next contender's call.
PAUSE = 0.003


def round_robin(calls, repeats):
    """Median time of every callable, timed in turns (one run of each per
    round) so that whatever else the machine does falls on all of them alike,
    with a short pause before each call (see PAUSE)."""
    for fn in calls.values():   # warm-up
        fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------- torch drop-in

DROPIN_CASES = [("32x16", None), ("256x1024", None), ("4096x1024", None),
                ("32x64x56x56", None), ("32x64x56x56", "channels_last")]
DROPIN_TARGET = 0.8


def dropin_case(torch, shape, fmt, repeats):
    """Median seconds of one training step (forward, then backward of a given
    dout) of ``cybatchnorm.torch.BatchNorm1d/2d`` and of torch's, float32,
    timed interleaved without pauses, as a model alternating them runs."""
    import cybatchnorm.torch as cbt
    nn = torch.nn
    ours = (cbt.BatchNorm1d if len(shape) < 4 else cbt.BatchNorm2d)(shape[1])
    theirs = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(shape[1])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    dout = torch.randn(shape, generator=gen)
    if fmt:
        x = x.to(memory_format=getattr(torch, fmt))
        dout = dout.to(memory_format=getattr(torch, fmt))
    x.requires_grad_(True)
    inner = max(1, min(2000, int(2e7 // x.numel())))

    def step(m):
        def run():
            for _ in range(inner):
                m(x).backward(dout)
        return run
    t = round_robin_nopause({"ours": step(ours), "torch": step(theirs)}, repeats)
    return {k: v / inner for k, v in t.items()}


def round_robin_nopause(calls, repeats):
    """As :func:`round_robin` without the pause: contenders back to back."""
    for fn in calls.values():
        fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def dropin_table(torch, repeats, file):
    """Print the drop-in against torch.nn.BatchNorm1d/2d, one line per case."""
    w = lambda s: print(s, file=file, flush=True)    # noqa: E731
    w(f"cybatchnorm.torch.BatchNorm1d/2d against torch.nn's (float32, training step: forward"
      f" + backward, interleaved, {torch.get_num_threads()} torch threads); target <="
      f" {DROPIN_TARGET}x")
    rows = []
    for case, fmt in DROPIN_CASES:
        shape = parse_case(case)
        t = dropin_case(torch, shape, fmt, repeats)
        ratio = t["ours"] / t["torch"]
        rows.append({"shape": shape, "format": fmt or "contiguous", "ours": t["ours"],
                     "torch": t["torch"], "ratio": ratio})
        w(f"  {case:>12} {fmt or 'contiguous':>13}: ours {t['ours'] * 1e3:8.3f} ms, torch"
          f" {t['torch'] * 1e3:8.3f} ms, {ratio:5.2f}x"
          f" ({'met' if ratio <= DROPIN_TARGET else 'NOT met'})")
    return rows


# ---------------------------------------------------------------- memory

def peak_bytes(fn):
    """Peak bytes allocated (as tracemalloc sees numpy's allocations) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def fused_peak(x, gamma, beta, dout, nt, passed):
    """Peak memory of a minimal-cache forward plus fused backward, outputs
    allocated by the calls or passed in."""
    out, dx = (np.empty_like(x), np.empty_like(x)) if passed else (None, None)

    def both():
        _, cache = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt, cache="minimal", out=out)
        batchnorm_backward_fused(dout, cache, num_threads=nt, dx=dx)
    return peak_bytes(both)


# ---------------------------------------------------------------- runner

def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_case(shape, dtype, threads, repeats, torch):
    """All timings of one case; returns a dict of medians in seconds."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.normal(size=C).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    nt = threads
    r = {"shape": list(shape), "dtype": np.dtype(dtype).name, "threads": nt,
         "mib": x.nbytes / 2**20}

    buf = np.empty_like(x)
    _, full = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt)
    _, mini = batchnorm_forward(x, gamma, beta, EPS, num_threads=nt, cache="minimal")
    _, npc = numpy_forward(x, gamma, beta)
    out, dx = np.empty_like(x), np.empty_like(x)
    layer = BatchNorm(C, dtype=dtype, num_threads=nt)

    def layer_step():
        layer.forward(x)
        layer.backward(dout)
    calls = {
        "copy": lambda: _engine.copy(x.reshape(-1), buf.reshape(-1), nt),
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

        def channels_last():
            _, c = batchnorm_forward(x_cl, gamma, beta, EPS, axis=-1, num_threads=nt,
                                     cache="minimal")
            batchnorm_backward_fused(dout_cl, c, num_threads=nt)
        calls["channels_last"] = channels_last
    if torch is not None:
        calls.update(torch_calls(torch, x, gamma, beta, dout, nt))
    r.update(round_robin(calls, repeats))
    r["bandwidth_gbs"] = 2 * x.nbytes / r["copy"] / 1e9
    r["bound"] = 4 * r["copy"]
    for mode in ("alloc", "passed"):
        r[f"{mode}_total"] = r[f"{mode}_fwd"] + r[f"{mode}_bwd"]
        if torch is not None:
            r[f"torch_{mode}_total"] = r[f"torch_{mode}_fwd"] + r[f"torch_{mode}_bwd"]
    r["peak_alloc"] = fused_peak(x, gamma, beta, dout, nt, passed=False)
    r["peak_passed"] = fused_peak(x, gamma, beta, dout, nt, passed=True)
    return r


def _ms(s):
    return f"{s * 1e3:8.2f}"


def _ratio(a, b):
    return f"{a / b:6.2f}x" if b else "     -"


def format_table(results, have_torch):
    """The summary table: medians in ms and the ratios the targets are about."""
    head = (f"{'case':>14} {'dtype':>7} {'thr':>3} {'outputs':>7} {'MiB':>6} | {'fwd':>8} {'bwd':>8}"
            f" {'f+b':>8} {'staged':>8} | {'torch':>8} {'np-f+b':>8} {'np-stg':>8} {'bound':>8} |"
            f" {'f+b/torch':>9} {'f+b/bnd':>7} {'np-stg/stg':>10} {'stg/fus':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        for mode in ("alloc", "passed"):
            torch_t = r.get(f"torch_{mode}_total", 0.0)
            lines.append(
                f"{'x'.join(map(str, r['shape'])):>14} {r['dtype']:>7} {r['threads']:>3} {mode:>7}"
                f" {r['mib']:6.1f} | {_ms(r[mode + '_fwd'])} {_ms(r[mode + '_bwd'])}"
                f" {_ms(r[mode + '_total'])} {_ms(r['staged_bwd'])} |"
                f" {_ms(torch_t) if have_torch else '       -'}"
                f" {_ms(r['numpy_fwd'] + r['numpy_fused_bwd'])}"
                f" {_ms(r['numpy_staged_bwd'])} {_ms(r['bound'])} |"
                f" {_ratio(r[mode + '_total'], torch_t) if have_torch else '        -':>9}"
                f" {_ratio(r[mode + '_total'], r['bound']):>7}"
                f" {_ratio(r['numpy_staged_bwd'], r['staged_bwd']):>10}"
                f" {_ratio(r['staged_bwd'], r['alloc_bwd']):>7}")
    return "\n".join(lines)


TARGETS = (("layer f+b / torch f+b", 0.7), ("allocating / passed-in", 1.2),
           ("staged bwd / fused bwd", 2.0), ("channels-last / (N, C) layout", 1.1),
           ("passed-in f+b / 8S bound (>= 16 MiB)", 0.9))


def format_targets(results, have_torch):
    """One line per target of the benchmark: the worst case's ratio, and
    whether every case meets it."""
    rows = {name: [] for name, _ in TARGETS}
    for r in results:
        case = f"{'x'.join(map(str, r['shape']))} {r['dtype']} {r['threads']} thr"
        if have_torch:
            rows["layer f+b / torch f+b"].append((r["layer"] / r["torch_alloc_total"], case))
        rows["allocating / passed-in"].append((r["alloc_total"] / r["passed_total"], case))
        rows["staged bwd / fused bwd"].append((r["staged_bwd"] / r["alloc_bwd"], case))
        if "channels_last" in r:
            rows["channels-last / (N, C) layout"].append((r["channels_last"] / r["alloc_total"],
                                                         case))
        if r["mib"] >= 16:
            rows["passed-in f+b / 8S bound (>= 16 MiB)"].append(
                (r["passed_total"] / r["bound"], case))
    lines = ["targets (worst case of the run; every case must meet the target):"]
    for name, target in TARGETS:
        if not rows[name]:
            lines.append(f"  {name:38s} <= {target:.2f}x: no case measured")
            continue
        worst, case = max(rows[name])
        ok = sum(v <= target for v, _ in rows[name])
        lines.append(f"  {name:38s} <= {target:.2f}x: worst {worst:5.2f}x ({case}); "
                     f"{ok} of {len(rows[name])} cases meet it")
    return "\n".join(lines)


def run(cases=None, dtypes=("float32", "float64"), threads=None, repeats=7, json_path=None,
        file=None):
    """Run the benchmark; print a line per case, then the table. Returns the results."""
    file = file or sys.stdout
    shapes = [parse_case(c) for c in (cases or CASES)]
    all_threads = effective_num_threads(None)
    thread_list = threads or sorted({1, all_threads})
    torch = _torch()
    w = lambda s: print(s, file=file, flush=True)
    w(f"cybatchnorm {__version__} bench: {cpu_model()}, "
      f"{os.cpu_count()} cpus, numpy {np.__version__}, "
      + (f"torch {torch.__version__}" if torch else "torch not importable: no torch columns")
      + f"; median of {repeats} after a warm-up")
    results = []
    for shape in shapes:
        for dt in dtypes:
            for nt in thread_list:
                r = bench_case(shape, np.dtype(dt), nt, repeats, torch)
                results.append(r)
                t = f" torch {r['torch_alloc_total'] * 1e3:.2f} ms" if torch else ""
                w(f"  {'x'.join(map(str, shape))} {dt} {nt} thr: fwd+bwd {r['alloc_total'] * 1e3:.2f} ms"
                  f" (outputs passed in {r['passed_total'] * 1e3:.2f} ms), staged bwd"
                  f" {r['staged_bwd'] * 1e3:.2f} ms,{t} bound {r['bound'] * 1e3:.2f} ms;"
                  f" tracemalloc peak of fwd+bwd {r['peak_alloc'] / 2**20:.2f} MiB"
                  f" ({r['peak_alloc'] / (r['mib'] * 2**20):.2f} x the size of x), with outputs"
                  f" passed in {r['peak_passed'] / 2**10:.1f} KiB")
    w("")
    w(format_table(results, torch is not None))
    w("")
    w("fwd/bwd: forward (minimal cache) and fused backward; staged: staged backward (full cache);"
      " bound: 8 x bytes of x at the copy bandwidth measured with the same threads;"
      " np-f+b: numpy forward + closed-form backward; np-stg: numpy staged backward;"
      " np-stg/stg: how much faster the compiled staged backward is; stg/fus: staged over fused backward")
    w("")
    w(format_targets(results, torch is not None))
    dropin = None
    if torch is not None and cases is None:
        w("")
        dropin = dropin_table(torch, repeats, file)
    if json_path:
        meta = {"version": __version__, "machine": platform.machine(),
                "description": f"{cpu_model()}, {platform.system()} {platform.machine()}",
                "cpus": os.cpu_count(),
                "numpy": np.__version__, "torch": torch.__version__ if torch else None,
                "repeats": repeats}
        with open(json_path, "w") as fh:
            json.dump({"meta": meta, "results": results, "dropin": dropin}, fh, indent=1)
        w(f"results written to {json_path}")
    return results
