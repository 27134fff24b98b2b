"""Build facts of the compiled core: whether OpenMP is on and with which flags."""


def openmp_enabled():
    """Return True when the extension modules were compiled with OpenMP."""
    return bool(CYBN_OPENMP_ENABLED)


def omp_max_threads():
    """Return OpenMP's current thread limit (1 in a build without OpenMP).

    It follows ``OMP_NUM_THREADS`` and any limit set at run time, for example
    by ``threadpoolctl.threadpool_limits``.
    """
    return omp_get_max_threads()


def build_flags():
    """Return ``(compile_flags, link_flags)`` the extensions were built with."""
    return (CYBN_BUILD_CFLAGS.decode(), CYBN_BUILD_LDFLAGS.decode())


def cpu_has_avx2():
    """True when the CPU running this process supports AVX2."""
    return bool(cybn_cpu_has_avx2())


def cpu_has_avx512():
    """True when the CPU running this process supports AVX2 and AVX-512 F, BW, DQ and VL."""
    return bool(cybn_cpu_has_avx512())


def openmp_status():
    """How the build decided on OpenMP: ``"enabled (<flags>)"`` or ``"disabled (<why>)"``."""
    return CYBN_OPENMP_STATUS.decode()


def compiler():
    """The C compiler that built the extensions, as it names itself (``"gcc 12.2.0"``)."""
    return CYBN_COMPILER.decode()
