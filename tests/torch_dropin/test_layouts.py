"""Memory formats, empty batches, reduced precision and torch's errors, word
for word, in the drop-in."""
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

from raised import raised  # noqa: E402

import cybatchnorm.torch as cbt  # noqa: E402
from cybatchnorm.torch import _layout  # noqa: E402

F64 = torch.float64
CL = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 3, 4, 3, 2)])
def test_channels_last_is_read_in_place_and_kept(shape):
    fmt = CL[len(shape)]
    x = torch.randn(shape, dtype=F64).to(memory_format=fmt)
    # the kernels' view of channels_last input is x's own memory: an (N*S, C, 1) matrix
    assert _layout.layout_of(x) == "nsc"
    view = _layout.view3(x, "nsc")
    assert view.shape == (x.numel() // shape[1], shape[1], 1)
    assert np.shares_memory(view, x.numpy())
    ours = cbt.BatchNorm(shape[1], dtype=F64)
    cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm3d
    theirs = cls(shape[1], dtype=F64)
    for dout_fmt in (fmt, torch.contiguous_format):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = ours(xa), theirs(xb)
        assert out.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        dout = torch.randn(shape, dtype=F64).to(memory_format=dout_fmt)
        out.backward(dout)
        ref.backward(dout)
        # the input gradient keeps the input's format whatever dout's
        assert xa.grad.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)


