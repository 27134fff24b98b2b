"""Stub of ``cybatchnorm._split``, compiled: the split API's kernels for batches spread
over processes.
Arrays as ``cybatchnorm._typing`` describes them. Keep in step with ``_split.pyx``.
"""
from cybatchnorm._typing import AnyArray, F64Array

SIMD: str
BUILD_CFLAGS: str


def batch_stats(
    x: AnyArray,
    mean: F64Array,
    m2: F64Array,
    pmean: F64Array,
    pm2: F64Array,
    shift: F64Array,
    n_threads: int,
) -> None: ...

def merge(
    counts: F64Array,
    means: F64Array,
    m2s: F64Array,
    mean: F64Array,
    m2: F64Array,
    n_threads: int,
) -> None: ...

def normalize(
    x: AnyArray,
    mean: F64Array,
    ivar: F64Array,
    gamma: AnyArray,
    beta: AnyArray,
    out: AnyArray,
    K: int,
    n_threads: int,
) -> None: ...

def backward_reduce(
    dout: AnyArray,
    x: AnyArray,
    mean: F64Array,
    sum_dout: F64Array,
    sum_dout_xmu: F64Array,
    psum: F64Array,
    pdot: F64Array,
    n_threads: int,
) -> None: ...

def backward_elementwise(
    dout: AnyArray,
    x: AnyArray,
    mean: F64Array,
    ivar: F64Array,
    gamma: AnyArray,
    sum_dout: F64Array,
    sum_dout_xmu: F64Array,
    count: float,
    dx: AnyArray,
    coef: F64Array,
    K: int,
    n_threads: int,
) -> None: ...
