"""show_config: what this build of cybatchnorm was compiled with."""
import sys

import numpy as np

from . import _engine
from ._validation import check_file, check_num_threads
from ._version import __version__


def show_config(file=None):
    """Print the build configuration: OpenMP on or off, the compiler and
    linker flags, and the threads a call with ``num_threads=None`` uses.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default: ``sys.stdout``).

    Examples
    --------
    >>> import cybatchnorm
    >>> cybatchnorm.show_config()  # doctest: +ELLIPSIS
    cybatchnorm ...
      OpenMP: ...
    """
    check_file(file)
    cflags, ldflags = _engine.build_flags()
    lines = [
        f"cybatchnorm {__version__}",
        f"  OpenMP: {'enabled' if _engine.openmp_enabled() else 'disabled (kernels run serially)'}",
        f"  compile flags: {cflags}",
        f"  link flags: {ldflags or '(none)'}",
        f"  kernels: {_engine.SIMD} (CPU has AVX2: {'yes' if _engine.cpu_has_avx2() else 'no'}, "
        f"AVX-512: {'yes' if _engine.cpu_has_avx512() else 'no'})",
        f"  threads (num_threads=None): {check_num_threads(None)}",
        f"  numpy: {np.__version__}",
        f"  python: {sys.version.split()[0]}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
