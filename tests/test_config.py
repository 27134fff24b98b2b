import io
import os
import subprocess
import sys

import pytest

import cybatchnorm as bn
from cybatchnorm import _engine, _openmp


def test_show_config_reports_build():
    buf = io.StringIO()
    assert bn.show_config(file=buf) is None
    text = buf.getvalue()
    cflags, ldflags = _openmp.build_flags()
    assert "-O3" in cflags or "-O0" in cflags       # release or debug build
    assert f"kernel compile flags: {_engine.fused.BUILD_CFLAGS}" in text
    assert f"compiler: {_openmp.compiler()}" in text
    assert f"openmp: {_openmp.openmp_status()}" in text
    if _openmp.openmp_enabled():
        assert "-fopenmp" in cflags and "-fopenmp" in ldflags   # compile and link
    assert "threads (num_threads=None):" in text
    assert f"version: {bn.__version__}" in text


def test_show_config_dicts_is_what_stdout_prints():
    d = bn.show_config(mode="dicts")
    assert set(d) == {"cybatchnorm", "Python", "numpy", "Build", "Machine", "Runtime"}
    assert d["Machine"]["cpu"] and d["Machine"]["cpus"] >= 1
    assert d["cybatchnorm"]["version"] == bn.__version__
    assert d["Build"]["kernel compile flags"] == _engine.fused.BUILD_CFLAGS
    assert d["Runtime"]["simd"] == _engine.SIMD and d["Runtime"]["simd reason"]
    assert d["Runtime"]["threads (num_threads=None)"] >= 1
    # the kernels in use carry the flags of their SIMD level
    if _engine.SIMD == "avx2":
        assert "-mavx2" in d["Build"]["kernel compile flags"]
    if _engine.SIMD == "avx512":
        assert "-mavx512f" in d["Build"]["kernel compile flags"]
    buf = io.StringIO()
    bn.show_config(file=buf)
    assert f"simd reason: {d['Runtime']['simd reason']}" in buf.getvalue()


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="build without OpenMP")
def test_show_config_names_the_loaded_openmp_runtime():
    pytest.importorskip("threadpoolctl")
    runtimes = bn.show_config(mode="dicts")["Runtime"]["openmp runtimes loaded"]
    assert runtimes and all(os.path.exists(r["filepath"]) for r in runtimes)


def test_show_config_mode_is_checked():
    with pytest.raises(ValueError, match="mode: expected 'stdout' or 'dicts'"):
        bn.show_config(mode="dict")


def test_show_config_prints(capsys):
    bn.show_config()
    assert capsys.readouterr().out.startswith("cybatchnorm:\n")


def _simd(value):
    code = ("import cybatchnorm as bn; d = bn.show_config(mode='dicts')['Runtime']; "
            "print(d['simd']); print(d['simd reason'])")
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                          text=True, check=True, env=dict(os.environ, CYBATCHNORM_SIMD=value))


def test_unknown_simd_value_warns():
    r = _simd("avx3")
    assert ("RuntimeWarning: CYBATCHNORM_SIMD='avx3' is not one of baseline, avx2, avx512"
            in r.stderr)
    # ignored: the same choice as without it (asked of a process like this one:
    # under valgrind, this process sees no AVX-512 while its children do)
    assert r.stdout.split("\n")[0] == _simd("").stdout.split("\n")[0]


def test_simd_cap_is_reported():
    r = _simd("baseline")
    assert r.stdout.splitlines() == ["baseline", "CYBATCHNORM_SIMD=baseline"]
    assert "Warning" not in r.stderr


def test_build_has_openmp_when_expected():
    # tox builds one wheel with OpenMP and one without; each env says which it tests
    expect = os.environ.get("CYBATCHNORM_EXPECT_OPENMP")
    if expect is None:
        pytest.skip("CYBATCHNORM_EXPECT_OPENMP not set (set by tox)")
    assert _openmp.openmp_enabled() == (expect == "1")
    if expect == "0":
        assert _openmp.omp_max_threads() == 1
        assert "CYBATCHNORM_NO_OPENMP" in _openmp.openmp_status()
