"""Build the compiled core of cybatchnorm.

OpenMP is used when a probe program compiles, links and runs with one of the
compiler's OpenMP flag sets (gcc ``-fopenmp``; clang ``-fopenmp`` or
``-fopenmp=libomp``; Apple clang ``-Xpreprocessor -fopenmp -lomp`` with
Homebrew's libomp; MSVC ``/openmp``). When none works the extensions are built
without it, the kernels run serially, and the build says so in a warning
(``pip install -v`` shows it; the package also warns at import). Environment
switches read at build time:

* ``CYBATCHNORM_REQUIRE_OPENMP=1`` makes a failed OpenMP probe an error.
* ``CYBATCHNORM_NO_OPENMP=1`` builds without OpenMP even when it works.
* ``CYBATCHNORM_LIBOMP_PREFIX=DIR`` adds ``DIR/include`` and ``DIR/lib`` to
  the OpenMP probe (a libomp outside the compiler's search path).
* ``CYBATCHNORM_NATIVE=1`` adds ``-march=native`` (a wheel for this CPU only).
* ``CYBATCHNORM_DEBUG=1`` is a debug build: bounds checking and wraparound on,
  ``-O0 -g``, so an out-of-range index raises instead of reading stray memory.

The default build is portable and carries no debug information. For x86
targets built by gcc or clang the kernel modules are compiled three times: for
the baseline instruction set, with AVX2 (``_nodes_avx2``, ``_fused_avx2``,
``_split_avx2``) and with AVX-512 (``*_avx512``: F, BW, DQ and VL, 512-bit
vectors); ``cybatchnorm._engine`` picks one at import time from what the CPU
supports. Other targets (arm64, universal2, MSVC) get the baseline only: a
twin there could never be picked. ``-ffp-contract=off`` everywhere keeps all
three bitwise equal.

The decisions (target architecture, SIMD twins, OpenMP flag sets, compile
flags) are plain functions of their inputs so that ``tests/test_build.py``
checks them for every platform of the wheel matrix; ``setup()`` runs only when
this file is executed.
"""
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
SIMD_TWINS = ("avx2", "avx512")
KERNELS = ("_nodes", "_fused", "_split", "_norms")
# the AVX-512 subset every AVX-512 x86 CPU since Skylake-SP has; 512-bit
# vectors asked for explicitly (GCC prefers 256 bits otherwise)
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mprefer-vector-width=512"]
TWIN_FLAGS = {"avx2": ["-mavx2"], "avx512": ["-mavx2"] + AVX512_FLAGS}
# where Homebrew puts libomp (Apple silicon, then Intel Macs)
BREW_LIBOMP = ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp")

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


def env_flag(name, environ=None):
    """True when the environment variable ``name`` is 1, true, yes or on."""
    environ = os.environ if environ is None else environ
    return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def target_arch(platform_tag=None, archflags=None):
    """The CPU architecture the extensions are built for, lower case.

    It is the target's, not the build machine's: macOS cross builds say it in
    ``ARCHFLAGS`` (``-arch arm64``; two ``-arch`` flags make a universal
    binary, reported as ``"universal"``), everything else in
    ``sysconfig.get_platform()`` (``linux-x86_64``, ``macosx-11.0-arm64``,
    ``win-amd64``), which follows ``_PYTHON_HOST_PLATFORM`` when cross
    compiling.
    """
    if archflags is None:
        archflags = os.environ.get("ARCHFLAGS", "")
    archs = re.findall(r"-arch\s+(\S+)", archflags)
    if len(set(archs)) > 1:
        return "universal"
    if archs:
        return archs[0].lower()
    tag = platform_tag or sysconfig.get_platform()
    arch = tag.rsplit("-", 1)[-1].lower()
    if arch in {"universal2", "universal", "fat", "intel", "fat3", "fat64"}:
        return "universal"
    return {"win32": "x86"}.get(arch, arch)


def simd_twins(arch, compiler_type):
    """The SIMD levels that get twin modules: only x86 targets built with a
    gcc-style compiler (the twins' flags are gcc's; elsewhere no CPU could
    run them, so they would be dead copies in the wheel)."""
    if arch not in X86 or compiler_type == "msvc":
        return ()
    return SIMD_TWINS


