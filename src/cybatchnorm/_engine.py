"""The unchecked engine: the only importer of the compiled kernels.

Every function here assumes its caller validated everything (shapes, dtypes,
contiguity, eps, the thread count): the public functions do, once, through
``_validation``. Arrays arrive as the (N, C, S) views the kernels read, per
channel vectors as (C,); results go back the same way and the caller reshapes.
Nothing here checks, loops over elements or holds state beyond the pool of
output buffers.

Which compiled build runs: the AVX-512 one when the CPU has AVX-512 (F, BW,
DQ, VL), else the AVX2 one when it has AVX2, else the baseline. All are the
same Cython source and give bitwise equal results (no FMA contraction).
``CYBATCHNORM_SIMD=baseline`` or ``=avx2`` caps the choice; another value
warns and is ignored. A build whose OpenMP probe failed warns at import.
"""
from __future__ import annotations

from collections.abc import Sequence
import importlib
import importlib.util
import math
import os
from types import ModuleType
from typing import Any
import warnings

import numpy as np

from . import _fused, _nodes, _norms, _openmp, _pool, _split
from ._typing import AnyArray, F64Array

LEVELS = ("baseline", "avx2", "avx512")
KERNEL_MODULES = ("_fused", "_nodes", "_split", "_norms")
_FEATURES = {"avx2": "AVX2", "avx512": "AVX-512 F, BW, DQ and VL"}


def _load(level: str) -> tuple[ModuleType, ...] | None:
    # the three kernel modules of one instruction-set level, or None when
    # they were not built for it (a compiler without the flags)
    if level == "baseline":
        return _fused, _nodes, _split, _norms
    try:
        mods = tuple(importlib.import_module(f"{__package__}.{m}_{level}")
                     for m in KERNEL_MODULES)
    except ImportError:
        return None
    return mods if all(m.SIMD == level for m in mods) else None


def _pick() -> tuple[tuple[ModuleType, ...], str]:
    # returns the modules and why they were chosen, for show_config
    raw = os.environ.get("CYBATCHNORM_SIMD", "")
    want = raw.strip().lower()
    cap = len(LEVELS) - 1
    if want in LEVELS:
        cap = LEVELS.index(want)
    elif want:
        warnings.warn(f"CYBATCHNORM_SIMD={raw!r} is not one of {', '.join(LEVELS)}; ignored "
                      "(the best level this CPU and build support is used)",
                      RuntimeWarning, stacklevel=3)
    cpu = {"avx512": _openmp.cpu_has_avx512(), "avx2": _openmp.cpu_has_avx2()}
    capped = f", capped by CYBATCHNORM_SIMD={want}" if cap < len(LEVELS) - 1 else ""
    for level in reversed(LEVELS[1:cap + 1]):
        if not cpu[level]:
            continue
        mods = _load(level)
        if mods is not None:
            return mods, f"the CPU has {_FEATURES[level]}{capped}"
    if want == "baseline":
        why = "CYBATCHNORM_SIMD=baseline"
    elif not any(cpu[lv] for lv in LEVELS[1:cap + 1]):
        why = f"the CPU has neither AVX2 nor AVX-512{capped}"
    else:
        why = ("this build has no AVX2/AVX-512 modules (a non-x86 target or a compiler "
               "without the flags)")
    return (_fused, _nodes, _split, _norms), why


(fused, nodes, split, norms), SIMD_REASON = _pick()
SIMD = fused.SIMD
if _openmp.openmp_status().startswith("disabled (the build's OpenMP probe failed"):
    warnings.warn("cybatchnorm was built without OpenMP because the build's OpenMP probe "
                  "failed: its kernels run on one thread. Rebuild with a compiler that has "
                  "OpenMP (see show_config(); CYBATCHNORM_NO_OPENMP=1 builds serially "
                  "on purpose and quietly)", RuntimeWarning, stacklevel=2)
# found, not imported: a twin's code may not run on this CPU
SIMD_BUILT = ("baseline",) + tuple(
    lv for lv in LEVELS[1:]
    if all(importlib.util.find_spec(f"{__package__}.{m}_{lv}") is not None for m in KERNEL_MODULES))

# what the build and the runtime offer (for show_config and the thread count)
openmp_enabled = _openmp.openmp_enabled
omp_max_threads = _openmp.omp_max_threads
build_flags = _openmp.build_flags
openmp_status = _openmp.openmp_status
compiler = _openmp.compiler
cpu_has_avx2 = _openmp.cpu_has_avx2
cpu_has_avx512 = _openmp.cpu_has_avx512


