"""show_config: how this copy of cybatchnorm was built and what a call would run."""
from __future__ import annotations

import os
import platform
import sys
from typing import IO, Any

import numpy as np

from . import _engine, _threads
from ._validation import check_file, check_num_threads
from ._version import __version__

# OpenMP runtimes by the prefix of their library name, for the /proc/self/maps fallback
_OPENMP_LIBS = ("libgomp", "libomp", "libiomp", "vcomp")


def openmp_runtimes() -> list[dict[str, Any]]:
    """The OpenMP runtimes loaded in this process, with their paths."""
    # threadpoolctl when it is installed (it knows versions and thread counts);
    # else the shared objects mapped into this process (Linux)
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        return [{k: info.get(k) for k in ("internal_api", "prefix", "version", "num_threads",
                                          "filepath")}
                for info in threadpoolctl.threadpool_info() if info.get("user_api") == "openmp"]
    found: dict[str, dict[str, Any]] = {}
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1] if "/" in line else ""
                name = os.path.basename(path)
                if name.startswith(_OPENMP_LIBS):
                    found.setdefault(path, {"prefix": name.split(".")[0].split("-")[0],
                                            "filepath": path, "source": "/proc/self/maps"})
    except OSError:
        pass
    return list(found.values())


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def caches() -> dict[str, str]:
    """The CPU caches as ``{"L1d": "48K", ...}`` (Linux sysfs; empty elsewhere)."""
    out: dict[str, str] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for e in entries:
        try:
            def read(n: str, e: str = e) -> str:
                with open(os.path.join(base, e, n)) as fh:
                    return fh.read().strip()
            kind = read("type")
            name = f"L{read('level')}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[name] = read("size")
        except OSError:
            continue
    return out


def config() -> dict[str, Any]:
    """The facts :func:`show_config` reports, as nested dicts."""
    cflags, ldflags = _engine.build_flags()
    quota = _threads.cpu_quota()    # the one the thread count used (read once)
    return {
        "cybatchnorm": {"version": __version__,
                        "path": os.path.dirname(os.path.abspath(__file__))},
        "Python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "numpy": {"version": np.__version__},
        "Build": {
            "compiler": _engine.compiler(),
            "kernel compile flags": _engine.fused.BUILD_CFLAGS,
            "baseline compile flags": cflags,
            "link flags": ldflags,
            "openmp": _engine.openmp_status(),
            "simd levels built": list(_engine.SIMD_BUILT),
        },
        "Machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "caches": caches(),
                    "platform": platform.platform()},
        "Runtime": {
            "simd": _engine.SIMD,
            "simd reason": _engine.SIMD_REASON,
            "cpu features": {"avx2": _engine.cpu_has_avx2(), "avx512": _engine.cpu_has_avx512()},
            "CYBATCHNORM_SIMD": os.environ.get("CYBATCHNORM_SIMD"),
            "machine": platform.machine(),
            "openmp runtimes loaded": openmp_runtimes(),
            "openmp max threads": _engine.omp_max_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "usable cpus": _threads.usable_cpus(),
            "cgroup cpu quota": quota,
            "threads (num_threads=None)": check_num_threads(None),
        },
    }


def _lines(d: dict[str, Any], indent: int = 0) -> list[str]:
    out = []
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out += _lines(v, indent + 1)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out.append(f"{pad}{k}:")
            for item in v:
                sub = _lines(item, indent + 2)
                out.append(f"{pad}  - " + sub[0].lstrip())
                out += sub[1:]
        elif isinstance(v, list):
            out.append(f"{pad}{k}: {', '.join(map(str, v)) or '(none)'}")
        elif v is None:      # an unset variable, an unknown version, no quota
            none = "(not set)" if k.isupper() else "(unknown)" if k == "version" else "(none)"
            out.append(f"{pad}{k}: {none}")
        else:
            out.append(f"{pad}{k}: {v}")
    return out


def show_config(mode: str = "stdout", *, file: IO[str] | None = None) -> dict[str, Any] | None:
    """Report how this copy of cybatchnorm was built and what a call runs.

    As ``numpy.show_config``: the version; Python and numpy; the build (the
    compiler and its version, the flags of the kernel modules in use, the
    OpenMP decision of the build, the SIMD levels built); the machine (the CPU
    model, its count, its caches, the platform); the runtime (the SIMD
    level chosen and why, the CPU features seen, the OpenMP runtimes loaded
    with their paths, from threadpoolctl when it is installed, the usable
    CPUs, a cgroup CPU quota and the threads a call with ``num_threads=None``
    uses).

    Parameters
    ----------
    mode : str, default "stdout"
        ``"stdout"`` prints the report; ``"dicts"`` returns it as nested
        dicts and prints nothing (``numpy.show_config``'s two modes).
    file : file-like, optional
        Where ``"stdout"`` prints (default: ``sys.stdout``).

    Returns
    -------
    dict or None
        The report for ``mode="dicts"``, else None.

    Examples
    --------
    >>> import cybatchnorm
    >>> cybatchnorm.show_config()  # doctest: +ELLIPSIS
    cybatchnorm:
      version: ...
    >>> cybatchnorm.show_config(mode="dicts")["Build"]["openmp"]  # doctest: +ELLIPSIS
    '...abled (...)'
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode: expected 'stdout' or 'dicts', got {mode!r}")
    check_file(file)
    info = config()
    if mode == "dicts":
        return info
    print("\n".join(_lines(info)), file=file or sys.stdout)
    return None
