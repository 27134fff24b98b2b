"""SyncBatchNorm under a real MPI runtime, against single-process BatchNorm.

Run by tests/test_mpi.py as ``mpirun -n P python tests/mpi_check.py``. Every
rank builds the same seeded batches, takes its own (unequal) shard, and runs
several training steps and an eval step of SyncBatchNorm; every rank also runs
BatchNorm on the whole batch and compares its own slice. Rank 0 prints one
JSON line with the maximum differences over all ranks and exits non-zero when
a float64 difference exceeds 1e-12, a float32 one exceeds 1e-5 (relative to
the size of the values), or the running statistics or parameter gradients
differ by a single bit between ranks.
"""
import json
import sys

from mpi4py import MPI
import numpy as np

from cybatchnorm import BatchNorm
from cybatchnorm.distributed import SyncBatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def shard_sizes(kind):
    if kind == "unequal":      # 8, 3, 5, 7, ...
        return [8] + [2 * r + 1 for r in range(1, size)]
    return [1] + [5 + r for r in range(1, size)]   # a rank with a single row


def run_case(shape_tail, kind, dtype, momentum, track, seed):
    sizes = shard_sizes(kind)
    N, C = sum(sizes), shape_tail[0]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    rng = np.random.default_rng(seed)
    kw = dict(momentum=momentum, track_running_stats=track, dtype=dtype)
    sync, ref = SyncBatchNorm(C, comm=comm, **kw), BatchNorm(C, **kw)
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
    for layer in (sync, ref):
        layer.gamma[:], layer.beta[:] = gamma, beta
    diffs = {k: 0.0 for k in ("out", "dx", "dgamma", "dbeta", "running_mean", "running_var")}
    scale = {k: 0.0 for k in diffs}

    def compare(name, got, want):
        diffs[name] = max(diffs[name], float(np.abs(np.asarray(got, np.float64) - want).max()))
        scale[name] = max(scale[name], float(np.abs(np.asarray(want, np.float64)).max()))

    rankbits = []
    for step in range(4):
        if step == 3:
            sync.eval()
            ref.eval()
        x = rng.normal(3 + step, 2, (N,) + tuple(shape_tail)).astype(dtype)
        dout = rng.normal(size=x.shape).astype(dtype)
        out, ref_out = sync.forward(x[lo:hi]), ref.forward(x)
        dx, ref_dx = sync.backward(dout[lo:hi]), ref.backward(dout)
        compare("out", out, ref_out[lo:hi])
        compare("dx", dx, ref_dx[lo:hi])
        compare("dgamma", sync.dgamma, ref.dgamma)
        compare("dbeta", sync.dbeta, ref.dbeta)
        if track:
            compare("running_mean", sync.running_mean, ref.running_mean)
            compare("running_var", sync.running_var, ref.running_var)
            rankbits.append(sync.running_mean.tobytes() + sync.running_var.tobytes())
        rankbits.append(sync.dgamma.tobytes() + sync.dbeta.tobytes())
    same = comm.allgather(b"".join(rankbits))
    diffs = {k: comm.allreduce(v, op=MPI.MAX) for k, v in diffs.items()}
    scale = {k: comm.allreduce(v, op=MPI.MAX) for k, v in scale.items()}
    return diffs, scale, all(s == same[0] for s in same)


CASES = [
    # (shape without N, shard sizes, dtype, momentum, track_running_stats)
    ((5,), "unequal", np.float64, 0.1, True),
    ((5,), "single-row", np.float64, None, True),
    ((3, 4, 5), "unequal", np.float64, 0.1, True),
    ((4, 7), "single-row", np.float64, 0.3, True),
    ((3, 6), "unequal", np.float64, 0.1, False),
    ((5,), "unequal", np.float32, 0.1, True),
    ((3, 4, 5), "single-row", np.float32, 0.1, True),
]

report = {"size": size, "float64": {}, "float32": {}, "identical_on_every_rank": True,
          "failures": []}
for i, (tail, kind, dtype, momentum, track) in enumerate(CASES):
    diffs, scale, same = run_case(tail, kind, dtype, momentum, track, seed=1000 + i)
    key = np.dtype(dtype).name
    for k, v in diffs.items():
        report[key][k] = max(report[key].get(k, 0.0), v)
        limit = 1e-12 if dtype == np.float64 else 1e-5 * max(1.0, scale[k])
        if not v <= limit:
            report["failures"].append(f"case {i} {tail} {kind} {key}: {k} differs by {v:.3g}")
    if not same:
        report["identical_on_every_rank"] = False
        report["failures"].append(f"case {i}: running statistics or dgamma/dbeta differ "
                                  "between ranks")

if rank == 0:
    print(json.dumps(report))
sys.exit(1 if report["failures"] else 0)
