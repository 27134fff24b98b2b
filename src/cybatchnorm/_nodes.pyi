"""Stub of ``cybatchnorm._nodes``, compiled: one kernel per node of the graph, forward and backward.
Arrays as ``cybatchnorm._typing`` describes them. Keep in step with ``_nodes.pyx``.
"""
from cybatchnorm._typing import AnyArray

SIMD: str
BUILD_CFLAGS: str

def mu_forward(x: AnyArray, mu: AnyArray, n_threads: int) -> None: ...

def xmu_forward(x: AnyArray, mu: AnyArray, xmu: AnyArray, n_threads: int) -> None: ...

def sq_forward(xmu: AnyArray, sq: AnyArray, n_threads: int) -> None: ...

def var_forward(sq: AnyArray, var: AnyArray, n_threads: int) -> None: ...

def sqrtvar_forward(var: AnyArray, eps: float, sqrtvar: AnyArray, n_threads: int) -> None: ...

def ivar_forward(sqrtvar: AnyArray, ivar: AnyArray, n_threads: int) -> None: ...

def xhat_forward(xmu: AnyArray, ivar: AnyArray, xhat: AnyArray, n_threads: int) -> None: ...

def gammax_forward(xhat: AnyArray, gamma: AnyArray, gammax: AnyArray, n_threads: int) -> None: ...

def out_forward(gammax: AnyArray, beta: AnyArray, out: AnyArray, n_threads: int) -> None: ...

def out_backward(dout: AnyArray, dbeta: AnyArray, n_threads: int) -> None: ...

def gammax_backward(
    dgammax: AnyArray,
    xhat: AnyArray,
    gamma: AnyArray,
    dgamma: AnyArray,
    dxhat: AnyArray,
    n_threads: int,
) -> None: ...

def xhat_backward(
    dxhat: AnyArray,
    xmu: AnyArray,
    ivar: AnyArray,
    divar: AnyArray,
    dxmu1: AnyArray,
    n_threads: int,
) -> None: ...

def ivar_backward(
    divar: AnyArray,
    sqrtvar: AnyArray,
    dsqrtvar: AnyArray,
    n_threads: int,
) -> None: ...

def sqrtvar_backward(
    dsqrtvar: AnyArray,
    sqrtvar: AnyArray,
    dvar: AnyArray,
    n_threads: int,
) -> None: ...

def var_backward(dvar: AnyArray, M: float, dsq: AnyArray, n_threads: int) -> None: ...

def sq_backward(
    dsq: AnyArray,
    xmu: AnyArray,
    dxmu2: AnyArray,
    accumulate: bool,
    n_threads: int,
) -> None: ...

def sq_backward_channel(
    dsq: AnyArray,
    xmu: AnyArray,
    dxmu2: AnyArray,
    accumulate: bool,
    n_threads: int,
) -> None: ...

def xmu_backward(dxmu: AnyArray, dmu: AnyArray, n_threads: int) -> None: ...

def mu_backward(dmu: AnyArray, M: float, dx2: AnyArray, n_threads: int) -> None: ...

def branch_sum(a: AnyArray, b: AnyArray, out: AnyArray, n_threads: int) -> None: ...

def branch_sum_channel(a: AnyArray, b: AnyArray, out: AnyArray, n_threads: int) -> None: ...
