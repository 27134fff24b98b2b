import os

from hypothesis import HealthCheck, settings
import numpy as np
import pytest

# "ci": a fixed example budget, derandomized so a CI run is reproducible;
# "long": for hand runs (HYPOTHESIS_PROFILE=long pytest tests/test_properties.py).
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def pool():
    """The output pools at the default 256 MiB limit and empty, restored after
    the test (cybatchnorm.memory: the numpy pool and the drop-in's)."""
    import cybatchnorm as bn
    old = bn.set_pool_limit(256 << 20)
    bn.release_pool()
    yield
    bn.set_pool_limit(old)
    bn.release_pool()


def pytest_report_header(config):
    import cybatchnorm
    from cybatchnorm import _openmp
    return (f"cybatchnorm {cybatchnorm.__version__} from {os.path.dirname(cybatchnorm.__file__)}; "
            f"OpenMP {'on' if _openmp.openmp_enabled() else 'off'}")


def pytest_collection_modifyitems(config, items):
    # valgrind computes long double in double precision: the extended-precision
    # references are not extended there
    if os.environ.get("CYBATCHNORM_UNDER_VALGRIND"):
        skip = pytest.mark.skip(reason="valgrind has no 80-bit long double")
        for item in items:
            if "longdouble" in item.keywords:
                item.add_marker(skip)
