"""cybatchnorm's layer norm and group norm against torch.nn.functional's, with
autograd for the gradients (float64, so the comparison is of the formulas)."""
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

import cybatchnorm as bn  # noqa: E402

F64 = torch.float64


def _torch_grads(fn, x, g, b, d):
    xt, gt, bt = (torch.tensor(a, dtype=F64, requires_grad=True) for a in (x, g, b))
    out = fn(xt, gt, bt)
    out.backward(torch.tensor(d, dtype=F64))
    return [t.detach().numpy() for t in (out, xt.grad, gt.grad, bt.grad)]


@pytest.mark.parametrize("shape, k", [((8, 12), 1), ((4, 5, 16), 1), ((3, 4, 5), 2),
                                      ((64, 197, 32), 1)])
def test_layer_norm_matches_torch(shape, k):
    rng = np.random.default_rng(1)
    x, d = rng.normal(2, 3, shape), rng.normal(size=shape)
    g, b = rng.uniform(0.5, 2, shape[-k:]), rng.normal(size=shape[-k:])
    out, cache = bn.layernorm_forward(x, g, b)
    ours = (out,) + bn.layernorm_backward_fused(d, cache)
    theirs = _torch_grads(lambda xt, gt, bt: torch.nn.functional.layer_norm(
        xt, shape[-k:], gt, bt, 1e-5), x, g, b, d)
    for label, a, w in zip(("out", "dx", "dgamma", "dbeta"), ours, theirs):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-11, err_msg=label)


@pytest.mark.parametrize("shape, G", [((4, 6, 5, 5), 3), ((2, 8, 7), 4), ((2, 6, 3, 3), 6),
                                      ((8, 32, 8, 8), 32), ((3, 6), 2)])
def test_group_norm_matches_torch(shape, G):
    rng = np.random.default_rng(2)
    x, d = rng.normal(2, 3, shape), rng.normal(size=shape)
    g, b = rng.uniform(0.5, 2, shape[1]), rng.normal(size=shape[1])
    out, cache = bn.groupnorm_forward(x, g, b, G)
    ours = (out,) + bn.groupnorm_backward_fused(d, cache)
    theirs = _torch_grads(lambda xt, gt, bt: torch.nn.functional.group_norm(
        xt, G, gt, bt, 1e-5), x, g, b, d)
    for label, a, w in zip(("out", "dx", "dgamma", "dbeta"), ours, theirs):
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-11, err_msg=label)


def test_layer_checkpoints_move_to_torch_modules_and_back():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6, 5))
    ours = bn.LayerNorm((6, 5))
    ours.load_state_dict({"weight": rng.uniform(0.5, 2, (6, 5)), "bias": rng.normal(size=(6, 5))})
    theirs = torch.nn.LayerNorm((6, 5), dtype=F64)
    theirs.load_state_dict({k: torch.as_tensor(v) for k, v in ours.state_dict().items()})
    np.testing.assert_allclose(ours.forward(x), theirs(torch.as_tensor(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    group = torch.nn.GroupNorm(3, 6, dtype=F64)
    mine = bn.GroupNorm(3, 6)
    mine.load_state_dict(group.state_dict())
    np.testing.assert_allclose(mine.forward(x), group(torch.as_tensor(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)


def test_the_bench_norm_table_measures_and_reports(monkeypatch):
    import io

    from cybatchnorm import bench
    monkeypatch.setattr(bench, "NORM_CASES", [("layer", (16, 8), None), ("group", (4, 6, 3), 3)])
    out = io.StringIO()
    rows = bench.norm_table(torch, 2, out)
    text = out.getvalue()
    assert len(rows) == 2 and "norm targets met:" in text
    for r in rows:
        assert r["ratio"] > 0 and r["ratio_1thread"] > 0
        for off in ("1000.0", "1000000.0"):
            errs = r["errors"][off]
            assert set(errs) == {"out", "dx", "torch_out", "torch_dx"}
            # ours: the float32 path of a minimal cache, within about 2e-6 of float64
            assert errs["out"] < 1e-6 and errs["dx"] < 1e-5


def test_the_bench_norm_dropin_table_measures_every_layout(monkeypatch):
    import io

    from cybatchnorm import bench
    monkeypatch.setattr(bench, "NORM_CASES", [("layer", (16, 8), None),
                                              ("group", (4, 6, 3, 3), 3),
                                              ("instance", (2, 4, 3, 3), 4)])
    out = io.StringIO()
    rows = bench.norm_dropin_table(torch, 2, out)
    text = out.getvalue()
    # layer norm contiguous only; the 4-D cases contiguous and channels_last
    assert [(r["kind"], r["format"]) for r in rows] == [
        ("layer", "contiguous"), ("group", "contiguous"), ("group", "channels_last"),
        ("instance", "contiguous"), ("instance", "channels_last")]
    assert "norm drop-in targets met:" in text and text.count("NHWC") == 2
    for r in rows:
        assert r["ratio"] > 0 and r["ratio_1thread"] > 0 and r["target"] == 1.0