def libomp_prefixes(platform, environ=None, exists=os.path.isdir):
    """Directories holding a libomp to add to the probe (include/ and lib/)."""
    environ = os.environ if environ is None else environ
    found = []
    if environ.get("CYBATCHNORM_LIBOMP_PREFIX"):
        found.append(environ["CYBATCHNORM_LIBOMP_PREFIX"])
    if platform == "darwin":
        found += [p for p in BREW_LIBOMP if exists(p)]
    return found


def openmp_candidates(compiler_type, platform, prefixes=()):
    """The OpenMP flag sets to try, in order: ``(label, compile, link)``."""
    if compiler_type == "msvc":
        return [("MSVC /openmp", ["/openmp"], [])]
    inc = [f"-I{p}/include" for p in prefixes]
    lib = [f"-L{p}/lib" for p in prefixes] + [f"-Wl,-rpath,{p}/lib" for p in prefixes]
    apple = ("Apple clang -Xpreprocessor -fopenmp -lomp",
             ["-Xpreprocessor", "-fopenmp"] + inc, lib + ["-lomp"])
    gnu = ("-fopenmp", ["-fopenmp"] + inc, lib + ["-fopenmp"])
    clang = ("clang -fopenmp=libomp", ["-fopenmp=libomp"] + inc, lib + ["-fopenmp=libomp"])
    # Apple clang rejects a bare -fopenmp, so on macOS its spelling goes first
    return [apple, gnu, clang] if platform == "darwin" else [gnu, clang, apple]


def release_flags(compiler_type, debug):
    """Optimization and debug-information flags of every extension."""
    if compiler_type == "msvc":
        return ["/Od", "/Zi"] if debug else ["/O2"]
    # -g0 after CPython's own -g: a release wheel carries no debug information
    return ["-O0", "-g"] if debug else ["-O3", "-g0"]


class OpenMPError(RuntimeError):
    """The OpenMP probe failed and ``CYBATCHNORM_REQUIRE_OPENMP=1`` asked for it."""


def probe_openmp(compiler, candidates, run=subprocess.run):
    """Try each flag set on the probe program; return ``(found, report)``
    where ``found`` is ``(label, compile, link)`` or None and ``report`` lists
    what each try did. A probe that links but cannot be executed (a cross
    compile) counts as working: it will run on its target."""
    report = []
    for label, cflags, ldflags in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe_openmp.c")
            with open(src, "w") as fh:
                fh.write(PROBE)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                exe = os.path.join(tmp, "probe_openmp")
                compiler.link_executable(objs, exe, extra_postargs=ldflags)
            except Exception as exc:   # distutils' CompileError/LinkError and friends
                last = (str(exc).strip().splitlines() or ["?"])[-1]
                report.append(f"{label}: does not build ({last[-120:]})")
                continue
            try:
                res = run([exe], capture_output=True, text=True, timeout=60)
            except OSError as exc:
                report.append(f"{label}: links; cannot run here ({exc}), taken as a cross build")
                return (label, cflags, ldflags), report
            if res.returncode == 0 and res.stdout.strip() == "1":
                report.append(f"{label}: works")
                return (label, cflags, ldflags), report
            report.append(f"{label}: runs but fails (status {res.returncode})")
    return None, report


def openmp_decision(compiler, platform=sys.platform, environ=None, run=subprocess.run,
                    warn=None):
    """The OpenMP flags to build with and a one-line status for show_config.

    Returns ``(compile, link, status)``. Raises :class:`OpenMPError` when no
    flag set works and ``CYBATCHNORM_REQUIRE_OPENMP=1``; otherwise a failed
    probe is reported through ``warn`` and the build goes on serially.
    """
    environ = os.environ if environ is None else environ
    warn = warn or _warn
    if env_flag("CYBATCHNORM_NO_OPENMP", environ):
        return [], [], "disabled (CYBATCHNORM_NO_OPENMP=1 at build time)"
    cands = openmp_candidates(compiler.compiler_type, platform,
                              libomp_prefixes(platform, environ))
    found, report = probe_openmp(compiler, cands, run=run)
    if found is not None:
        return found[1], found[2], f"enabled ({found[0]})"
    text = ("no OpenMP flag set of this compiler works, so the kernels would run on one "
            "thread:\n    " + "\n    ".join(report) +
            "\n  Install OpenMP (gcc: libgomp; clang: libomp; macOS: brew install libomp)")
    if env_flag("CYBATCHNORM_REQUIRE_OPENMP", environ):
        raise OpenMPError("cybatchnorm: CYBATCHNORM_REQUIRE_OPENMP=1 but " + text + ".")
    warn(text + ",\n  or set CYBATCHNORM_REQUIRE_OPENMP=1 to make this an error.")
    return [], [], "disabled (the build's OpenMP probe failed)"


