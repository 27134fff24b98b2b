"""The torch.ops.cybatchnorm operators: registration (opcheck), second
derivatives against torch.nn.BatchNorm2d, torch.compile without graph breaks
on three backends, and what torch.func and forward-mode AD do."""
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

import cybatchnorm.torch as cbt  # noqa: E402

F64 = torch.float64


def data(shape, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1
    C = shape[1]
    w = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(C, generator=gen, dtype=dtype)
    rm = torch.randn(C, generator=gen, dtype=dtype)
    rv = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    return x, w, b, rm, rv


def test_ops_are_registered_in_the_cybatchnorm_namespace():
    for name in ("batch_norm_forward", "batch_norm_backward", "batch_norm_double_backward"):
        assert hasattr(torch.ops.cybatchnorm, name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_opcheck(training, fmt):
    # torch.library.opcheck: schema, fake implementation (shapes, dtypes,
    # strides) and autograd registration agree with the real kernels
    x, w, b, rm, rv = data((3, 4, 5, 2))
    if fmt == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    torch.library.opcheck(torch.ops.cybatchnorm.batch_norm_forward,
                          (x, w, b, rm, rv, training, 1e-5, 0))
    out, mean, invstd, _ = torch.ops.cybatchnorm.batch_norm_forward(
        x, w, b, rm, rv, training, 1e-5, 0)
    dout = torch.randn_like(out).requires_grad_()
    torch.library.opcheck(torch.ops.cybatchnorm.batch_norm_backward,
                          (dout, x, w, mean, invstd, training, 0))
    torch.library.opcheck(torch.ops.cybatchnorm.batch_norm_double_backward,
                          (torch.randn_like(x), torch.randn_like(w), torch.randn_like(b),
                           dout.detach(), x.detach(), w.detach(), mean, invstd, training, 0),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3), (3, 2, 2, 3), (2, 2, 2, 2, 2)])
def test_gradgradcheck(shape, training):
    x, w, b, rm, rv = data(shape, 1)
    x, w, b = (t.requires_grad_() for t in (x, w, b))

    def fn(x, w, b):
        return cbt.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    # without weight and bias (affine=False)
    assert torch.autograd.gradgradcheck(lambda x: fn(x, None, None), (x,))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_gradient_penalty_matches_torch(training, fmt):
    # a WGAN-GP style penalty: the norm of the input and weight gradients,
    # differentiated again, in the drop-in and in torch.nn.BatchNorm2d
    x, w, b, rm, rv = data((4, 3, 5, 5), 2)
    x = x.to(memory_format=fmt)
    grads = []
    for cls in (cbt.BatchNorm2d, torch.nn.BatchNorm2d):
        m = cls(3, dtype=F64)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
        m.train(training)
        xi = x.clone(memory_format=torch.preserve_format).requires_grad_()
        out = m(xi)
        loss = (out.sin() * torch.linspace(-1, 2, out.numel(), dtype=F64).view_as(out)).sum()
        gx, gw = torch.autograd.grad(loss, (xi, m.weight), create_graph=True)
        penalty = gx.pow(2).sum() + (gw - 1).pow(2).sum()
        second = torch.autograd.grad(penalty, (xi, m.weight, m.bias), allow_unused=True,
                                     materialize_grads=True)
        grads.append((out, gx, gw, penalty) + second)
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # the second-order term is really there: zeroing it would change dx
    assert float(grads[0][4].abs().max()) > 1e-3


def test_third_derivative_raises_instead_of_a_wrong_value():
    x, w, b, _, _ = data((5, 3), 3)
    x.requires_grad_()
    out = cbt.batch_norm(x, None, None, w, b, training=True)
    (gx,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="batch_norm_double_backward"):
        torch.autograd.grad(ggx.sum(), x)


def model(cls, C=6):
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Conv2d(3, C, 3), cls(C), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(C * 6 * 6, 2))


def test_compile_has_no_graph_break():
    x = torch.randn(4, 3, 8, 8)
    for training in (True, False):
        m = model(cbt.BatchNorm2d).train(training)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(m)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes
               if n.op == "call_function"]
        assert any("cybatchnorm.batch_norm_forward" in o for o in ops), ops
        assert not any("aten.batch_norm" in o or "native_batch_norm" in o for o in ops)


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_compiled_training_matches_eager(backend, fmt):
    torch._dynamo.reset()
    eager, compiled = model(cbt.BatchNorm2d), model(cbt.BatchNorm2d)
    eager = eager.to(memory_format=fmt)
    compiled = compiled.to(memory_format=fmt)
    fn = torch.compile(compiled, fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        if step == 2:
            eager.eval()
            compiled.eval()
        x = torch.randn(4, 3, 8, 8, generator=gen).to(memory_format=fmt)
        a, b = eager(x), fn(x)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        if step < 2:
            a.square().sum().backward()
            b.square().sum().backward()
    for (n, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)
    for (n, p), q in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_eager_calls_equal_the_registered_operators(training):
    # eager calls take a lean path over the operators' own implementations:
    # bitwise the same output, gradients and running statistics
    x, w, b, rm, rv = data((6, 3, 4, 2), 4)
    dout = torch.randn_like(x)
    results = []
    for eager in (True, False):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        rmi, rvi = rm.clone(), rv.clone()
        if eager:
            out = cbt.batch_norm(xi, rmi, rvi, wi, bi, training=training, momentum=0.2)
        else:
            out, mean, _, var = torch.ops.cybatchnorm.batch_norm_forward(
                xi, wi, bi, rmi, rvi, training, 1e-5, 0)
            if training:
                cbt._ops.update_running_stats(rmi, rvi, mean, var, 6 * 8, 0.2)
        grads = torch.autograd.grad(out, (xi, wi, bi), dout)
        results.append((out,) + grads + (rmi, rvi))
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_double_backward_kernel_is_thread_count_independent(training, fmt):
    x, w, _, _, _ = data((5, 7, 3, 4), 6)
    x = x.to(memory_format=fmt)
    dout, ggx = torch.randn_like(x), torch.randn_like(x)
    mean, invstd = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    runs = [torch.ops.cybatchnorm.batch_norm_double_backward(
        ggx, torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=F64),
        torch.ones(7, dtype=F64), dout, x, w, mean, invstd, training, n) for n in (1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    assert runs[0][1].is_contiguous(memory_format=fmt)
