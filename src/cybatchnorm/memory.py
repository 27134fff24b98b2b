"""The pool of output buffers: what it keeps, and how to make it let go.

Every output of the package of 1 MiB or more (``out``, ``dx``, a full
cache's ``xmu`` and ``xhat``, a layer's copy of x, the staged walk's
buffer) is taken from a pool of buffers that earlier calls returned, when one
of exactly that size is there. A fresh buffer that large comes from the
operating system: the first write to each page faults and the kernel zeroes
it, and freeing unmaps it again, so a training loop that allocates its outputs
would pay for that on every step. A buffer goes back to the pool when the
last array viewing it is garbage collected.

The pool holds at most :func:`set_pool_limit` bytes (256 MiB by default;
the oldest buffers are freed first) and nothing else: numpy's allocator and
malloc's settings are not touched, and arrays made by anyone else never
enter it. :func:`release_pool` hands everything it holds back to the system.

The PyTorch drop-in (``cybatchnorm.torch``) pools its large ``out`` and
``dx`` tensors the same way under the same limit: ordinary tensors over
storages it lends again only once nothing else holds them (see
``cybatchnorm.torch._outputs``); :func:`set_pool_limit` and
:func:`release_pool` apply to it too, and :func:`pool_info` counts only the
numpy pool.
"""
from __future__ import annotations

from collections.abc import Callable

from . import _engine
from ._validation import pool_bytes

__all__ = ["pool_info", "release_pool", "set_pool_limit"]

# other pools that follow the same limit and release (the PyTorch drop-in's
# pool of output tensors registers itself when cybatchnorm.torch is imported)
_PEERS: list[tuple[Callable[[], int], Callable[[int], None]]] = []


def register_pool(release: Callable[[], int], on_limit: Callable[[int], None]) -> None:
    """Make another pool follow this one: ``release()`` (returning the bytes
    freed) runs in :func:`release_pool`, ``on_limit(nbytes)`` in
    :func:`set_pool_limit`."""
    _PEERS.append((release, on_limit))


def set_pool_limit(nbytes: int) -> int:
    """Set how many bytes of unused output buffers the pool may keep.

    Parameters
    ----------
    nbytes : int
        The limit, >= 0; 0 turns pooling off (every buffer is freed when its
        last array dies). Buffers held beyond the new limit are freed now.

    Returns
    -------
    int
        The previous limit.

    Examples
    --------
    >>> import cybatchnorm as bn
    >>> old = bn.set_pool_limit(64 << 20)
    >>> bn.pool_info()["limit"]
    67108864
    >>> _ = bn.set_pool_limit(old)
    """
    limit = pool_bytes(nbytes)
    old = _engine.set_pool_limit(limit)
    for _, on_limit in _PEERS:
        on_limit(limit)
    return old


def release_pool() -> int:
    """Free every unused buffer the pool holds; return the number of bytes freed.

    Buffers still viewed by live arrays are not affected: they return to the
    pool (or are freed, with a limit of 0) when those arrays die.

    Examples
    --------
    >>> import cybatchnorm as bn
    >>> freed = bn.release_pool()
    >>> bn.pool_info()["held"]
    0
    """
    return _engine.release_pool() + sum(release() for release, _ in _PEERS)


def pool_info() -> dict[str, int]:
    """The pool's state, as a dict: ``limit`` and ``held`` (bytes), ``buffers``
    (held), ``reused`` and ``allocated`` (buffers handed out since the
    process started: from the pool, and fresh from the system)."""
    return _engine.pool_info()