# ------------------------------------------------------------------ memory

def empty(shape: Sequence[int], dtype: Any) -> AnyArray:
    """An uninitialized array for an output of the package: from the pool of
    reused buffers when it is large (see ``cybatchnorm.memory``), else
    ``np.empty``. Writable, C-contiguous, 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _pool.MIN_BYTES:
        return np.empty(shape, dtype)
    block: Any = _pool.Block(nbytes)     # a buffer exporter numpy's stubs do not list
    return np.frombuffer(block, dtype).reshape(shape)


set_pool_limit = _pool.set_pool_limit
release_pool = _pool.release_pool
pool_info = _pool.pool_info


# ------------------------------------------------------------------ fused

def row_chunks(N: int, C: int, S: int, itemsize: int) -> int:
    """Row chunks of the kernels' work grid for an (N, C, S) array of
    ``itemsize``-byte values (the fused and the split kernels share it): a
    function of the shape and dtype alone, never of the thread count (see
    _common.pxd)."""
    return int(fused.row_chunks(N, C, S, itemsize))


def _chunks(shape3: Sequence[int], dtype: np.dtype[Any]) -> int:
    return row_chunks(shape3[0], shape3[1], shape3[2], dtype.itemsize)


def fused_forward(x3: AnyArray, gamma: AnyArray, beta: AnyArray, eps: float, out3: AnyArray,
                  keep: bool, stats: tuple[AnyArray, AnyArray] | None, nt: int,
                  frozen: bool = False, copy_x: bool = False) -> dict[str, AnyArray]:
    """The fused forward; returns the node values by name (and ``m2``, the
    float64 sums of squared deviations of the batch statistics: zeros when
    ``stats`` are given).

    ``stats`` None computes the batch statistics; otherwise ``(mu, var)``
    (copies the engine may keep) normalize instead. ``keep`` also writes and
    returns ``xmu`` and ``xhat`` (pooled arrays of x's view shape).

    ``frozen`` (what a Cache keeps): the (C,) values, copies of gamma and
    beta (and of the given stats) included and returned as ``gamma`` and
    ``beta``, are read-only rows of two blocks made read-only once the
    kernel has run: no row can be made writable again.

    ``copy_x`` also returns ``x``: a pooled copy of x3, written by the
    normalize sweep as it reads x (one write where a separate copy costs a
    read and a write).
    """
    dt, C = x3.dtype, x3.shape[1]
    xmu = empty(x3.shape, dt) if keep else out3
    xhat = empty(x3.shape, dt) if keep else out3
    if frozen:
        block, block64 = np.empty((6, C), dt), np.empty((3, C))
        mu, var, sqrtvar, ivar, g, b = block
        mu64, ivar64, m2 = block64
        np.copyto(g, gamma)
        np.copyto(b, beta)
        gamma, beta = g, b
        m2[:] = 0.0
        if stats is not None:
            np.copyto(mu, stats[0])
            np.copyto(var, stats[1])
    else:
        mu, var = (np.empty(C, dt), np.empty(C, dt)) if stats is None else stats
        sqrtvar, ivar = np.empty(C, dt), np.empty(C, dt)
        mu64, ivar64, m2 = np.empty(C), np.empty(C), np.zeros(C)
    K = _chunks(x3.shape, dt)
    xcopy = empty(x3.shape, dt) if copy_x else None
    fused.forward(x3, gamma, beta, eps, out3, xmu, xhat, keep, mu, var, sqrtvar, ivar,
                  mu64, ivar64, m2, stats is None, np.empty((K, C)), np.empty((K, C)),
                  np.empty(C), nt, fused.Passes.BOTH, xcopy)
    if frozen:
        # rows taken again once the blocks are read-only are read-only too
        block.flags.writeable = False
        block64.flags.writeable = False
        mu, var, sqrtvar, ivar, gamma, beta = block
        mu64, ivar64, m2 = block64
    values = dict(mu=mu, var=var, sqrtvar=sqrtvar, ivar=ivar, mu64=mu64, ivar64=ivar64, m2=m2)
    if frozen:
        values.update(gamma=gamma, beta=beta)
    if keep:
        values.update(xmu=xmu, xhat=xhat)
    if xcopy is not None:
        values["x"] = xcopy
    return values


def fused_backward(g3: AnyArray, src: AnyArray, from_x: bool, mu64: F64Array, ivar64: F64Array,
                   gamma: AnyArray, dx3: AnyArray, use_batch_stats: bool,
                   nt: int) -> tuple[AnyArray, AnyArray]:
    """The closed-form backward into ``dx3``; returns ``(dgamma, dbeta)``.
    ``src`` is xhat, or x when ``from_x``."""
    dt, C = g3.dtype, g3.shape[1]
    dgamma, dbeta = np.empty(C, dt), np.empty(C, dt)
    K = _chunks(g3.shape, dt)
    fused.backward(g3, src, from_x, mu64, ivar64, gamma, dx3, dgamma, dbeta, use_batch_stats,
                   np.empty((K, C)), np.empty((K, C)), np.empty((3, C)), nt)
    return dgamma, dbeta


def fused_double_backward(ggx: AnyArray | None, dout: AnyArray, x: AnyArray, mu64: F64Array,
                          ivar64: F64Array, gamma: F64Array, ggw: F64Array, ggb: F64Array,
                          use_batch_stats: bool, ddout: AnyArray, dx: AnyArray,
                          nt: int) -> F64Array:
    """Second derivatives into ``ddout`` and ``dx`` (``ggx`` None reads as
    zeros); returns the float64 ``dgamma``. (N, C, S) arrays, (C,) values:
    one batch of :func:`double_backward_batches`."""
    dgamma: F64Array = double_backward_batches(
        None if ggx is None else ggx[None], dout[None], x[None], mu64[None], ivar64[None],
        gamma[None], ggw[None], ggb[None], use_batch_stats, ddout[None], dx[None], nt)[0]
    return dgamma


def double_backward_batches(ggx: AnyArray | None, dout: AnyArray, x: AnyArray,
                            mu64: F64Array, ivar64: F64Array, gamma: F64Array, ggw: F64Array,
                            ggb: F64Array, use_batch_stats: bool, ddout: AnyArray,
                            dx: AnyArray, nt: int) -> F64Array:
    """:func:`fused_double_backward` of B independent batches stacked:
    (B, N, C, S) arrays, (B, C) float64 values; returns the (B, C) ``dgamma``."""
    dgamma = np.empty(mu64.shape)
    fused.double_backward(dout if ggx is None else ggx, ggx is not None, dout, x, mu64, ivar64,
                          gamma, ggw, ggb, use_batch_stats, ddout, dx, dgamma, nt)
    return dgamma


def jvp_batches(tx: AnyArray | None, x: AnyArray, mu64: F64Array, ivar64: F64Array,
                gamma: F64Array, tgamma: F64Array, tbeta: F64Array, use_batch_stats: bool,
                tout: AnyArray, nt: int) -> None:
    """The forward's Jacobian-vector product into ``tout``: the tangent of
    ``out`` for tangents ``tx`` (None: zero), ``tgamma``, ``tbeta`` of x,
    gamma and beta, for B batches stacked ((B, N, C, S) arrays, (B, C)
    float64 values). It is the double backward's ``ddout`` (the kernel's
    ``jvp`` mode computes that alone)."""
    fused.double_backward(x if tx is None else tx, tx is not None, x, x, mu64, ivar64, gamma,
                          tgamma, tbeta, use_batch_stats, tout, tout, np.empty(mu64.shape), nt,
                          True)


def copy(src: AnyArray, dst: AnyArray, nt: int) -> None:
    """``dst[:] = src`` for 1-D arrays: the benchmark's bandwidth probe."""
    fused.copy(src, dst, nt)