def test_other_strides_are_copied_and_correct():
    x = torch.randn(6, 4, 5, dtype=F64).transpose(0, 2).contiguous().transpose(0, 2)
    assert _layout.layout_of(x) is None
    ours, theirs = cbt.BatchNorm1d(4, dtype=F64), torch.nn.BatchNorm1d(4, dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    expanded = torch.randn(1, 4, dtype=F64).expand(5, 4) + torch.arange(5.0, dtype=F64)[:, None]
    torch.testing.assert_close(ours(expanded[::2]), theirs(expanded[::2]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_as_torch(training):
    for cls, ref in ((cbt.BatchNorm2d, torch.nn.BatchNorm2d),):
        ours, theirs = cls(5), ref(5)
        ours.train(training)
        theirs.train(training)
        x = torch.randn(0, 5, 2, 2, requires_grad=True)
        out, want = ours(x), theirs(x)
        assert out.shape == want.shape == (0, 5, 2, 2)
        out.sum().backward()
        for k, v in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), k
        assert torch.equal(ours.weight.grad, torch.zeros(5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("module_dtype", ["same", "float32"])
def test_reduced_precision_is_computed_in_float64(dtype, module_dtype):
    mdt = dtype if module_dtype == "same" else torch.float32
    ours, theirs = cbt.BatchNorm2d(3, dtype=mdt), torch.nn.BatchNorm2d(3, dtype=mdt)
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(4, 3, 5, 5, generator=gen) * 3 + 2).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = ours(xa), theirs(xb)
    assert out.dtype == dtype
    # computed in float64, then rounded once: the float64 result, rounded
    exact = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    assert torch.equal(out, exact.to(dtype))
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=2e-2)
    out.float().square().sum().backward()
    ref.float().square().sum().backward()
    assert xa.grad.dtype == dtype and ours.weight.grad.dtype == mdt
    torch.testing.assert_close(xa.grad.float(), xb.grad.float(), rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-2, atol=1e-3)


def test_autocast_cpu():
    torch.manual_seed(0)
    net = lambda cls: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), cls(4))  # noqa: E731
    ours, theirs = net(cbt.BatchNorm2d), net(torch.nn.BatchNorm2d)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = ours(x), theirs(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert ours[1].weight.grad.dtype == torch.float32


def both(make, call):
    ours = raised(lambda: call(make(cbt)))
    theirs = raised(lambda: call(make(torch.nn)))
    return ours, theirs


ERRORS = {
    "channels": (lambda ns: ns.BatchNorm2d(3), lambda m: m(torch.randn(2, 4, 3, 3))),
    "rank 1d": (lambda ns: ns.BatchNorm1d(3), lambda m: m(torch.randn(2, 3, 3, 3))),
    "rank 2d": (lambda ns: ns.BatchNorm2d(3), lambda m: m(torch.randn(2, 3))),
    "rank 3d": (lambda ns: ns.BatchNorm3d(3), lambda m: m(torch.randn(2, 3, 4, 4))),
    "one value": (lambda ns: ns.BatchNorm2d(3), lambda m: m(torch.randn(1, 3, 1, 1))),
    "eps": (lambda ns: ns.BatchNorm1d(3, eps=0.0), lambda m: m(torch.randn(4, 3))),
    "eps negative": (lambda ns: ns.BatchNorm1d(3, eps=-1.0).eval(), lambda m: m(torch.randn(4, 3))),
    "float64 input": (lambda ns: ns.BatchNorm1d(3), lambda m: m(torch.randn(4, 3, dtype=F64))),
    "float32 input": (lambda ns: ns.BatchNorm1d(3).double(), lambda m: m(torch.randn(4, 3))),
    "half module": (lambda ns: ns.BatchNorm1d(3).half(), lambda m: m(torch.randn(4, 3))),
    "integers": (lambda ns: ns.BatchNorm1d(3), lambda m: m(torch.ones(4, 3, dtype=torch.long))),
    "eval channels": (lambda ns: ns.BatchNorm2d(3).eval(), lambda m: m(torch.randn(2, 4, 3, 3))),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_module_errors_word_for_word(case):
    ours, theirs = both(*ERRORS[case])
    assert theirs is not None
    assert ours == theirs


def test_refused_input_changes_nothing():
    m = cbt.BatchNorm2d(3)
    m(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for bad in (torch.randn(1, 3, 1, 1), torch.randn(2, 4, 2, 2),
                torch.randn(2, 3, 2, 2, dtype=F64)):
        with pytest.raises((ValueError, RuntimeError)):
            m(bad)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


FUNCTIONAL = {
    "weight size":
        lambda f: f(torch.randn(4, 3), torch.zeros(3), torch.ones(3), torch.ones(4), training=True),
    "bias size":
        lambda f: f(torch.randn(4, 3), torch.zeros(3), torch.ones(3), None, torch.ones(4),
                    training=True),
    "running_mean size":
        lambda f: f(torch.randn(4, 3), torch.zeros(4), torch.ones(3), training=True),
    "running_var size":
        lambda f: f(torch.randn(4, 3), torch.zeros(3), torch.ones(4), training=True),
    "no running_mean in eval": lambda f: f(torch.randn(4, 3), None, None, training=False),
    "no running_var in eval": lambda f: f(torch.randn(4, 3), torch.zeros(3), None),
    "rank 1": lambda f: f(torch.randn(4), None, None, training=True),
    "momentum None":
        lambda f: f(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=None),
    "half stats":
        lambda f: f(torch.randn(4, 3).half(), torch.zeros(3).half(), torch.ones(3), training=True),
    "eps eval": lambda f: f(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-3),
}


@pytest.mark.parametrize("case", sorted(FUNCTIONAL))
def test_functional_errors_word_for_word(case):
    ours = raised(lambda: FUNCTIONAL[case](cbt.batch_norm))
    theirs = raised(lambda: FUNCTIONAL[case](torch.nn.functional.batch_norm))
    assert theirs is not None
    assert ours == theirs


def test_signatures_and_keyword_only_options():
    import inspect
    sig = inspect.signature(cbt.batch_norm)
    ref = inspect.signature(torch.nn.functional.batch_norm)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:-1]] == list(ref.parameters)
    assert [p.default for p in params[:-1]] == [p.default for p in ref.parameters.values()]
    assert params[-1].name == "num_threads" and params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    for cls in (cbt.BatchNorm, cbt.BatchNorm1d, cbt.BatchNorm2d, cbt.BatchNorm3d):
        ps = inspect.signature(cls).parameters
        tp = inspect.signature(torch.nn.BatchNorm2d).parameters
        assert list(ps)[:len(tp)] == list(tp)
        assert ps["num_threads"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="positional arguments"):
        cbt.BatchNorm2d(3, 1e-5, 0.1, True, True, None, None, 2)
    with pytest.raises(ValueError, match="num_threads"):
        cbt.BatchNorm2d(3, num_threads=0)


def test_state_dicts_old_and_without_bias():
    theirs = torch.nn.BatchNorm2d(3, bias=False)
    theirs(torch.randn(4, 3, 2, 2))
    ours = cbt.BatchNorm2d(3, bias=False)
    ours.load_state_dict(theirs.state_dict())
    assert ours.bias is None and "bias=False" in repr(ours)
    # a state dict from before num_batches_tracked (version 1 metadata)
    old = torch.nn.BatchNorm2d(3).state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    fresh = cbt.BatchNorm2d(3)
    fresh.load_state_dict(old)
    assert int(fresh.num_batches_tracked) == 0
    fresh.reset_parameters()
    fresh.reset_running_stats()
    assert torch.equal(fresh.weight, torch.ones(3))
    assert torch.equal(fresh.running_var, torch.ones(3))


def test_convert_sync_batchnorm_sees_a_batchnorm():
    # isinstance-based tooling (torch's own convert_sync_batchnorm) sees our classes
    net = torch.nn.Sequential(cbt.BatchNorm2d(3))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(converted[0], torch.nn.SyncBatchNorm)
