"""Stub of ``cybatchnorm._norms``, compiled: the fused kernels of layer, group and
instance norm (per-row statistics). Arrays as ``cybatchnorm._typing`` describes them.
Keep in step with ``_norms.pyx``.
"""
from cybatchnorm._typing import AnyArray, F64Array

SIMD: str
BUILD_CFLAGS: str


def row_chunks(R: int, P: int) -> int: ...

def forward(
    x: AnyArray,
    gamma: AnyArray,
    beta: AnyArray,
    eps: float,
    G: int,
    S: int,
    out: AnyArray,
    mean: F64Array,
    var: F64Array,
    ivar: F64Array,
    n_threads: int,
    xcopy: AnyArray | None = ...,
    fast: bool = ...,
) -> None: ...

def backward(
    dout: AnyArray,
    x: AnyArray,
    mean: F64Array,
    ivar: F64Array,
    gamma: AnyArray,
    G: int,
    S: int,
    dx: AnyArray,
    dgamma: F64Array,
    dbeta: F64Array,
    pdg: F64Array,
    pdb: F64Array,
    n_threads: int,
    fast: bool = ...,
) -> None: ...

def forward_nhwc(
    x: AnyArray,
    gamma: AnyArray,
    beta: AnyArray,
    eps: float,
    G: int,
    out: AnyArray,
    mean: F64Array,
    var: F64Array,
    ivar: F64Array,
    work: F64Array,
    n_threads: int,
) -> None: ...

def backward_nhwc(
    dout: AnyArray,
    x: AnyArray,
    mean: F64Array,
    ivar: F64Array,
    gamma: AnyArray,
    G: int,
    dx: AnyArray,
    dgamma: F64Array,
    dbeta: F64Array,
    work: F64Array,
    n_threads: int,
) -> None: ...
