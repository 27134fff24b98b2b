"""cybatchnorm.distributed without an MPI runtime: optional imports, validation.
The comparison under mpirun is tests/test_mpi.py."""
import subprocess
import sys

import numpy as np
import pytest

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mpi4py', 'torch'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def run(code):
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True)


def test_importing_the_package_needs_neither_mpi4py_nor_torch():
    res = run("import cybatchnorm, cybatchnorm.distributed, cybatchnorm.split\n"
              "assert 'mpi4py' not in sys.modules and 'torch' not in sys.modules\n"
              "print('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_a_default_communicator_without_mpi4py_says_what_to_install():
    res = run("from cybatchnorm.distributed import SyncBatchNorm\n"
              "try:\n    SyncBatchNorm(3)\nexcept ImportError as e:\n    print(e)")
    assert "pip install cybatchnorm[mpi]" in res.stdout, res.stderr


def test_comm_must_be_a_communicator():
    from cybatchnorm.distributed import SyncBatchNorm
    with pytest.raises(TypeError, match="^comm:"):
        SyncBatchNorm(3, comm=object())
    with pytest.raises(ValueError, match="^num_features:"):
        SyncBatchNorm(0, comm=object())


class OneRank:
    """A communicator of one process, enough for a layer that talks to itself."""

    def Get_size(self):
        return 1

    def Allgather(self, send, recv):
        recv[0] = send

    def Allreduce(self, send, recv=None, op=None):
        pass


def test_one_rank_equals_batchnorm(rng):
    pytest.importorskip("mpi4py", reason="mpi4py not installed: backward uses MPI.SUM")
    from cybatchnorm import BatchNorm
    from cybatchnorm.distributed import SyncBatchNorm
    sync, ref = SyncBatchNorm(3, comm=OneRank()), BatchNorm(3)
    with pytest.raises(RuntimeError, match="forward first"):
        sync.backward(np.ones((4, 3)))
    for step in range(3):
        x, dout = rng.normal(size=(6, 3, 2)), rng.normal(size=(6, 3, 2))
        if step == 2:
            sync.eval(), ref.eval()
        np.testing.assert_allclose(sync.forward(x), ref.forward(x), atol=1e-13)
        np.testing.assert_allclose(sync.backward(dout), ref.backward(dout), atol=1e-13)
        np.testing.assert_allclose(sync.dgamma, ref.dgamma, atol=1e-13)
        np.testing.assert_allclose(sync.running_var, ref.running_var, atol=1e-15)
    assert "SyncBatchNorm(3" in repr(sync)


def test_cybatchnorm_torch_without_torch_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n"
            "    import cybatchnorm.torch\n"
            "except ImportError as exc:\n"
            "    assert 'pip install cybatchnorm[torch]' in str(exc), exc\n"
            "else:\n"
            "    raise AssertionError('imported without torch')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


class _OneRank:
    """A communicator of one process, for what needs no MPI runtime; counts
    the collective calls, so a refused forward is seen to make none."""
    calls = 0

    def Get_size(self):
        return 1

    def Allgather(self, send, recv):
        self.calls += 1
        recv[...] = send

    def Allreduce(self, send, recv, op=None):
        self.calls += 1
        recv[...] = send


def test_a_refused_sync_forward_changes_nothing_and_communicates_nothing():
    from cybatchnorm.distributed import SyncBatchNorm
    comm = _OneRank()
    layer = SyncBatchNorm(3, comm=comm)
    x = np.random.default_rng(0).normal(size=(8, 3))
    layer.forward(x)
    calls = comm.calls
    layer.running_var = np.ones(3, np.int64)
    mean = layer.running_mean.copy()
    with pytest.raises(TypeError, match="^running_var"):
        layer.forward(x)
    assert comm.calls == calls and layer.num_batches_tracked == 1
    assert np.array_equal(layer.running_mean, mean)


def test_sync_running_statistics_equal_the_layer():
    # one rank: the global statistics are the batch's, so the running ones
    # must be bitwise BatchNorm's (the same update from the merged m2)
    import cybatchnorm as bn
    from cybatchnorm.distributed import SyncBatchNorm
    for dtype in ("float32", "float64"):
        sync, ref = SyncBatchNorm(3, dtype=dtype, comm=_OneRank()), bn.BatchNorm(3, dtype=dtype)
        rng = np.random.default_rng(1)
        for _ in range(3):
            x = rng.normal(2.0, 3.0, (16, 3)).astype(dtype)
            sync.forward(x)
            ref.forward(x)
        assert sync.running_mean.tobytes() == ref.running_mean.tobytes()
        assert sync.running_var.tobytes() == ref.running_var.tobytes()