SWEEPS = ("read", "copy", "statistics", "normalize", "sums", "dx", "forward", "backward")


def sweep_calls(x3: AnyArray, g3: AnyArray, nt: int) -> dict[str, Any]:
    """Zero-argument calls, by name (``SWEEPS``), that each run one sweep of
    the fused kernels over the (N, C, S) arrays ``x3`` (x) and ``g3`` (dout),
    every buffer allocated here: a read and a copy of x (the units), the
    forward's statistics and normalize sweeps alone, the backward's sums and
    dx sweeps alone (minimal cache: xhat recomputed from x), and the whole
    forward (minimal cache, ``out`` given) and backward as the layers call
    them. The benchmark's per-sweep table times them."""
    dt, C = x3.dtype, x3.shape[1]
    K = _chunks(x3.shape, dt)
    gamma, beta = np.ones(C, dt), np.zeros(C, dt)
    out, dx = np.empty_like(x3), np.empty_like(x3)
    mu, var, sqrtvar, ivar, dgamma, dbeta = np.empty((6, C), dt)
    mu64, ivar64, m2, shift = np.empty((4, C))
    pmean, pm2, psum, pdot = np.empty((4, K, C))
    coef = np.empty((3, C))
    flat, flat_out = x3.reshape(-1), out.reshape(-1)

    def fwd(passes: int) -> Any:
        return lambda: fused.forward(x3, gamma, beta, 1e-5, out, out, out, False, mu, var,
                                     sqrtvar, ivar, mu64, ivar64, m2, True, pmean, pm2, shift,
                                     nt, passes)

    def bwd(passes: int) -> Any:
        return lambda: fused.backward(g3, x3, True, mu64, ivar64, gamma, dx, dgamma, dbeta, True,
                                      psum, pdot, coef, nt, passes)
    fwd(fused.Passes.BOTH)()         # the statistics and the sums the lone sweeps read
    bwd(fused.Passes.BOTH)()
    return {"read": lambda: fused.read(flat, nt), "copy": lambda: fused.copy(flat, flat_out, nt),
            "statistics": fwd(fused.Passes.REDUCE), "normalize": fwd(fused.Passes.SWEEP),
            "sums": bwd(fused.Passes.REDUCE), "dx": bwd(fused.Passes.SWEEP),
            "forward": fwd(fused.Passes.BOTH), "backward": bwd(fused.Passes.BOTH)}