def _warn(text):
    # to stderr in a box and as a warning, so a verbose pip, `python -m build`
    # and setuptools' own warning summary all show it
    import warnings
    bar = "*" * 78
    print(f"\n{bar}\ncybatchnorm WARNING: {text}\n{bar}\n", file=sys.stderr, flush=True)
    warnings.warn("cybatchnorm: " + text, stacklevel=2)


def module_names(twins):
    """Every extension module built, twins included."""
    return ["_openmp", "_pool"] + [k + suffix for suffix in ("",) + tuple("_" + t for t in twins)
                                   for k in KERNELS]


def _c_string(text):
    return '"{}"'.format(text.replace("\\", "\\\\").replace('"', '\\"'))


def main():
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    from setuptools.command.build_ext import build_ext
    from setuptools.errors import CompileError

    debug = env_flag("CYBATCHNORM_DEBUG")
    directives = dict(DIRECTIVES)
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)

    class BuildExt(build_ext):
        """build_ext with the probed OpenMP flags, -O3 and the SIMD twins' flags."""

        def finalize_options(self):
            super().finalize_options()
            # always compile: the flags depend on the environment (OpenMP switch),
            # so objects left in build/ by another configuration must not be reused
            self.force = True
            if not self.parallel:   # pip and build call it without -j: use every core
                cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else (os.cpu_count() or 1))
                self.parallel = max(1, cpus)

        def _flag_works(self, flag):
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "probe_flag.c")
                with open(src, "w") as fh:
                    fh.write("int main(void) { return 0; }\n")
                try:
                    self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                except CompileError:
                    return False
            return True

        def build_extensions(self):
            ctype = self.compiler.compiler_type
            cflags = release_flags(ctype, debug)
            if ctype != "msvc" and self._flag_works("-ffp-contract=off"):
                cflags.append("-ffp-contract=off")   # no FMA contraction: same bits everywhere
            if env_flag("CYBATCHNORM_NATIVE") and self._flag_works("-march=native"):
                cflags.append("-march=native")
            omp_c, omp_l, omp_status = openmp_decision(self.compiler)
            cflags += omp_c
            built = {t for t in simd_twins(target_arch(), ctype)
                     if all(self._flag_works(f) for f in TWIN_FLAGS[t])}
            kept = []
            for ext in self.extensions:
                twin = ext.name.rsplit("_", 1)[-1]
                if twin in SIMD_TWINS and twin not in built:
                    continue      # the compiler lacks the flags: the engine falls back
                extra = TWIN_FLAGS[twin] if twin in built else []
                # the flags are compiled into each module so show_config() reports
                # what the kernels in use were really built with
                ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags + extra
                ext.extra_link_args = list(ext.extra_link_args or []) + omp_l
                ext.define_macros = list(ext.define_macros or []) + [
                    ("CYBN_BUILD_CFLAGS", _c_string(" ".join(cflags + extra))),
                    ("CYBN_BUILD_LDFLAGS", _c_string(" ".join(omp_l))),
                    ("CYBN_OPENMP_STATUS", _c_string(omp_status)),
                ]
                kept.append(ext)
            self.extensions = kept
            print("cybatchnorm: compile flags:", shlex.join(cflags),
                  "| link flags:", shlex.join(omp_l), "| OpenMP:", omp_status,
                  "| SIMD twins:", ", ".join(sorted(built)) or "none")
            super().build_extensions()

    # twins for every level the target could run; build_ext drops those whose
    # flags the compiler lacks
    twins = simd_twins(target_arch(), "msvc" if sys.platform == "win32" else "unix")
    extensions = [Extension(f"cybatchnorm.{name}", [f"src/cybatchnorm/{name}.pyx"])
                  for name in module_names(twins)]
    setup(
        ext_modules=cythonize(
            extensions,
            compiler_directives=directives,
            # a debug build must not reuse C files generated without its checks
            build_dir="build/cython-debug" if debug else "build/cython",
            force=debug,
        ),
        cmdclass={"build_ext": BuildExt},
    )


if __name__ == "__main__":    # also under setuptools' build backend, which runs it as __main__
    main()
