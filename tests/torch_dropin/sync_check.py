"""cybatchnorm.torch.SyncBatchNorm over gloo processes on 127.0.0.1.

``run(scenario, world, ...)`` starts ``world`` processes (torch.multiprocessing
spawn), each running one rank of ``scenario`` and saving what it saw; the
caller (tests/torch_dropin/test_sync.py) compares it with one process on the whole
batch. Scenarios:

* ``layer``: shards of the given sizes through SyncBatchNorm, three training
  steps then eval, contiguous or channels_last: output, dx, weight/bias
  gradients, running statistics per rank;
* ``ddp``: a Conv2d/SyncBatchNorm/ReLU model under DistributedDataParallel,
  a few SGD steps: parameters and buffers per rank;
* ``quiet``: eval mode (or, in a world of one process, training) with the
  collectives replaced by ones that raise (neither may communicate);
* ``timeout``: rank 1 never calls forward; rank 0 records the error its
  process group's timeout raises.
"""
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

F64 = torch.float64
C, H, W = 3, 2, 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(total, step, fmt):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(total, C, H, W, generator=gen, dtype=F64) * (1 + step) + 2
    dout = torch.randn(total, C, H, W, generator=gen, dtype=F64)
    return x.to(memory_format=fmt), dout.to(memory_format=fmt)


def params(m):
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 2.0, C, dtype=F64))
        m.bias.copy_(torch.linspace(-1.0, 1.0, C, dtype=F64))
    return m


def _layer(rank, world, shards, fmt):
    from cybatchnorm.torch import SyncBatchNorm
    m = params(SyncBatchNorm(C, momentum=0.3, dtype=F64))
    lo, hi = sum(shards[:rank]), sum(shards[:rank + 1])
    seen = []
    for step in range(4):
        if step == 3:
            m.eval()
        x, dout = batch(sum(shards), step, fmt)
        x = x[lo:hi].clone(memory_format=torch.preserve_format).requires_grad_()
        out = m(x)
        out.backward(dout[lo:hi].clone(memory_format=torch.preserve_format))
        seen.append(dict(out=out.detach(), dx=x.grad, dweight=m.weight.grad.clone(),
                         dbias=m.bias.grad.clone(), running_mean=m.running_mean.clone(),
                         running_var=m.running_var.clone(),
                         num_batches_tracked=m.num_batches_tracked.clone(),
                         out_channels_last=out.is_contiguous(memory_format=torch.channels_last),
                         dx_channels_last=x.grad.is_contiguous(memory_format=torch.channels_last)))
        m.zero_grad()
    return seen


def ddp_model(cls):
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(2, C, 3, padding=1), cls(C), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(C * H * W, 1)).double()


def ddp_data(step, total):
    gen = torch.Generator().manual_seed(7 + step)
    return torch.randn(total, 2, H, W, generator=gen, dtype=F64), torch.randn(
        total, 1, generator=gen, dtype=F64)


def _ddp(rank, world, shards, fmt):
    from cybatchnorm.torch import SyncBatchNorm
    model = SyncBatchNorm.convert_sync_batchnorm(ddp_model(torch.nn.BatchNorm2d))
    assert isinstance(model[1], SyncBatchNorm)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    lo, hi = sum(shards[:rank]), sum(shards[:rank + 1])
    for step in range(4):
        x, y = ddp_data(step, sum(shards))
        opt.zero_grad()
        # each rank's loss is its shard's sum: DDP's mean of the gradients
        # is then the gradient of (whole-batch sum) / world
        loss = (ddp(x[lo:hi]) - y[lo:hi]).pow(2).sum()
        loss.backward()
        opt.step()
    return [{k: v.detach().clone() for k, v in model.state_dict().items()}]


def _quiet(rank, world, shards, fmt):
    from cybatchnorm.torch import SyncBatchNorm
    m = params(SyncBatchNorm(C, dtype=F64))
    x, dout = batch(sum(shards), 0, fmt)
    if world > 1:
        m(x[:2])                              # one synchronised training step

    def refuse(*args, **kwargs):
        raise AssertionError("communicated in eval mode or in a world of one")
    dist.all_gather, dist.all_reduce = refuse, refuse
    if world > 1:
        m.eval()
    xi = x[:2].clone().requires_grad_()
    out = m(xi)
    out.backward(dout[:2])
    return [dict(out=out.detach(), dx=xi.grad, running_mean=m.running_mean.clone(),
                 running_var=m.running_var.clone())]


def _timeout(rank, world, shards, fmt):
    from cybatchnorm.torch import SyncBatchNorm
    m = SyncBatchNorm(C, dtype=F64)
    if rank == 1:
        time.sleep(12)                        # never arrives while rank 0 waits
        return [dict(error=None)]
    t0 = time.monotonic()
    try:
        m(torch.randn(4, C, H, W, dtype=F64))
    except Exception as exc:      # noqa: BLE001 (recording what the timeout raises)
        return [dict(error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - t0,
                     running_mean=m.running_mean.clone(),
                     num_batches_tracked=m.num_batches_tracked.clone())]
    return [dict(error=None, seconds=time.monotonic() - t0)]


SCENARIOS = {"layer": _layer, "ddp": _ddp, "quiet": _quiet, "timeout": _timeout}


def _rank(rank, scenario, world, shards, fmt, port, outdir, timeout_s):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    if scenario == "timeout":
        result = SCENARIOS[scenario](rank, world, shards, fmt)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        # the timed-out process group cannot be shut down cleanly (its
        # threads abort the interpreter's exit now and then): leave at once
        os._exit(0)
    try:
        result = SCENARIOS[scenario](rank, world, shards, fmt)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # the results are saved and the group is shut down: leave without the
    # interpreter's teardown, in which DDP's reducer and gloo's threads now and
    # then abort the process on a loaded machine ("terminate called without an
    # active exception", SIGABRT, seen once in a CI run of the ddp scenario)
    os._exit(0)


def run(scenario, shards, outdir, fmt=torch.contiguous_format, timeout_s=60):
    """Run ``scenario`` on len(shards) gloo ranks; return each rank's results."""
    world = len(shards)
    mp.spawn(_rank, args=(scenario, world, list(shards), fmt, free_port(), str(outdir),
                          timeout_s), nprocs=world, join=True)
    return [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(world)]