# ------------------------------------------------------------------ split

def batch_stats(x3: AnyArray, nt: int) -> tuple[F64Array, F64Array]:
    """Float64 per-channel mean and m2 of one shard."""
    C = x3.shape[1]
    K = _chunks(x3.shape, x3.dtype)
    mean, m2 = np.zeros(C), np.zeros(C)
    split.batch_stats(x3, mean, m2, np.empty((K, C)), np.empty((K, C)), np.empty(C), nt)
    return mean, m2


def merge(counts: F64Array, means: F64Array, m2s: F64Array,
          nt: int) -> tuple[F64Array, F64Array]:
    """Chan's merge of (P,) counts and (P, C) means and m2s, in shard order."""
    C = means.shape[1]
    mean, m2 = np.zeros(C), np.zeros(C)
    split.merge(counts, means, m2s, mean, m2, nt)
    return mean, m2


def normalize(x3: AnyArray, mean: F64Array, ivar: F64Array, gamma: AnyArray, beta: AnyArray,
              out3: AnyArray, nt: int) -> None:
    """``out3 = gamma * (x3 - mean) * ivar + beta`` with float64 statistics."""
    split.normalize(x3, mean, ivar, gamma, beta, out3, _chunks(x3.shape, x3.dtype), nt)


def backward_reduce(g3: AnyArray, x3: AnyArray, mean: F64Array,
                    nt: int) -> tuple[F64Array, F64Array]:
    """Float64 per-channel ``sum(dout)`` and ``sum(dout * (x - mean))``."""
    C = g3.shape[1]
    K = _chunks(x3.shape, x3.dtype)
    sd, sdx = np.zeros(C), np.zeros(C)
    split.backward_reduce(g3, x3, mean, sd, sdx, np.empty((K, C)), np.empty((K, C)), nt)
    return sd, sdx


def backward_elementwise(g3: AnyArray, x3: AnyArray, mean: F64Array, ivar: F64Array,
                         gamma: AnyArray, sd: F64Array, sdx: F64Array, count: float,
                         dx3: AnyArray, nt: int) -> None:
    """A shard's dx from the global sums, into ``dx3``."""
    C = g3.shape[1]
    split.backward_elementwise(g3, x3, mean, ivar, gamma, sd, sdx, float(count), dx3,
                               np.empty((3, C)), _chunks(x3.shape, x3.dtype), nt)

# ------------------------------------------ per-sample normalizations

def norm_forward(x2: AnyArray, gamma: AnyArray, beta: AnyArray, eps: float, G: int, S: int,
                 out2: AnyArray, nt: int, xcopy: AnyArray | None = None, fast: bool = False
                 ) -> tuple[F64Array, F64Array, F64Array]:
    """Layer, group or instance norm of the rows of ``x2`` (R, M) into ``out2``;
    returns the rows' float64 mean, variance and ivar (see ``_norms.forward``).
    ``xcopy`` (x2's shape) receives a copy of x2, written as each row is read;
    ``fast``: float32 output computed in float32 where that is exact enough."""
    R = x2.shape[0]
    mean, var, ivar = np.empty(R), np.empty(R), np.empty(R)
    norms.forward(x2, gamma, beta, eps, G, S, out2, mean, var, ivar, nt, xcopy, fast)
    return mean, var, ivar


