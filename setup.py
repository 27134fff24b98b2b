"""Build the compiled core of cybatchnorm.

OpenMP is used when a probe program compiles, links and runs with the
compiler's OpenMP flags; otherwise the extensions are built without it and
the kernels run serially. Environment switches read at build time:

* ``CYBATCHNORM_NO_OPENMP=1`` builds without OpenMP even when it works.
* ``CYBATCHNORM_NATIVE=1`` adds ``-march=native`` (a wheel for this CPU only).
* ``CYBATCHNORM_DEBUG=1`` is a debug build: bounds checking and wraparound on,
  ``-O0 -g``, so an out-of-range index raises instead of reading stray memory.

The default build is portable. On x86 the kernel modules are compiled three
times: for the baseline instruction set, with AVX2 (``_nodes_avx2``,
``_fused_avx2``, ``_split_avx2``) and with AVX-512 (``*_avx512``: F, BW, DQ
and VL, 512-bit vectors); ``cybatchnorm._kernels`` picks one at import time
from what the CPU supports. ``-ffp-contract=off`` everywhere keeps all three
bitwise equal.
"""
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}

PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _flag_works(compiler, flag):
    """True when the compiler accepts ``flag`` on a trivial file."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe_flag.c")
        with open(src, "w") as fh:
            fh.write("int main(void) { return 0; }\n")
        try:
            compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
        except Exception:
            return False
    return True


def _openmp_flags(compiler):
    """Return (compile, link) flags for OpenMP, or None when they do not work."""
    if _env_flag("CYBATCHNORM_NO_OPENMP"):
        return None
    if compiler.compiler_type == "msvc":
        flags = (["/openmp"], [])
    else:
        flags = (["-fopenmp"], ["-fopenmp"])
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe_openmp.c")
        with open(src, "w") as fh:
            fh.write(PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags[0])
            exe = os.path.join(tmp, "probe_openmp")
            compiler.link_executable(objs, exe, extra_postargs=flags[1])
            res = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        except Exception as exc:  # compile, link or run failed: no OpenMP
            print(f"cybatchnorm: OpenMP probe failed ({exc}); building serial kernels")
            return None
    if res.returncode != 0 or res.stdout.strip() != "1":
        print("cybatchnorm: OpenMP probe did not run correctly; building serial kernels")
        return None
    return flags


DEBUG = _env_flag("CYBATCHNORM_DEBUG")
if DEBUG:
    DIRECTIVES.update(boundscheck=True, wraparound=True, initializedcheck=True)


class BuildExt(build_ext):
    """build_ext that adds -O3 and the probed OpenMP flags to every extension."""

    def finalize_options(self):
        super().finalize_options()
        # always compile: the flags depend on the environment (OpenMP switch),
        # so objects left in build/ by another configuration must not be reused
        self.force = True

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if DEBUG:
            cflags = ["/Od", "/Zi"] if msvc else ["-O0", "-g"]
        else:
            cflags = ["/O2"] if msvc else ["-O3"]
        ldflags = []
        if not msvc and _flag_works(self.compiler, "-ffp-contract=off"):
            cflags.append("-ffp-contract=off")   # no FMA contraction: same bits everywhere
        if _env_flag("CYBATCHNORM_NATIVE") and _flag_works(self.compiler, "-march=native"):
            cflags.append("-march=native")
        avx2 = not msvc and _flag_works(self.compiler, "-mavx2")
        avx512 = avx2 and all(_flag_works(self.compiler, f) for f in AVX512_FLAGS)
        omp = _openmp_flags(self.compiler)
        if omp is not None:
            cflags += omp[0]
            ldflags += omp[1]
        for ext in self.extensions:
            extra = []
            if avx2 and ext.name.endswith("_avx2"):
                extra = ["-mavx2"]
            elif avx512 and ext.name.endswith("_avx512"):
                extra = ["-mavx2"] + AVX512_FLAGS
            # the flags are compiled into the module so show_config() reports
            # what this binary was really built with
            macros = [
                ("CYBN_BUILD_CFLAGS", '"%s"' % " ".join(cflags + extra)),
                ("CYBN_BUILD_LDFLAGS", '"%s"' % " ".join(ldflags)),
            ]
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags + extra
            ext.extra_link_args = list(ext.extra_link_args or []) + ldflags
            ext.define_macros = list(ext.define_macros or []) + macros
        print("cybatchnorm: compile flags:", shlex.join(cflags),
              "| link flags:", shlex.join(ldflags))
        super().build_extensions()


# the AVX-512 subset every AVX-512 x86 CPU since Skylake-SP has; 512-bit
# vectors asked for explicitly (GCC prefers 256 bits otherwise)
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mprefer-vector-width=512"]
KERNELS = ["_nodes", "_fused", "_split"]
MODULES = ["_openmp", "_pool"] + [k + v for v in ("", "_avx2", "_avx512") for k in KERNELS]
extensions = [
    Extension(f"cybatchnorm.{name}", [f"src/cybatchnorm/{name}.pyx"])
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        # a debug build must not reuse C files generated without its checks
        build_dir="build/cython-debug" if DEBUG else "build/cython",
        force=DEBUG,
    ),
    cmdclass={"build_ext": BuildExt},
)
