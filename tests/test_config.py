import io

import cybatchnorm as bn
from cybatchnorm import _openmp


def test_show_config_reports_build():
    buf = io.StringIO()
    bn.show_config(file=buf)
    text = buf.getvalue()
    cflags, ldflags = _openmp.build_flags()
    assert "-O3" in cflags or "-O0" in cflags       # release or debug build
    assert f"compile flags: {cflags}" in text
    assert ("OpenMP: enabled" in text) == _openmp.openmp_enabled()
    if _openmp.openmp_enabled():
        assert "-fopenmp" in cflags and "-fopenmp" in ldflags   # compile and link
    assert "threads (num_threads=None):" in text
    assert bn.__version__ in text


def test_show_config_prints(capsys):
    bn.show_config()
    assert "cybatchnorm" in capsys.readouterr().out


def test_build_has_openmp_when_expected():
    # tox builds one wheel with OpenMP and one without; each env says which it tests
    import os
    import pytest
    expect = os.environ.get("CYBATCHNORM_EXPECT_OPENMP")
    if expect is None:
        pytest.skip("CYBATCHNORM_EXPECT_OPENMP not set (set by tox)")
    assert _openmp.openmp_enabled() == (expect == "1")
    if expect == "0":
        assert _openmp.omp_max_threads() == 1
