"""cybatchnorm.torch.SyncBatchNorm over 2 and 3 gloo processes against one
process (torch.nn.BatchNorm2d) on the concatenated batch."""
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import sync_check  # noqa: E402

from cybatchnorm.torch import BatchNorm2d, SyncBatchNorm  # noqa: E402

F64 = torch.float64
REL = 1e-12


def close(got, want, what):
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    assert diff <= REL * scale, (what, diff)


def single_process(shards, fmt):
    ref = sync_check.params(torch.nn.BatchNorm2d(sync_check.C, momentum=0.3, dtype=F64))
    seen = []
    for step in range(4):
        if step == 3:
            ref.eval()
        x, dout = sync_check.batch(sum(shards), step, fmt)
        x = x.clone(memory_format=torch.preserve_format).requires_grad_()
        out = ref(x)
        out.backward(dout)
        seen.append(dict(out=out.detach(), dx=x.grad, dweight=ref.weight.grad.clone(),
                         dbias=ref.bias.grad.clone(), running_mean=ref.running_mean.clone(),
                         running_var=ref.running_var.clone(),
                         num_batches_tracked=ref.num_batches_tracked.clone()))
        ref.zero_grad()
    return seen


@pytest.mark.parametrize("shards", [(2, 5), (2, 5, 0), (1, 1, 6), (0, 4)],
                         ids=lambda s: "+".join(map(str, s)))
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_shards_match_one_process(shards, fmt, tmp_path):
    ranks = sync_check.run("layer", shards, tmp_path, fmt)
    want = single_process(shards, fmt)
    for step, ref in enumerate(want):
        for rank, seen in enumerate(ranks):
            got = seen[step]
            lo, hi = sum(shards[:rank]), sum(shards[:rank + 1])
            close(got["out"], ref["out"][lo:hi], ("out", step, rank))
            close(got["dx"], ref["dx"][lo:hi], ("dx", step, rank))
            for k in ("running_mean", "running_var"):
                close(got[k], ref[k], (k, step, rank))
            assert int(got["num_batches_tracked"]) == int(ref["num_batches_tracked"])
            if fmt == torch.channels_last and hi > lo:
                assert got["out_channels_last"] and got["dx_channels_last"]
            if step < 3 and hi == lo:
                # an empty shard holds zero gradients, not None
                assert torch.equal(got["dweight"], torch.zeros(sync_check.C, dtype=F64))
        # the ranks' weight and bias gradients sum to the single-process ones
        # (in eval mode each rank's are its shard's own, which also sum to it)
        for k in ("dweight", "dbias"):
            close(sum(seen[step][k] for seen in ranks), ref[k], (k, step))


def test_ddp_training_matches_one_process(tmp_path):
    shards = (3, 5)
    ranks = sync_check.run("ddp", shards, tmp_path)
    model = sync_check.ddp_model(BatchNorm2d)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        x, y = sync_check.ddp_data(step, sum(shards))
        opt.zero_grad()
        ((model(x) - y).pow(2).sum() / len(shards)).backward()
        opt.step()
    for seen in ranks:
        state = seen[0]
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                torch.testing.assert_close(state[k], v, rtol=1e-10, atol=1e-12, msg=k)
            else:
                assert torch.equal(state[k], v), k


def test_eval_mode_and_a_world_of_one_never_communicate(tmp_path):
    for shards in ((2, 2), (4,)):
        ranks = sync_check.run("quiet", shards, tmp_path)
        for seen in ranks:
            assert seen[0]["out"].shape == (2, sync_check.C, sync_check.H, sync_check.W)
    # the world of one trained on its two rows as plain batch norm does
    ref = sync_check.params(torch.nn.BatchNorm2d(sync_check.C, dtype=F64))
    x, dout = sync_check.batch(4, 0, torch.contiguous_format)
    xi = x[:2].clone().requires_grad_()
    out = ref(xi)
    out.backward(dout[:2])
    close(ranks[0][0]["out"], out, "out")
    close(ranks[0][0]["dx"], xi.grad, "dx")
    close(ranks[0][0]["running_var"], ref.running_var, "running_var")


def test_a_missing_rank_raises_the_timeout(tmp_path):
    ranks = sync_check.run("timeout", (4, 4), tmp_path, timeout_s=3)
    got = ranks[0][0]
    assert got["error"] is not None, got
    assert "RuntimeError" in got["error"] or "DistBackendError" in got["error"], got["error"]
    assert got["seconds"] < 11, got
    # the refused step changed nothing
    assert int(got["num_batches_tracked"]) == 0
    assert torch.equal(got["running_mean"], torch.zeros(sync_check.C, dtype=F64))


def test_without_a_process_group_it_is_plain_batch_norm():
    assert not dist.is_initialized()
    ours = sync_check.params(SyncBatchNorm(sync_check.C, dtype=F64))
    ref = sync_check.params(torch.nn.BatchNorm2d(sync_check.C, dtype=F64))
    x, dout = sync_check.batch(6, 0, torch.contiguous_format)
    close(ours(x), ref(x), "out")
    close(ours.running_var, ref.running_var, "running_var")


def test_constructor_and_convert_sync_batchnorm():
    import inspect
    ours = list(inspect.signature(SyncBatchNorm).parameters)
    assert ours[:8] == list(inspect.signature(torch.nn.SyncBatchNorm).parameters)[:8]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(BatchNorm2d(4, bias=False),
                                                  torch.nn.BatchNorm1d(4)))
    net[1].running_mean.fill_(0.5)
    net[1].num_batches_tracked.fill_(3)
    net.eval()
    weight = net[1].weight
    same = SyncBatchNorm.convert_sync_batchnorm(net)
    assert same is net
    assert all(isinstance(m, SyncBatchNorm) for m in (net[1], net[2][0], net[2][1]))
    assert net[1].weight is weight and not net[1].training
    assert int(net[1].num_batches_tracked) == 3 and float(net[1].running_mean[0]) == 0.5
    assert net[2][0].bias is None
    layer = BatchNorm2d(4)
    assert isinstance(SyncBatchNorm.convert_sync_batchnorm(layer), SyncBatchNorm)
