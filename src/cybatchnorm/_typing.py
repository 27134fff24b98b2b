"""Type aliases shared by the annotations and the compiled modules' stubs.

In the stubs of the kernel modules (``_nodes``, ``_fused``, ``_split``), arrays
are the C-contiguous views the kernels read: float32 or float64 (one dtype per
call, Cython's fused ``floating``), per-channel scratch and statistics in
float64. Nothing is checked there: ``cybatchnorm._validation`` checked it.
"""
from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

#: the dtypes the kernels compute in (``_validation.DTYPES``)
Float = TypeVar("Float", np.float32, np.float64)
#: an array of either supported dtype
FloatArray = npt.NDArray[np.float32 | np.float64]
#: float64 per-channel statistics and scratch
F64Array = npt.NDArray[np.float64]
#: any array of any dtype, as the kernels' typed memoryviews accept after validation
AnyArray = npt.NDArray[Any]
#: what the public functions accept for an array (validated at the boundary)
ArrayLike = npt.ArrayLike
