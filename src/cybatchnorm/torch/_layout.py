"""Tensors as the compiled kernels read them: layouts, views, dtypes, thread counts.

The kernels read an (N, C, S) array: a contiguous tensor is one as it is
("ncs"), a channels_last one is an (N*S, C, 1) matrix ("nsc"); anything else
is copied into one of these first. float16 and bfloat16 are computed in
float64. Shared by the operators (``_ops``) and ``SyncBatchNorm`` (``sync``).
"""
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._threads import default_num_threads
from ._checks import REDUCED

__all__ = ["F64", "NUMPY_DTYPE", "channel_array", "compute_dtype", "in_layout", "is_layout",
           "kernel_threads", "layout_of", "out_like", "prepare", "spatial_size", "view3"]

#: the statistics' dtype
F64 = torch.float64


def kernel_threads(num_threads: int, size: int) -> int:
    """The kernels' thread count for ``size`` values: ``num_threads`` as the
    drop-in's entry points validated it (``functional.threads_arg``), 0
    standing for "all cores" in the operator schemas (an int, not Optional):
    then the default count for that size."""
    return num_threads if num_threads > 0 else default_num_threads(size)


def compute_dtype(x: Any) -> torch.dtype:
    """The dtype the kernels compute x in: float64 for float16/bfloat16, else x's."""
    return torch.float64 if x.dtype in REDUCED else x.dtype


def spatial_size(t: Any) -> int:
    """S, the number of values per sample and channel (1 for (N, C) input)."""
    return math.prod(t.shape[2:])


def is_layout(t: Tensor, layout: Any, axis: int = 1) -> bool:
    """Whether ``t`` is dense in ``layout`` ("ncs" or "nsc", see :func:`layout_of`),
    its channels on ``axis`` (2 for the stacked batches of ``_func``)."""
    if layout == "ncs":
        return t.is_contiguous()
    return t.dim() > axis + 1 and t.movedim(axis, -1).is_contiguous()


def layout_of(t: Any, axis: int = 1) -> Any:
    """How the kernels read ``t`` in place: "ncs" (contiguous: an (N, C, S)
    array), "nsc" (channels last: an (N*S, C, 1) matrix), or None (neither:
    it needs a copy); the channels on ``axis``."""
    for layout in ("ncs", "nsc"):
        if is_layout(t, layout, axis):
            return layout
    return None


def in_layout(t: Tensor, layout: Any, axis: int = 1) -> Tensor:
    """``t`` dense in ``layout`` (the channels on ``axis``), copied only when
    it is not already."""
    if is_layout(t, layout, axis):
        return t
    if layout == "ncs":
        return t.contiguous()
    return t.movedim(axis, -1).contiguous().movedim(-1, axis)


def view3(t: Any, layout: Any) -> Any:
    """The kernels' 3-D numpy view of a tensor dense in ``layout`` (no copy)."""
    N, C, S = t.shape[0], t.shape[1], spatial_size(t)
    t = t.detach()
    if layout == "ncs":
        a = t.numpy()
        if a.flags.c_contiguous:        # always, for "ncs": then reshape is a view
            return a.reshape(N, C, S)
        return t.view(N, C, S).numpy()
    return t.movedim(1, -1).view(N * S, C, 1).numpy()


def prepare(x: Any, dtype: Any) -> tuple[Tensor, Any]:
    """x in the computation dtype and a layout the kernels read in place."""
    x = x.detach()
    if x.dtype != dtype:
        x = x.to(dtype)          # keeps the memory format
    layout = layout_of(x)
    if layout is None:
        x, layout = x.contiguous(), "ncs"
    return x, layout


def out_like(x: Any) -> Tensor:
    """An output for ``x``: x's memory format when the kernels read x in place."""
    if layout_of(x) is not None:
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


#: the numpy dtype of each dtype the kernels compute in
NUMPY_DTYPE: dict[torch.dtype, np.dtype[Any]] = {
    torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def channel_array(t: Any, C: Any, dtype: Any, fill: Any) -> Any:
    """A (C,) parameter as a contiguous numpy array of ``dtype`` (a view when it already is);
    ``C`` may be a shape (the (B, C) rows of ``_func``'s stacked batches)."""
    if t is None:
        return np.full(C, fill, dtype=NUMPY_DTYPE[dtype])
    t = t.detach()
    if t.dtype != dtype or not t.is_contiguous():
        t = t.to(dtype).contiguous()
    return (t if t.dim() == 1 else t.view(C)).numpy()
