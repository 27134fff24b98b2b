"""The layer, group and instance norm drop-ins beyond module_db
(tests/torch_dropin/test_module_db.py runs torch's own samples): reduced
precision, torch's errors word for word, torch.compile without graph breaks,
derivatives of any order, thread invariance, the registered operators under
fake tensors, inputs left as they were."""
import pytest
from raised import raised

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

import torch.nn.functional as F  # noqa: E402

import cybatchnorm.torch as cbt  # noqa: E402

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


# the three functionals on one shape each, with weight and bias
CALLS = {
    "layer_norm": (lambda f, x, w, b: f(x, [6, 5], w, b, 1e-5), (4, 7, 6, 5), (6, 5)),
    "group_norm": (lambda f, x, w, b: f(x, 3, w, b, 1e-5), (4, 6, 3, 5), (6,)),
    "instance_norm": (lambda f, x, w, b: f(x, None, None, w, b, True, 0.1, 1e-5), (4, 6, 9),
                      (6,)),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_reduced_precision_is_computed_in_float32(name, dtype, param_dtype):
    call, shape, pshape = CALLS[name]
    pdt = dtype if param_dtype == "same" else torch.float32
    x = (_randn(*shape, seed=1) * 3 + 2).to(dtype)
    w, b = _randn(*pshape, seed=2).to(pdt), _randn(*pshape, seed=3).to(pdt)
    ours_in = [t.clone().requires_grad_() for t in (x, w, b)]
    out = call(getattr(cbt, name), *ours_in)
    # the reference: torch's in float64 from the same values, rounded once
    ref_in = [t.double().requires_grad_() for t in (x, w, b)]
    ref = call(getattr(F, name), *ref_in)
    assert out.dtype == dtype
    # within one rounding of the exact value (and a float32 rounding before it)
    ulp = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
    err = (out.double() - ref).abs() / ref.abs().clamp_min(1.0)
    assert err.max() <= ulp, err.max()
    dout = _randn(*shape, seed=4).to(dtype)
    grads = torch.autograd.grad(out, ours_in, dout)
    refg = torch.autograd.grad(ref, ref_in, dout.double())
    for g, r, t in zip(grads, refg, ours_in):
        assert g.dtype == t.dtype
        torch.testing.assert_close(g.double(), r, rtol=4 * ulp, atol=4 * ulp * r.abs().max())


def _bad_calls():
    x = torch.randn(4, 6, 5)
    o5, o6 = torch.ones(5), torch.ones(6)
    return {
        "ln shape": lambda f: f.layer_norm(x, [6]),
        "ln weight": lambda f: f.layer_norm(x, [5], torch.ones(3)),
        "ln bias": lambda f: f.layer_norm(x, [5], None, torch.ones(3)),
        "ln mixed f64": lambda f: f.layer_norm(x, [5], o5.double()),
        "ln mixed double x": lambda f: f.layer_norm(x.double(), [5], o5),
        "ln int": lambda f: f.layer_norm(x.int(), [5]),
        "ln empty shape": lambda f: f.layer_norm(x, []),
        "ln int shape": lambda f: f.layer_norm(x, 5),
        "ln x not tensor": lambda f: f.layer_norm([1.0, 2.0], [2]),
        "ln weight not tensor": lambda f: f.layer_norm(x, [5], [1.0] * 5),
        "gn groups": lambda f: f.group_norm(x, 4),
        "gn 1-D": lambda f: f.group_norm(torch.randn(3), 1),
        "gn one value": lambda f: f.group_norm(torch.randn(1, 3), 3),
        "gn weight": lambda f: f.group_norm(x, 3, o5),
        "gn weight 2-D": lambda f: f.group_norm(x, 3, torch.ones(2, 3)),
        "gn zero groups": lambda f: f.group_norm(x, 0),
        "gn int": lambda f: f.group_norm(x.int(), 3),
        "gn mixed": lambda f: f.group_norm(x, 3, o6.double()),
        "gn groups float": lambda f: f.group_norm(x, 3.0),
        "in spatial": lambda f: f.instance_norm(torch.randn(4, 3, 1)),
        "in no running": lambda f: f.instance_norm(x, use_input_stats=False),
        "in running_mean": lambda f: f.instance_norm(x, torch.zeros(5), torch.ones(6)),
        "in weight": lambda f: f.instance_norm(x, None, None, o5),
        "in int": lambda f: f.instance_norm(x.int()),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_functional_errors_are_torchs(case):
    call = _bad_calls()[case]
    theirs = raised(lambda: call(F))
    assert theirs is not None, "torch accepts it: not an error case"
    assert raised(lambda: call(cbt)) == theirs


def test_group_norm_bias_error_names_the_bias_shape():
    # torch's message prints the weight's shape for a wrong bias ("bias of
    # shape [0]" with no weight); ours says the bias's
    x = torch.randn(4, 6, 5)
    kind, message = raised(lambda: cbt.group_norm(x, 3, None, torch.ones(5)))
    assert kind is raised(lambda: F.group_norm(x, 3, None, torch.ones(5)))[0]
    assert "but got bias of shape [5] and input of shape [4, 6, 5]" in message


def test_refused_input_changes_nothing():
    m = cbt.InstanceNorm1d(6, track_running_stats=True, affine=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        m(torch.randn(4, 6, 1))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", CALLS)
def test_inputs_are_not_modified(name):
    call, shape, pshape = CALLS[name]
    x, w, b = _randn(*shape), _randn(*pshape, seed=1), _randn(*pshape, seed=2)
    copies = [t.clone() for t in (x, w, b)]
    call(getattr(cbt, name), x, w, b)
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_bitwise_the_same_for_any_thread_count(name, dtype):
    call, shape, pshape = CALLS[name]
    shape = (37,) + shape[1:]       # rows that do not split evenly

    def run(nt):
        x = _randn(*shape, dtype=dtype).requires_grad_()
        w = _randn(*pshape, dtype=dtype, seed=1).requires_grad_()
        b = _randn(*pshape, dtype=dtype, seed=2).requires_grad_()
        out = call(lambda *a, **k: getattr(cbt, name)(*a, **k, num_threads=nt), x, w, b)
        out.backward(_randn(*shape, dtype=dtype, seed=3))
        return [out.detach(), x.grad, w.grad, b.grad]
    one = run(1)
    for nt in (2, 3, 5):
        for a, c in zip(one, run(nt)):
            assert torch.equal(a, c), nt


def test_third_derivatives_match_torch():
    # the operator's own gradient is differentiable: any order, as torch's
    x = _randn(3, 4, 5, dtype=F64) * 2 + 1
    w = _randn(4, dtype=F64, seed=1)

    def third(f):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = f(xx, 2, ww)
        (gx,) = torch.autograd.grad(out.pow(3).sum(), xx, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.pow(2).sum(), xx, create_graph=True)
        return torch.autograd.grad(ggx.sin().sum(), (xx, ww))
    for a, b in zip(third(cbt.group_norm), third(F.group_norm)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_instance_norm_running_stats_follow_torch():
    ours = cbt.InstanceNorm2d(3, momentum=0.3, track_running_stats=True, dtype=F64)
    theirs = torch.nn.InstanceNorm2d(3, momentum=0.3, track_running_stats=True, dtype=F64)
    for step in range(3):
        x = _randn(5, 3, 4, 4, dtype=F64, seed=step) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    assert not torch.equal(ours.running_var, torch.ones(3, dtype=F64))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12,
                                   atol=1e-12, msg=name)
    ours.eval()
    theirs.eval()
    x = _randn(2, 3, 4, 4, dtype=F64, seed=9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def _models():
    return {
        "LayerNorm": (lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), cbt.LayerNorm(16),
                                                  torch.nn.Linear(16, 2)), (4, 5, 8)),
        "GroupNorm": (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), cbt.GroupNorm(3, 6),
                                                  torch.nn.Flatten(), torch.nn.Linear(216, 2)),
                      (4, 3, 8, 8)),
        "InstanceNorm2d": (lambda: torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3), cbt.InstanceNorm2d(6, affine=True, track_running_stats=True),
            torch.nn.Flatten(), torch.nn.Linear(216, 2)), (4, 3, 8, 8)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_compile_has_no_graph_break_and_matches_eager(name):
    make, shape = _models()[name]
    torch.manual_seed(3)
    eager = make()
    compiled = make()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    explained = torch._dynamo.explain(compiled)(_randn(*shape))
    assert explained.graph_break_count == 0, explained.break_reasons
    ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes
           if n.op == "call_function"]
    assert any("cybatchnorm.norm_forward" in o for o in ops), ops
    compiled.load_state_dict(eager.state_dict())    # explain ran a training forward
    torch._dynamo.reset()
    fn = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for step in range(2):
        x = _randn(*shape, seed=step)
        a, b = eager(x), fn(x)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        a.square().sum().backward()
        b.square().sum().backward()
    for (n, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)
    for (n, p), q in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)


