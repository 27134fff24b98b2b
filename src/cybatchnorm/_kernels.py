"""Which compiled kernels run: the AVX-512 build when the CPU has AVX-512 (F,
BW, DQ, VL), else the AVX2 build when it has AVX2, else the baseline one. All
are the same Cython source and give bitwise equal results (no FMA
contraction). ``CYBATCHNORM_SIMD=baseline`` or ``=avx2`` caps the choice.
"""
import importlib
import os

from . import _fused, _nodes, _openmp, _split

LEVELS = ("baseline", "avx2", "avx512")


def _load(level):
    # the three kernel modules of one instruction-set level, or None when
    # they were not built for it (a compiler without the flags)
    if level == "baseline":
        return _fused, _nodes, _split
    try:
        mods = tuple(importlib.import_module(f"{__package__}.{m}_{level}")
                     for m in ("_fused", "_nodes", "_split"))
    except ImportError:
        return None
    return mods if all(m.SIMD == level for m in mods) else None


def _pick():
    want = os.environ.get("CYBATCHNORM_SIMD", "").strip().lower()
    cap = LEVELS.index(want) if want in LEVELS else len(LEVELS) - 1
    cpu = {"avx512": _openmp.cpu_has_avx512(), "avx2": _openmp.cpu_has_avx2()}
    for level in reversed(LEVELS[1:cap + 1]):
        if cpu[level]:
            mods = _load(level)
            if mods is not None:
                return mods
    return _fused, _nodes, _split


fused, nodes, split = _pick()
SIMD = fused.SIMD
