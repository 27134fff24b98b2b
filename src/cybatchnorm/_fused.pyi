"""Stub of ``cybatchnorm._fused``, compiled: the fused forward and closed-form backward.
Arrays as ``cybatchnorm._typing`` describes them. Keep in step with ``_fused.pyx``.
"""
import enum

from cybatchnorm._typing import AnyArray, F64Array

SIMD: str
BUILD_CFLAGS: str

def row_chunks(N: int, C: int, S: int, itemsize: int) -> int: ...

def forward(
    x: AnyArray,
    gamma: AnyArray,
    beta: AnyArray,
    eps: float,
    out: AnyArray,
    xmu: AnyArray,
    xhat: AnyArray,
    keep_nodes: bool,
    mu: AnyArray,
    var: AnyArray,
    sqrtvar: AnyArray,
    ivar: AnyArray,
    mu64: F64Array,
    ivar64: F64Array,
    m2: F64Array,
    use_batch_stats: bool,
    pmean: F64Array,
    pm2: F64Array,
    shift: F64Array,
    n_threads: int,
    passes: int = ...,
    xcopy: AnyArray | None = ...,
) -> None: ...

def backward(
    dout: AnyArray,
    src: AnyArray,
    from_x: bool,
    mu64: F64Array,
    ivar64: F64Array,
    gamma: AnyArray,
    dx: AnyArray,
    dgamma: AnyArray,
    dbeta: AnyArray,
    use_batch_stats: bool,
    psum: F64Array,
    pdot: F64Array,
    coef: F64Array,
    n_threads: int,
    passes: int = ...,
) -> None: ...

class Passes(enum.IntFlag):
    REDUCE = 1
    SWEEP = 2
    BOTH = 3

def read(src: AnyArray, n_threads: int) -> float: ...

def copy(src: AnyArray, dst: AnyArray, n_threads: int) -> None: ...

def double_backward(
    ggx: AnyArray,
    has_ggx: bool,
    dout: AnyArray,
    x: AnyArray,
    mu64: F64Array,
    ivar64: F64Array,
    gamma: F64Array,
    ggw: F64Array,
    ggb: F64Array,
    use_batch_stats: bool,
    ddout: AnyArray,
    dx: AnyArray,
    dgamma: F64Array,
    n_threads: int,
    jvp: bool = ...,
) -> None: ...

def update_running(
    running_mean: AnyArray,
    running_var: AnyArray,
    mean: AnyArray,
    m2: F64Array,
    count: float,
    momentum: float,
    with_mean: bool,
    with_var: bool,
) -> None: ...

def forward_tensor(
    x: int,
    out: int,
    N: int,
    C: int,
    S: int,
    f64: bool,
    gamma: int,
    beta: int,
    eps: float,
    running_mean: int,
    running_var: int,
    training: bool,
    momentum: float,
    stats: int,
    counter: int,
    K: int,
    n_threads: int,
) -> None: ...

def backward_tensor(
    dout: int,
    x: int,
    dx: int,
    N: int,
    C: int,
    S: int,
    f64: bool,
    mean: int,
    invstd: int,
    gamma: int,
    dgamma: int,
    dbeta: int,
    training: bool,
    K: int,
    n_threads: int,
) -> None: ...

def forward_batches(
    x: int,
    out: int,
    B: int,
    N: int,
    C: int,
    S: int,
    f64: bool,
    gamma: int,
    beta: int,
    eps: float,
    mean: int,
    var: int,
    training: bool,
    stats: int,
    K: int,
    n_threads: int,
) -> None: ...

def backward_batches(
    dout: int,
    x: int,
    dx: int,
    B: int,
    N: int,
    C: int,
    S: int,
    f64: bool,
    mean: int,
    invstd: int,
    gamma: int,
    dgamma: int,
    dbeta: int,
    training: bool,
    K: int,
    n_threads: int,
) -> None: ...