def test_fake_tensors_and_meta_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(2, 6, 4, 4).to(memory_format=torch.channels_last)
        out = cbt.group_norm(x, 3, torch.ones(6), torch.zeros(6))
        assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
        out = cbt.layer_norm(torch.empty(3, 7, 5), [7, 5])
        assert out.shape == (3, 7, 5)
    out = cbt.instance_norm(torch.empty(2, 3, 8, device="meta"))
    assert out.shape == (2, 3, 8) and out.device.type == "meta"


def test_torch_func_grad_is_refused_with_a_clear_error():
    x = _randn(4, 6, dtype=F64)
    with pytest.raises(NotImplementedError, match="torch.func.grad"):
        torch.func.grad(lambda t: cbt.layer_norm(t, [6]).pow(3).sum())(x)


def test_module_repr_and_threads():
    assert repr(cbt.LayerNorm(4, num_threads=2)) == \
        "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True, num_threads=2)"
    assert repr(cbt.GroupNorm(2, 4)) == repr(torch.nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="num_threads"):
        cbt.GroupNorm(2, 4, num_threads=0)
    with pytest.raises(TypeError, match="num_threads"):
        cbt.InstanceNorm1d(4, num_threads=1.5)


def test_signatures_are_torchs_with_keyword_only_threads():
    import inspect
    for ours, theirs in ((cbt.layer_norm, F.layer_norm), (cbt.group_norm, F.group_norm),
                         (cbt.instance_norm, F.instance_norm)):
        params = list(inspect.signature(ours).parameters.values())
        ref = inspect.signature(theirs).parameters
        assert [p.name for p in params[:-1]] == list(ref)
        assert [p.default for p in params[:-1]] == [p.default for p in ref.values()]
        assert params[-1].name == "num_threads"
        assert params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    for ours, theirs in ((cbt.LayerNorm, torch.nn.LayerNorm), (cbt.GroupNorm, torch.nn.GroupNorm),
                         (cbt.InstanceNorm1d, torch.nn.InstanceNorm1d),
                         (cbt.InstanceNorm2d, torch.nn.InstanceNorm2d),
                         (cbt.InstanceNorm3d, torch.nn.InstanceNorm3d)):
        ps = list(inspect.signature(ours).parameters.values())
        tp = list(inspect.signature(theirs).parameters.values())
        assert [(p.name, p.default, p.kind) for p in ps[:len(tp)]] == \
            [(p.name, p.default, p.kind) for p in tp]
        assert ps[-1].name == "num_threads" and ps[-1].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.channels_last_3d], ids=str)
