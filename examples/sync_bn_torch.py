"""Synchronized batch norm for CPU training with PyTorch, checked against one process.

    torchrun --nproc-per-node 2 examples/sync_bn_torch.py

Every rank makes the same seeded data and trains a Conv2d/BatchNorm2d/ReLU
model, converted with ``SyncBatchNorm.convert_sync_batchnorm`` and wrapped in
DistributedDataParallel (gloo), on an unequal shard of each batch. Rank 0 then
trains the same model in one process on the whole batches and prints the
largest difference of the parameters and running statistics; the exit status
is non-zero when one exceeds 1e-10.
"""
import os
import sys

import torch
import torch.distributed as dist

from cybatchnorm.torch import SyncBatchNorm

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).double()


def data(step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(sum(sizes), 3, 8, 8, generator=gen, dtype=torch.float64)
    return x, torch.randn(sum(sizes), 2, generator=gen, dtype=torch.float64)


sizes = [4 + 3 * r for r in range(world)]           # unequal shards: 4, 7, 10, ...
lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
model = SyncBatchNorm.convert_sync_batchnorm(make_model())
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
for step in range(5):
    x, y = data(step)
    opt.zero_grad()
    loss = (ddp(x[lo:hi]) - y[lo:hi]).pow(2).sum()    # DDP averages: whole-batch sum / world
    loss.backward()
    opt.step()

status = 0
if rank == 0:
    ref = make_model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for step in range(5):
        x, y = data(step)
        ref_opt.zero_grad()
        ((ref(x) - y).pow(2).sum() / world).backward()
        ref_opt.step()
    worst = max(float((a - b).abs().max()) for a, b in
                zip(model.state_dict().values(), ref.state_dict().values())
                if a.is_floating_point())
    print(f"{world} ranks, shards {sizes}: 5 DDP steps with SyncBatchNorm; largest difference "
          f"from one process on the whole batch: {worst:.2e}")
    status = int(worst > 1e-10)
dist.destroy_process_group()
# leave without the interpreter's teardown: gloo's and DDP's threads abort it
# now and then ("terminate called without an active exception", SIGABRT)
sys.stdout.flush()
os._exit(status)
