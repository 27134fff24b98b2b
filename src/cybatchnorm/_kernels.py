"""Which compiled kernels run: the AVX2 build when the CPU has AVX2, else the
baseline one. Both are the same Cython source and give bitwise equal results
(no FMA contraction); ``CYBATCHNORM_SIMD=baseline`` forces the baseline.
"""
import os

from . import _fused, _nodes, _openmp, _split


def _pick():
    want = os.environ.get("CYBATCHNORM_SIMD", "").strip().lower()
    if want != "baseline" and _openmp.cpu_has_avx2():
        from . import _fused_avx2, _nodes_avx2, _split_avx2
        if _fused_avx2.SIMD == "avx2" and _nodes_avx2.SIMD == "avx2" and _split_avx2.SIMD == "avx2":
            return _fused_avx2, _nodes_avx2, _split_avx2
    return _fused, _nodes, _split


fused, nodes, split = _pick()
SIMD = fused.SIMD
