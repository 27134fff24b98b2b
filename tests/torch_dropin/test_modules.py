"""cybatchnorm.torch's modules against torch.nn.BatchNorm1d/2d/3d: forward,
gradients, running statistics, eval mode, state dicts, errors; gradcheck in
float64."""
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

from cybatchnorm.torch import BatchNorm, batch_norm  # noqa: E402

MAX_DIFF = {}


def reference(shape, **kw):
    return (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(shape[1], **kw)


def pair(shape, dtype, **kw):
    ours, theirs = BatchNorm(shape[1], dtype=dtype, **kw), reference(shape, dtype=dtype, **kw)
    if ours.affine:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.linspace(0.5, 2.0, shape[1], dtype=dtype))
                m.bias.copy_(torch.linspace(-1.0, 1.0, shape[1], dtype=dtype))
    return ours, theirs


def close(name, got, want, dtype):
    got, want = got.detach(), want.detach()
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    key = (name, str(dtype).replace("torch.", ""))
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), diff)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert diff <= tol * scale, (name, diff)


SHAPES = [(16, 5), (9, 3, 7), (6, 4, 5, 3), (2, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_torch_batchnorm(shape, dtype, momentum):
    ours, theirs = pair(shape, dtype, momentum=momentum)
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        if step == 3:
            ours.eval()
            theirs.eval()
        x = (torch.randn(shape, generator=gen, dtype=dtype) * (1 + step) + 3).requires_grad_()
        xt = x.detach().clone().requires_grad_()
        dout = torch.randn(shape, generator=gen, dtype=dtype)
        out, ref = ours(x), theirs(xt)
        close("out", out, ref, dtype)
        out.backward(dout)
        ref.backward(dout)
        close("dx", x.grad, xt.grad, dtype)
        close("dweight", ours.weight.grad, theirs.weight.grad, dtype)
        close("dbias", ours.bias.grad, theirs.bias.grad, dtype)
        close("running_mean", ours.running_mean, theirs.running_mean, dtype)
        close("running_var", ours.running_var, theirs.running_var, dtype)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
        for m in (ours, theirs):
            m.zero_grad()


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_options_match_torch(affine, track):
    shape, dtype = (10, 3, 4), torch.float64
    ours, theirs = pair(shape, dtype, affine=affine, track_running_stats=track)
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        close("out", ours(a), theirs(b), dtype)
        ours(a).pow(2).sum().backward()
        theirs(b).pow(2).sum().backward()
        close("dx", a.grad, b.grad, dtype)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


def test_state_dict_moves_between_the_two():
    ours, theirs = pair((8, 3), torch.float32)
    theirs(torch.randn(8, 3) + 2)
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.randn(5, 3)
    close("out", ours(x), theirs(x), torch.float32)


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3), (3, 2, 2, 3)])
def test_gradcheck_float64(shape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(shape[1], dtype=torch.float64, generator=gen).add_(0.5).requires_grad_()
    b = torch.randn(shape[1], dtype=torch.float64, generator=gen, requires_grad=True)
    train = lambda x, w, b: batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    assert torch.autograd.gradcheck(train, (x, w, b), eps=1e-6, atol=1e-7)
    rm = torch.randn(shape[1], dtype=torch.float64)
    rv = torch.rand(shape[1], dtype=torch.float64) + 0.5
    evalf = lambda x, w, b: batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    assert torch.autograd.gradcheck(evalf, (x, w, b), eps=1e-6, atol=1e-7)
    layer = BatchNorm(shape[1], dtype=torch.float64)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7)


def test_functional_matches_torch_functional():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, 5, dtype=torch.float64, generator=gen)
    rm1, rv1 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    rm2, rv2 = rm1.clone(), rv1.clone()
    out = batch_norm(x, rm1, rv1, training=True, momentum=0.2)
    ref = torch.nn.functional.batch_norm(x, rm2, rv2, training=True, momentum=0.2)
    close("out", out, ref, torch.float64)
    close("running_var", rv1, rv2, torch.float64)


def test_in_place_change_of_x_is_refused():
    layer = BatchNorm(2, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    y = x * 1.0
    out = layer(y)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_report_max_differences():
    # run last: the largest differences seen against torch (see -rs/-s output)
    print("\nmax |cybatchnorm.torch - torch.nn.BatchNorm|:")
    for (name, dt), d in sorted(MAX_DIFF.items()):
        print(f"  {dt:8s} {name:13s} {d:.3g}")
