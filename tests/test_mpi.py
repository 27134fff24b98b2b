"""SyncBatchNorm under a real MPI runtime: `mpirun -n 2` and `-n 3`, loopback only,
unequal shards, against single-process BatchNorm on the concatenated batch.

The ranks run tests/mpi_check.py (pytest itself is not run under mpirun, so a
failing rank cannot hang the suite). Without mpirun or mpi4py the tests are
skipped with the reason, except that either missing fails when
CYBATCHNORM_REQUIRE_MPI is set (`tox -e mpi`, which checks for Open MPI first and
fails under CI=true without it).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Open MPI on one machine, shared memory and loopback only, as root in CI
# containers, more ranks than cores allowed.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl": "self,vader",
    "OMPI_MCA_pml": "ob1",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    "OMPI_MCA_oob_tcp_if_include": "lo",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


def mpirun():
    exe = shutil.which("mpirun")
    if exe is None:
        if os.environ.get("CYBATCHNORM_REQUIRE_MPI"):
            pytest.fail("mpirun not found, and CYBATCHNORM_REQUIRE_MPI is set: install Debian's "
                        "openmpi-bin")
        pytest.skip("mpirun not found: install Open MPI (Debian: openmpi-bin) to run the MPI tests")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        if os.environ.get("CYBATCHNORM_REQUIRE_MPI"):
            pytest.fail("mpi4py is not installed, and CYBATCHNORM_REQUIRE_MPI is set")
        pytest.skip("mpi4py not installed: pip install cybatchnorm[mpi] to run the MPI tests")
    return exe


def run_ranks(n, script, *args):
    cmd = [mpirun(), "--oversubscribe", "-n", str(n), sys.executable, script, *args]
    env = dict(os.environ, **MPI_ENV)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_matches_single_process(n):
    res = run_ranks(n, os.path.join(HERE, "mpi_check.py"))
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no report from rank 0 (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
    report = json.loads(lines[-1])
    print(f"mpirun -n {n}: max differences {report}")
    assert report["size"] == n
    assert report["failures"] == [], report["failures"]
    assert report["identical_on_every_rank"]
    for name, diff in report["float64"].items():
        assert diff <= 1e-12, (name, diff)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("n", [2, 3])
def test_example_script(n):
    example = os.path.join(HERE, os.pardir, "examples", "sync_bn.py")
    res = run_ranks(n, example)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "max |difference|" in res.stdout
