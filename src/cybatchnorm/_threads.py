"""The number of OpenMP threads a call uses, decided once in Python."""
import operator
import os

from . import _engine


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Below this many values per thread, starting threads costs more than it
# saves, and on a busy machine a descheduled thread stalls every barrier.
GRAIN = 1 << 15


def effective_num_threads(num_threads=None, size=None):
    """Return the thread count for ``num_threads`` (validated).

    ``None`` means all usable cores, capped by OpenMP's own limit, which
    follows ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits``, and,
    when ``size`` (the number of values to process) is given, by one thread per
    ``GRAIN`` values, so small arrays run on one thread. A positive int is
    used as given. In a build without OpenMP every count runs serially.
    Results never depend on the thread count.
    """
    if num_threads is None:
        n = max(1, min(_engine.omp_max_threads(), _cpu_count()))
        if size is not None:
            n = max(1, min(n, size // GRAIN))
        return n
    if isinstance(num_threads, bool):
        raise TypeError("num_threads: expected a positive int or None, got a bool")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(
            f"num_threads: expected a positive int or None, got {type(num_threads).__name__}"
        ) from None
    if n < 1:
        raise ValueError(f"num_threads: expected a positive int or None, got {n}")
    return n
