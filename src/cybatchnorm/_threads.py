"""The number of OpenMP threads a call uses, decided once in Python."""
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


def default_num_threads(size=None):
    """The thread count a call with ``num_threads=None`` uses.

    All usable cores (the CPU affinity mask), capped by OpenMP's own limit,
    which follows ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits``,
    and, when ``size`` (the number of values to process) is given, by one
    thread per ``GRAIN`` values, so small arrays run on one thread. In a build
    without OpenMP every count runs serially. Results never depend on the
    thread count. A given ``num_threads`` is checked by
    ``_validation.check_num_threads``.
    """
    n = max(1, min(_engine.omp_max_threads(), _cpu_count()))
    if size is not None:
        n = max(1, min(n, size // GRAIN))
    return n
