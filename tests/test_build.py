"""The build script's decisions for every platform of the wheel matrix.

setup.py keeps them as plain functions (target architecture, SIMD twins,
OpenMP flag sets, the probe and what a failed probe does), so they are checked
here under each platform's compiler type without that platform's compiler.
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def build():
    path = os.path.join(ROOT, "setup.py")
    if not os.path.exists(path):
        pytest.skip("setup.py is not beside the tests (an installed test tree)")
    spec = importlib.util.spec_from_file_location("cybatchnorm_setup", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)          # not __main__: setup() does not run
    return mod


@pytest.mark.parametrize("tag, archflags, arch", [
    ("linux-x86_64", "", "x86_64"),
    ("linux-aarch64", "", "aarch64"),
    ("macosx-11.0-arm64", "", "arm64"),
    ("macosx-10.9-x86_64", "", "x86_64"),
    ("macosx-10.9-x86_64", "-arch arm64", "arm64"),       # cibuildwheel's cross build
    ("macosx-10.9-universal2", "", "universal"),
    ("macosx-10.9-x86_64", "-arch x86_64 -arch arm64", "universal"),
    ("win-amd64", "", "amd64"),
    ("win-arm64", "", "arm64"),
    ("win32", "", "x86"),
])
def test_target_arch(build, tag, archflags, arch):
    assert build.target_arch(tag, archflags) == arch


@pytest.mark.parametrize("arch, ctype, twins", [
    ("x86_64", "unix", ("avx2", "avx512")),     # manylinux x86_64, macOS x86_64
    ("aarch64", "unix", ()),                    # manylinux aarch64
    ("arm64", "unix", ()),                      # macOS arm64
    ("universal", "unix", ()),
    ("amd64", "msvc", ()),                      # Windows: the twins' flags are gcc's
    ("arm64", "msvc", ()),
])
def test_simd_twins_only_where_they_can_run(build, arch, ctype, twins):
    assert build.simd_twins(arch, ctype) == twins
    names = build.module_names(twins)
    assert {"_openmp", "_pool", "_nodes", "_fused", "_split", "_norms"} <= set(names)
    assert any(n.endswith("_avx2") for n in names) == bool(twins)


def test_openmp_flag_sets_per_compiler(build):
    (msvc,) = build.openmp_candidates("msvc", "win32")
    assert msvc[1:] == (["/openmp"], [])
    mac = build.openmp_candidates("unix", "darwin", ["/opt/homebrew/opt/libomp"])
    assert mac[0][1][:2] == ["-Xpreprocessor", "-fopenmp"] and "-lomp" in mac[0][2]
    assert "-I/opt/homebrew/opt/libomp/include" in mac[0][1]
    assert "-L/opt/homebrew/opt/libomp/lib" in mac[0][2]
    linux = build.openmp_candidates("unix", "linux")
    assert linux[0][1:] == (["-fopenmp"], ["-fopenmp"])                 # gcc, clang
    assert any("-fopenmp=libomp" in c[1] for c in linux)                 # clang + libomp


def test_libomp_prefixes(build):
    seen = build.libomp_prefixes("darwin", {}, exists=lambda p: p == "/usr/local/opt/libomp")
    assert seen == ["/usr/local/opt/libomp"]
    assert build.libomp_prefixes("linux", {}, exists=lambda p: True) == []
    env = {"CYBATCHNORM_LIBOMP_PREFIX": "/opt/omp"}
    assert build.libomp_prefixes("linux", env) == ["/opt/omp"]


def test_release_build_has_no_debug_info(build):
    assert build.release_flags("unix", False)[-1] == "-g0"
    assert build.release_flags("unix", True) == ["-O0", "-g"]
    assert build.release_flags("msvc", False) == ["/O2"]


class FakeCompiler:
    """Builds only when the flag set contains ``accepts``."""

    def __init__(self, compiler_type="unix", accepts=None):
        self.compiler_type = compiler_type
        self.accepts = accepts
        self.tried = []

    def compile(self, sources, output_dir, extra_postargs):
        self.tried.append(list(extra_postargs))
        if self.accepts is None or self.accepts not in extra_postargs:
            raise RuntimeError("error: unsupported option")
        return ["probe.o"]

    def link_executable(self, objs, exe, extra_postargs):
        pass


class Ran:
    def __init__(self, stdout="1\n", returncode=0):
        self.stdout, self.returncode = stdout, returncode


def test_apple_clang_takes_its_spelling(build):
    cc = FakeCompiler(accepts="-Xpreprocessor")
    c, link, status = build.openmp_decision(cc, "darwin", {}, run=lambda *a, **k: Ran())
    assert c[:2] == ["-Xpreprocessor", "-fopenmp"] and "-lomp" in link
    assert status.startswith("enabled (Apple clang")


def test_msvc(build):
    cc = FakeCompiler("msvc", accepts="/openmp")
    decided = build.openmp_decision(cc, "win32", {}, run=lambda *a, **k: Ran())
    assert decided[:2] == (["/openmp"], [])


def test_failed_probe_warns_and_builds_serially(build):
    said = []
    cc = FakeCompiler(accepts=None)
    c, link, status = build.openmp_decision(cc, "linux", {}, run=lambda *a, **k: Ran(),
                                            warn=said.append)
    assert (c, link) == ([], []) and status.startswith("disabled")
    assert len(cc.tried) == 3                    # every flag set was tried
    assert len(said) == 1 and "CYBATCHNORM_REQUIRE_OPENMP=1" in said[0]
    assert "-fopenmp: does not build" in said[0]


def test_failed_probe_is_an_error_when_required(build):
    cc = FakeCompiler(accepts=None)
    with pytest.raises(build.OpenMPError, match="CYBATCHNORM_REQUIRE_OPENMP"):
        build.openmp_decision(cc, "linux", {"CYBATCHNORM_REQUIRE_OPENMP": "1"},
                              run=lambda *a, **k: Ran(), warn=pytest.fail)


def test_probe_that_runs_wrong_is_rejected(build):
    said = []
    cc = FakeCompiler(accepts="-fopenmp")
    c, _, status = build.openmp_decision(cc, "linux", {}, run=lambda *a, **k: Ran("0\n"),
                                         warn=said.append)
    assert c == [] and "runs but fails" in said[0]


def test_cross_build_probe_links_but_cannot_run(build):
    def run(*a, **k):
        raise OSError(8, "Exec format error")
    cc = FakeCompiler(accepts="-fopenmp")
    c, _, status = build.openmp_decision(cc, "linux", {}, run=run, warn=pytest.fail)
    assert c == ["-fopenmp"] and status == "enabled (-fopenmp)"


def test_no_openmp_switch_skips_the_probe(build):
    cc = FakeCompiler(accepts="-fopenmp")
    c, link, status = build.openmp_decision(cc, "linux", {"CYBATCHNORM_NO_OPENMP": "1"},
                                            warn=pytest.fail)
    assert (c, link) == ([], []) and "CYBATCHNORM_NO_OPENMP" in status and cc.tried == []


def test_this_build_reports_its_decision():
    from cybatchnorm import _openmp
    status = _openmp.openmp_status()
    assert status.startswith("enabled (") == _openmp.openmp_enabled()
    assert _openmp.compiler() != "unknown"
