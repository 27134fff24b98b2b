"""The number of OpenMP threads a call uses, decided once in Python."""
from __future__ import annotations

import functools
import math
import os

from . import _engine

# Below this many values per thread, starting threads costs more than it
# saves, and on a busy machine a descheduled thread stalls every barrier.
GRAIN = 1 << 15

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _v2_quota(root: str, rel: str) -> float | None:
    # cgroup v2: "max 100000" or "<quota> <period>" in cpu.max of the process's
    # cgroup and of every ancestor; the tightest one binds
    best = None
    parts = [p for p in rel.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        text = _read(os.path.join(root, *parts[:depth], "cpu.max"))
        if not text:
            continue
        fields = text.split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                q = int(fields[0]) / int(fields[1])
            except (ValueError, ZeroDivisionError):
                continue
            best = q if best is None else min(best, q)
    return best


def _v1_quota(root: str, rel: str) -> float | None:
    # cgroup v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us in the cpu
    # controller's hierarchy; the process's cgroup is mounted at the root in a
    # container, at ``rel`` below it on a host
    for base in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for sub in (rel.strip("/"), ""):
            d = os.path.join(root, base, sub) if sub else os.path.join(root, base)
            quota, period = _read(os.path.join(d, "cpu.cfs_quota_us")), \
                _read(os.path.join(d, "cpu.cfs_period_us"))
            if quota is None or period is None:
                continue
            try:
                q, p = int(quota), int(period)
            except ValueError:
                continue
            return q / p if q > 0 and p > 0 else None
    return None


def cgroup_cpu_limit(root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> int | None:
    """The CPUs a cgroup v1 or v2 quota allows this process, rounded up, or
    None when there is no quota (``docker --cpus=2`` gives 2).

    ``root`` and ``proc_cgroup`` are where the cgroup file system and this
    process's ``/proc/self/cgroup`` are read (tests pass a fake tree).
    """
    text = _read(proc_cgroup)
    if text is None:
        return None
    v2_rel, v1_rel = None, None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hid, controllers, rel = fields
        if hid == "0" and controllers == "":
            v2_rel = rel
        elif "cpu" in controllers.split(","):
            v1_rel = rel
    quota = None
    if v1_rel is not None:
        quota = _v1_quota(root, v1_rel)
    if quota is None and v2_rel is not None:
        quota = _v2_quota(root, v2_rel)
    return None if quota is None else max(1, math.ceil(quota))


@functools.cache
def cpu_quota() -> int | None:
    """This process's cgroup CPU quota in whole CPUs (:func:`cgroup_cpu_limit`),
    or None; read once: a quota is set when the container starts, and calls
    are hot."""
    return cgroup_cpu_limit()


def usable_cpus() -> int:
    """The cores this process may run on: the CPU affinity mask (or the
    machine's count where there is none), capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, n if quota is None else min(n, quota))


#: A requested thread count runs as given up to this many threads, however
#: few cores there are: oversubscription is legal (and slow), and it lets the
#: bitwise invariance across thread counts be tried on a small machine.
CAP_FLOOR = 8


@functools.cache
def thread_cap() -> int:
    """The most threads a call runs: the usable CPUs (:func:`usable_cpus`),
    or ``CAP_FLOOR`` (8) on a machine with fewer. A larger ``num_threads`` is
    accepted and capped (results never depend on the count, so the cap
    changes no bit); OpenMP runtimes crash or exit the process when asked
    for tens of thousands of threads. Read once per process."""
    return max(CAP_FLOOR, usable_cpus())


def default_num_threads(size: int | None = None) -> int:
    """The thread count a call with ``num_threads=None`` uses.

    All usable cores (the CPU affinity mask, capped by a cgroup v1/v2 CPU
    quota as containers set it), capped by OpenMP's own limit, which follows
    ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits``, and, when
    ``size`` (the number of values to process) is given, by one thread per
    ``GRAIN`` values, so small arrays run on one thread. In a build without
    OpenMP every count runs serially. Results never depend on the thread
    count. A given ``num_threads`` is checked by
    ``_validation.check_num_threads``.
    """
    n = max(1, min(_engine.omp_max_threads(), usable_cpus()))
    if size is not None:
        n = max(1, min(n, size // GRAIN))
    return n
