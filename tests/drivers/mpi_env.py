"""``tox -e mpi``: SyncBatchNorm under Open MPI, run only where Open MPI is.

mpi4py compiles against the MPI installation, so on a machine without Open
MPI even installing it fails; this script checks for ``mpirun`` and ``mpicc``
first and skips loudly (fails under ``CI=true``), then installs mpi4py and
runs the MPI tests and the example.
"""
import shutil
import subprocess
import sys

from external import missing

TESTS = ["tests/test_mpi.py", "tests/test_distributed.py", "tests/test_split.py"]


def main(posargs):
    lacking = [t for t in ("mpirun", "mpicc") if shutil.which(t) is None]
    if lacking:
        return missing("mpi", f"Open MPI ({', '.join(lacking)} not found)",
                       "openmpi-bin libopenmpi-dev")
    steps = [
        [sys.executable, "-m", "pip", "install", "--quiet", "mpi4py>=3.1"],
        [sys.executable, "-m", "pytest", *posargs, "-rs", *TESTS],
        ["mpirun", "--oversubscribe", "-n", "2", sys.executable, "examples/sync_bn.py"],
    ]
    for cmd in steps:
        print("mpi:", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
