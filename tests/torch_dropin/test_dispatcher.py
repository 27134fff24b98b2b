"""What watches torch's dispatcher sees the drop-in's operators: a dispatch
mode, FakeTensorMode, modules on device "meta", torch.export, the FLOP
counter and the profiler (the eager path, which reads memory through numpy,
steps aside for them)."""
import pytest

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import cybatchnorm.torch as cbt  # noqa: E402

OPS = ("cybatchnorm.batch_norm_forward.default", "cybatchnorm.batch_norm_backward.default")


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [True, False])
def test_a_dispatch_mode_sees_the_operators_and_the_result_is_the_same(training):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    plain = cbt.BatchNorm2d(3, dtype=torch.float64)
    watched = cbt.BatchNorm2d(3, dtype=torch.float64)
    results = []
    for m, mode in ((plain, None), (watched, _Log())):
        m.train(training)
        xa = x.clone().requires_grad_()
        if mode is None:
            out = m(xa)
            out.square().sum().backward()
        else:
            with mode:
                out = m(xa)
                out.square().sum().backward()
            assert [o for o in mode.ops if o.startswith("cybatchnorm")] == list(OPS)
        results.append([out.detach(), xa.grad, m.weight.grad] + list(m.state_dict().values()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [True, False])
def test_fake_tensor_mode_gives_shapes_dtypes_and_strides(fmt, training):
    from torch._subclasses.fake_tensor import FakeTensorMode
    real = torch.nn.BatchNorm2d(3).train(training)
    xr = torch.randn(4, 3, 5, 5).to(memory_format=fmt).requires_grad_()
    want = real(xr)
    want.sum().backward()
    with FakeTensorMode():
        m = cbt.BatchNorm2d(3).train(training)
        x = torch.randn(4, 3, 5, 5).to(memory_format=fmt).requires_grad_()
        out = m(x)
        out.sum().backward()
        assert type(out).__name__ == "FakeTensor"
        assert (out.shape, out.dtype, out.stride()) == (want.shape, want.dtype, want.stride())
        assert x.grad.stride() == xr.grad.stride() and m.weight.grad.shape == (3,)


@pytest.mark.parametrize("training", [True, False])
def test_a_meta_module_runs_forward_and_backward(training):
    m = cbt.BatchNorm1d(3, device="meta").train(training)
    x = torch.randn(8, 3, 4, device="meta", requires_grad=True)
    out = m(x)
    out.sum().backward()
    assert out.device.type == "meta" and out.shape == x.shape and x.grad.shape == x.shape
    assert m.running_var.device.type == "meta"


@pytest.mark.parametrize("training", [True, False])
def test_export_graph_holds_the_custom_op(training):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.bn = cbt.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.lin(x))

    net = Net().train(training)
    ep = torch.export.export(net, (torch.randn(8, 3),))
    targets = [str(n.target) for n in ep.graph.nodes]
    assert OPS[0] in targets
    x = torch.randn(8, 3)
    if not training:
        torch.testing.assert_close(ep.module()(x), net(x))


def test_flop_counter_and_profiler_see_the_operators():
    from torch.utils.flop_counter import FlopCounterMode
    m, x = cbt.BatchNorm1d(3), torch.randn(8, 3, requires_grad=True)
    with _Log() as log, FlopCounterMode(display=False):
        m(x).sum().backward()
    assert OPS[0] in log.ops
    with torch.profiler.profile() as prof:
        m(x).sum().backward()
    names = {e.name for e in prof.events()}
    assert "cybatchnorm::batch_norm_forward" in names, sorted(names)[:20]
