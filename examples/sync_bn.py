"""Synchronized batch norm over MPI, checked against one process.

    mpirun -n 2 python examples/sync_bn.py

Every rank makes the same seeded batch and takes an unequal shard of it, runs
SyncBatchNorm forward and backward on its shard, and sends its output and dx
to rank 0. Rank 0 runs the single-process BatchNorm on the whole batch and
prints the largest differences; the exit status is non-zero when one exceeds
1e-12.
"""
import sys

from mpi4py import MPI
import numpy as np

from cybatchnorm import BatchNorm
from cybatchnorm.distributed import SyncBatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

# the same batch on every rank; shards of unequal sizes 10, 3, 5, 7, ...
sizes = [10] + [2 * r + 1 for r in range(1, size)]
rng = np.random.default_rng(0)
x = rng.normal(3.0, 2.0, size=(sum(sizes), 4, 5))        # (N, C, L)
dout = rng.normal(size=x.shape)
gamma, beta = rng.uniform(0.5, 2.0, 4), rng.normal(size=4)
lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])

layer = SyncBatchNorm(4, comm=comm)
layer.gamma[:], layer.beta[:] = gamma, beta
out = layer.forward(x[lo:hi])          # this rank's shard only
dx = layer.backward(dout[lo:hi])

outs, dxs = comm.gather(out, root=0), comm.gather(dx, root=0)
if rank == 0:
    ref = BatchNorm(4)
    ref.gamma[:], ref.beta[:] = gamma, beta
    ref_out = ref.forward(x)
    ref_dx = ref.backward(dout)
    diffs = {
        "out": np.abs(np.concatenate(outs) - ref_out).max(),
        "dx": np.abs(np.concatenate(dxs) - ref_dx).max(),
        "dgamma": np.abs(layer.dgamma - ref.dgamma).max(),
        "dbeta": np.abs(layer.dbeta - ref.dbeta).max(),
        "running_mean": np.abs(layer.running_mean - ref.running_mean).max(),
        "running_var": np.abs(layer.running_var - ref.running_var).max(),
    }
    print(f"{size} processes, shards of {sizes} rows, against one process on all {sum(sizes)}:")
    for name, d in diffs.items():
        print(f"  max |difference| {name:13s} {d:.3g}")
    ok = max(diffs.values()) <= 1e-12
    print("OK" if ok else "MISMATCH")
else:
    ok = None
sys.exit(0 if comm.bcast(ok, root=0) else 1)