def test_channels_last_group_norm_is_read_in_place(monkeypatch, fmt):
    from cybatchnorm import _engine
    shape = (2, 6, 3, 4) if fmt == torch.channels_last else (2, 6, 2, 3, 4)
    x = _randn(*shape, dtype=F64).to(memory_format=fmt).requires_grad_()
    seen = {}
    for name in ("norm_forward_nhwc", "norm_backward_nhwc"):
        kernel = getattr(_engine, name)

        def spy(*args, _kernel=kernel, _name=name):
            seen[_name] = args
            return _kernel(*args)
        monkeypatch.setattr(_engine, name, spy)
    w = _randn(6, dtype=F64, seed=1).requires_grad_()
    out = cbt.group_norm(x, 3, w, None)
    dout = _randn(*shape, dtype=F64, seed=2).to(memory_format=fmt)
    out.backward(dout)
    # the forward kernel read x's own memory, as (N, S, C)
    xa = seen["norm_forward_nhwc"][0]
    S = 12 if fmt == torch.channels_last else 24
    assert xa.__array_interface__["data"][0] == x.data_ptr() and xa.shape == (2, S, 6)
    assert "norm_backward_nhwc" in seen
    assert out.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    ref_x = x.detach().contiguous().requires_grad_()
    ref_w = w.detach().clone().requires_grad_()
    ref = F.group_norm(ref_x, 3, ref_w, None)
    ref.backward(dout.contiguous())
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-11, atol=1e-11)


# ------------------------------------------------------------ pooled outputs

@pytest.mark.parametrize("make, shape", [
    (lambda: cbt.LayerNorm(512), (1024, 512)),                  # 2 MiB of float32
    (lambda: cbt.GroupNorm(4, 16), (32, 16, 32, 32)),
    (lambda: cbt.GroupNorm(4, 16), "channels_last"),
], ids=["layer", "group", "group channels_last"])
def test_large_outputs_come_from_the_pool_and_are_never_overwritten(pool, make, shape):
    from cybatchnorm.torch import _outputs
    m = make()
    fmt = torch.channels_last if shape == "channels_last" else torch.contiguous_format
    shape = (32, 16, 32, 32) if shape == "channels_last" else shape

    def x_(seed):
        return _randn(*shape, seed=seed).to(memory_format=fmt).requires_grad_(True)
    x1, dout = x_(1), _randn(*shape, seed=9).to(memory_format=fmt)
    y1 = m(x1)
    keep = y1.detach().clone()
    y1.backward(dout)
    grad = x1.grad.clone()
    assert _outputs.info()["storages"] >= 2         # out and dx are the pool's
    for seed in (2, 3):
        x = x_(seed)
        m(x).backward(dout)
        assert not torch.equal(x.grad, grad)
    assert torch.equal(y1, keep) and torch.equal(x1.grad, grad)   # still held: never lent
    ptr = m(x1).data_ptr()
    assert m(x1).data_ptr() == ptr       # nothing holds the first: its storage is lent again