def norm_backward(g2: AnyArray, x2: AnyArray, mean: F64Array, ivar: F64Array, gamma: AnyArray,
                  G: int, S: int, dx2: AnyArray, nt: int,
                  fast: bool = False) -> tuple[F64Array, F64Array]:
    """The closed-form backward of :func:`norm_forward` into ``dx2``; returns
    the float64 ``(dgamma, dbeta)``. ``fast``: float32 dx computed in float32
    where that is exact enough."""
    P = gamma.shape[0]
    K = int(norms.row_chunks(x2.shape[0], P))
    dgamma, dbeta = np.empty(P), np.empty(P)
    norms.backward(g2, x2, mean, ivar, gamma, G, S, dx2, dgamma, dbeta, np.empty((K, P)),
                   np.empty((K, P)), nt, fast)
    return dgamma, dbeta


def norm_forward_nhwc(x3: AnyArray, gamma: AnyArray, beta: AnyArray, eps: float, G: int,
                      out3: AnyArray, nt: int) -> tuple[F64Array, F64Array, F64Array]:
    """Group norm of ``x3`` read as (N, S, C) (channels last) into ``out3``;
    returns the (N * G,) float64 mean, variance and ivar, group by group of
    each sample (see ``_norms.forward_nhwc``)."""
    N, C = x3.shape[0], x3.shape[2]
    mean, var, ivar = np.empty(N * G), np.empty(N * G), np.empty(N * G)
    norms.forward_nhwc(x3, gamma, beta, eps, G, out3, mean, var, ivar, np.empty((N, 3 * C)),
                       nt)
    return mean, var, ivar


def norm_backward_nhwc(g3: AnyArray, x3: AnyArray, mean: F64Array, ivar: F64Array,
                       gamma: AnyArray, G: int, dx3: AnyArray,
                       nt: int) -> tuple[F64Array, F64Array]:
    """The closed-form backward of :func:`norm_forward_nhwc` into ``dx3``;
    returns the float64 ``(dgamma, dbeta)``."""
    N, C = x3.shape[0], x3.shape[2]
    dgamma, dbeta = np.empty(C), np.empty(C)
    norms.backward_nhwc(g3, x3, mean, ivar, gamma, G, dx3, dgamma, dbeta,
                        np.empty((N, 6 * C)), nt)
    return dgamma, dbeta


# ------------------------------------------------------- running statistics

def update_running_stats(running_mean: AnyArray | None, running_var: AnyArray | None,
                         mean: AnyArray, m2: F64Array, count: int, momentum: float) -> None:
    """The package's one running-statistics rule, in place, in PyTorch's CPU
    arithmetic (``batch_norm_cpu_update_stats_template``), so that the same
    batch statistics give bitwise torch.nn's running statistics:
    ``running = momentum * batch + (1 - momentum) * running`` with the
    unbiased batch variance ``m2 / (count - 1)``.

    ``mean`` is the batch mean (any float dtype; rounded to the running
    dtype first, as torch keeps it), ``m2`` the float64 sums of squared
    deviations over ``count`` values per channel. For float32 running
    statistics torch computes the mean's update in float32, ``m2 / (count -
    1)`` in float32, then ``momentum * unbiased`` in float64 plus the float32
    product ``(1 - momentum) * running_var``, rounded once; for float64
    everything is float64. Either running array may be None; numpy arrays
    (or CPU tensors' numpy views)."""
    run = running_mean if running_mean is not None else running_var
    if run is None:
        return
    if running_mean is not None and running_var is not None and \
            running_mean.dtype != running_var.dtype:
        # two dtypes (a torch module's buffers may differ): one call each
        update_running_stats(running_mean, None, mean, m2, count, momentum)
        update_running_stats(None, running_var, mean, m2, count, momentum)
        return
    fused.update_running(run if running_mean is None else running_mean,
                         run if running_var is None else running_var,
                         np.ascontiguousarray(mean, run.dtype), m2, float(count), momentum,
                         running_mean is not None, running_var is not None)


# ------------------------------------------------- torch tensors' memory

forward_tensor = fused.forward_tensor
backward_tensor = fused.backward_tensor
forward_batches = fused.forward_batches
backward_batches = fused.backward_batches
