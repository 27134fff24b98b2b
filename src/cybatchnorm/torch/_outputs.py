"""The drop-in's pool of large outputs (``out`` of a forward, ``dx`` of a backward).

Why: ``torch.empty_like`` of many MiB is fresh memory on every call, and the
first write to each of its pages faults (65,538 faults in one 65536x256
float64 step: most of its time). Here outputs of ``MIN_BYTES`` and more are
ordinary tensors over storages the pool keeps: a storage is lent again only
when nothing but the pool holds it (its use count is 1: no tensor, view,
saved tensor or ``untyped_storage()`` object of anyone refers to it: its
use count and the reference count of its Python object say so), so a
tensor a user, a view or autograd still holds is never overwritten. The
tensor itself is a fresh one each time (``Tensor.set_`` on the storage), so
it can be resized, modified in place, saved and pickled like any other.

The pool keeps at most the limit of ``cybatchnorm.memory`` in idle storages
(the oldest are dropped first; a storage lent out is the borrower's memory
and does not count, as the numpy pool counts only returned buffers), and
``cybatchnorm.memory.release_pool()`` and ``set_pool_limit`` trim it too. It
tracks at most ``SLOTS`` storages.
The lock is held only while the list of storages changes, never while
pages are touched.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

import torch

from .. import _engine, memory

#: Outputs smaller than this come from ``torch.empty_strided``: malloc reuses them without faults.
MIN_BYTES = 1 << 20

#: Storages tracked at most (lent or idle); the oldest are forgotten first.
SLOTS = 64

_use_count = torch._C._storage_Use_Count
_lock = threading.Lock()
_storages: list[Any] = []       # oldest first


def _idle_flags(storages: list[Any], rest: int) -> list[bool]:
    # which storages nothing but the pool holds: no tensor or view (the
    # storage's use count is 1, the pool's own Python object) and no one
    # else's reference to that Python object (``untyped_storage()`` returns
    # the same object: its reference count is the pool's own, ``rest``)
    flags = []
    for s in storages:
        flags.append(_use_count(s._cdata) == 1 and sys.getrefcount(s) <= rest)
    return flags


def _calibrate() -> int:
    # the reference count _idle_flags sees for a storage only the pool
    # holds (it depends on the interpreter): measured once, on a probe
    probe = [torch.UntypedStorage(8)]  # type: ignore[no-untyped-call]
    for rest in range(1, 32):
        if _idle_flags(probe, rest)[0]:
            return rest
    raise RuntimeError("cybatchnorm.torch: cannot calibrate the output pool")


_REST = _calibrate()


def _trim(limit: int, flags: list[bool] | None = None) -> int:
    # drop idle storages, oldest first, until at most limit bytes of them
    # are left, and forget the oldest beyond SLOTS; returns the idle bytes
    # dropped. ``flags``: _idle_flags of _storages, when the caller has
    # them. The caller holds the lock.
    if flags is None:
        flags = _idle_flags(_storages, _REST)
    idle = sum(st.nbytes() for st, f in zip(_storages, flags) if f)
    keep = []
    dropped = 0
    for st, f in zip(_storages, flags):
        if f and idle - dropped > limit:
            dropped += st.nbytes()
        else:
            keep.append(st)
    _storages[:] = keep[-SLOTS:]
    return dropped


def empty_strided(shape: Any, stride: Any, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """An uninitialized CPU tensor of ``shape`` and ``stride`` (dense:
    ``nbytes`` is its memory), from an idle pooled storage of exactly that
    size when there is one."""
    if nbytes < MIN_BYTES:
        return torch.empty_strided(shape, stride, dtype=dtype)
    limit = _engine.pool_info()["limit"]
    with _lock:
        flags = _idle_flags(_storages, _REST)
        # the most recently used idle storage of that size (still warm in the
        # caches: taking the oldest cycled every output through cold memory,
        # 65 us of a 1 MiB forward); the oldest idle ones are the first trimmed
        i = next((i for i in range(len(_storages) - 1, -1, -1)
                  if flags[i] and _storages[i].nbytes() == nbytes), -1)
        if i >= 0:
            st = _storages.pop(i)
            flags.pop(i)
            _storages.append(st)
            flags.append(False)          # lent now
        else:
            st = torch.UntypedStorage(nbytes)  # type: ignore[no-untyped-call]
            if nbytes <= limit:
                _storages.append(st)
                flags.append(False)
        _trim(limit, flags)
    return torch.empty(0, dtype=dtype).set_(st, 0, shape, stride)


def release() -> int:
    """Drop every idle storage; return the bytes dropped."""
    with _lock:
        return _trim(0)


def info() -> dict[str, int]:
    """``held`` (bytes of every storage the pool tracks, lent or idle),
    ``idle`` (of those nobody else holds: what the limit caps) and
    ``storages``."""
    with _lock:
        flags = _idle_flags(_storages, _REST)
        return {"held": sum(st.nbytes() for st in _storages),
                "idle": sum(st.nbytes() for st, idle in zip(_storages, flags) if idle),
                "storages": len(_storages)}


def _on_limit(limit: int) -> None:
    with _lock:
        _trim(limit)


memory.register_pool(release, _on_limit)
