"""Batch norm under torch.func transforms and forward-mode AD (``torch/_func.py``).

Every transform's result is compared with torch.nn's where torch's works
(training without running statistics, and eval mode), and with centred
differences of our own compiled forward where torch's does not or is wrong;
a vmapped batch norm runs each kernel once over the stacked batches (counted)
and gives each batch the bits it gets alone; running statistics passed as
buffers are updated per vmapped batch.
"""
import copy

import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")

import torch.autograd.forward_ad as fwAD  # noqa: E402
from torch.func import (  # noqa: E402
    functional_call,
    grad,
    hessian,
    jacfwd,
    jacrev,
    jvp,
    stack_module_state,
    vjp,
    vmap,
)

from cybatchnorm import _engine  # noqa: E402
import cybatchnorm.torch as cbt  # noqa: E402
from cybatchnorm.torch import _func  # noqa: E402

F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)
LAYOUTS = ["contiguous", "channels_last"]


def data(shape, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5
    w = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(C, generator=gen, dtype=dtype)
    rm = torch.randn(C, generator=gen, dtype=dtype)
    rv = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    return x, w, b, rm, rv


def fmt(x, layout):
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def pair(training, C=3):
    """(ours, torch's) BatchNorm2d with the same state: training without
    running statistics (where torch.nn works under every transform), eval
    with them."""
    kw = dict(dtype=F64, track_running_stats=not training)
    theirs = torch.nn.BatchNorm2d(C, **kw)
    ours = cbt.BatchNorm2d(C, **kw)
    x, w, b, rm, rv = data((2, C, 1, 1), seed=3)
    with torch.no_grad():
        theirs.weight.copy_(w)
        theirs.bias.copy_(b)
        if not training:
            theirs.running_mean.copy_(rm)
            theirs.running_var.copy_(rv)
    ours.load_state_dict(theirs.state_dict())
    for m in (ours, theirs):
        m.train(training)
    return ours, theirs


def loss_of(module):
    params = dict(module.named_parameters())

    def f(x, p=params):
        return functional_call(module, p, (x,)).sin().sum()
    return f


def out_of(module):
    def f(x):
        return module(x).sin()
    return f


def params_loss(module, x):
    def f(p):
        return functional_call(module, p, (x,)).sin().sum()
    return f, {k: v.detach().clone() for k, v in module.named_parameters()}


TRANSFORMS = {
    "grad": lambda m, x: grad(loss_of(m))(x),
    "grad params": lambda m, x: grad(params_loss(m, x)[0])(params_loss(m, x)[1]),
    "vjp": lambda m, x: vjp(out_of(m), x)[1](torch.cos(x))[0],
    "jacrev": lambda m, x: jacrev(out_of(m))(x),
    "jacfwd": lambda m, x: jacfwd(out_of(m))(x),
    "jvp": lambda m, x: jvp(out_of(m), (x,), (torch.cos(x),)),
    "hessian": lambda m, x: hessian(loss_of(m))(x),
    "hessian params": lambda m, x: hessian(params_loss(m, x)[0])(params_loss(m, x)[1]),
    "jacfwd(jacrev)": lambda m, x: jacfwd(jacrev(loss_of(m)))(x),
    "jacrev(jacrev)": lambda m, x: jacrev(jacrev(loss_of(m)))(x),
    "jacfwd(jacfwd)": lambda m, x: jacfwd(jacfwd(loss_of(m)))(x),
    "vmap": lambda m, x: vmap(out_of(m))(torch.stack([x, x.flip(0) * 2])),
    "vmap(grad)": lambda m, x: vmap(grad(loss_of(m)))(torch.stack([x, x.flip(0) * 2])),
    "vmap(jvp)": lambda m, x: vmap(lambda t: jvp(out_of(m), (x,), (t,))[1])(
        torch.stack([x, torch.cos(x)])),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_matches_torch_nn(name, training, layout):
    ours, theirs = pair(training)
    x = fmt(data((4, 3, 2, 2), seed=1)[0], layout)
    got = TRANSFORMS[name](ours, x)
    want = TRANSFORMS[name](theirs, x)
    if training and name == "jacfwd(jacfwd)":
        # torch.nn's (2.13) is not its own Hessian here (as the docs say):
        # ours is compared with torch.nn's hessian instead
        assert not torch.allclose(got, want, rtol=1e-6, atol=1e-6)
        want = TRANSFORMS["hessian"](theirs, x)
    torch.testing.assert_close(got, want, **TOL)


def test_functional_batch_norm_under_transforms_matches_torch():
    # the functional form: gradients in x, weight and bias, train and eval
    x, w, b, rm, rv = data((5, 3, 4))
    for training in (True, False):
        def ours(x, w, b, training=training):
            return cbt.batch_norm(x, rm, rv, w, b, training=training).sin().sum()

        def theirs(x, w, b, training=training):
            return torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), w, b,
                                                  training=training).sin().sum()
        for t in (grad, jacrev, jacfwd):
            torch.testing.assert_close(t(ours, argnums=(0, 1, 2))(x, w, b),
                                       t(theirs, argnums=(0, 1, 2))(x, w, b), **TOL)
        # the Hessian in (x, weight, bias) against torch's built by autograd
        # (torch.nn's under torch.func gets the x-weight block wrong in
        # training: test_torch_func_hessian_cross_term_is_wrong_in_training)
        want = torch.autograd.functional.hessian(theirs, (x, w, b))
        torch.testing.assert_close(hessian(ours, argnums=(0, 1, 2))(x, w, b), want, **TOL)
        torch.testing.assert_close(jacrev(jacrev(ours, argnums=(0, 1, 2)), argnums=(0, 1, 2))(
            x, w, b), want, **TOL)


def test_torch_func_hessian_cross_term_is_wrong_in_training():
    # what the docs say of torch.nn (2.13) under torch.func: its Hessian's
    # x-weight block in training differs from its own autograd Hessian and
    # from centred differences; ours equals both
    x, w, b, _, _ = data((5, 3, 4), seed=11)

    def loss(fn):
        return lambda x, w: fn(x, None, None, w, b, training=True).sin().sum()
    t = torch.cos(x)
    for fn, right in ((cbt.batch_norm, True), (torch.nn.functional.batch_norm, False)):
        cross = hessian(loss(fn), argnums=(0, 1))(x, w)[1][0]          # d/dx of dL/dw
        fd = centred(lambda x, fn=fn: grad(loss(fn), argnums=1)(x, w), x, t)
        close = torch.allclose(torch.einsum("cnkl,nkl->c", cross, t), fd, rtol=1e-6, atol=1e-7)
        assert close == right, fn


def centred(f, x, t, h=1e-5):
    return (f(x + h * t) - f(x - h * t)) / (2 * h)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reverse_over_forward_matches_the_hessian_and_differences(layout):
    # jacrev(jacfwd(...)) in training: torch.nn 2.13 gives a wrong value
    # here, so ours is checked against its own Hessian (reverse and forward
    # over reverse) and centred differences of the compiled gradient
    ours, theirs = pair(True)
    x = fmt(data((4, 3, 2, 2), seed=2)[0], layout)
    f = loss_of(ours)
    got = jacrev(jacfwd(f))(x)
    torch.testing.assert_close(got, hessian(f)(x), **TOL)
    # (what the docs say of torch.nn: its jacrev(jacfwd(...)) is not its Hessian here)
    g = loss_of(theirs)
    assert not torch.allclose(jacrev(jacfwd(g))(x), hessian(g)(x), rtol=1e-6, atol=1e-6)
    t = torch.cos(x)
    fd = centred(grad(f), x, t)
    torch.testing.assert_close(torch.einsum("abcdefgh,efgh->abcd", got, t), fd,
                               rtol=1e-6, atol=1e-7)


def test_jvp_equals_centred_differences_of_the_compiled_forward():
    # forward mode in training with running statistics (a module's own
    # buffers, captured: torch.nn raises there)
    x, w, b, _, _ = data((6, 3, 5), seed=4)
    tx, tw, tb = torch.cos(x), torch.sin(w), torch.cos(b)
    for training in (True, False):
        m = cbt.BatchNorm1d(3, dtype=F64)
        m.train(training)

        def f(x, w, b, m=m):
            # training updates the buffers each call: the output does not read them
            return functional_call(m, {"weight": w, "bias": b}, (x,))
        _, tangent = jvp(f, (x, w, b), (tx, tw, tb))
        h = 1e-6
        fd = (f(x + h * tx, w + h * tw, b + h * tb)
              - f(x - h * tx, w - h * tw, b - h * tb)) / (2 * h)
        torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_ad_dual_numbers_match_torch(training, layout):
    ours, theirs = pair(training)
    x = fmt(data((4, 3, 3, 2), seed=5)[0], layout)
    t = torch.cos(x)
    res = []
    for m in (ours, theirs):
        with fwAD.dual_level():
            out = m(fwAD.make_dual(x, t))
            primal, tangent = fwAD.unpack_dual(out)
            res.append((primal.clone(), tangent.clone()))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, **TOL)
    # the tangent keeps the memory format of the output
    assert res[0][1].is_contiguous(memory_format=torch.channels_last) == \
        (layout == "channels_last")


def test_forward_ad_tangents_of_weight_and_bias():
    x, w, b, rm, rv = data((4, 3, 2))
    tw, tb = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    for training in (True, False):
        got = []
        for fn in (cbt.batch_norm, torch.nn.functional.batch_norm):
            with fwAD.dual_level():
                out = fn(x, rm.clone(), rv.clone(), fwAD.make_dual(w, tw), fwAD.make_dual(b, tb),
                         training=training)
                got.append(fwAD.unpack_dual(out).tangent.clone())
        torch.testing.assert_close(got[0], got[1], **TOL)


def test_float32_and_reduced_precision_under_transforms():
    x, w, b, rm, rv = (t.float() for t in data((6, 3, 4), seed=6))
    tx = torch.cos(x)
    for dtype, tol in ((torch.float32, dict(rtol=2e-5, atol=2e-5)),
                       (torch.bfloat16, dict(rtol=2e-2, atol=2e-2))):
        xi, ti = x.to(dtype), tx.to(dtype)

        def ours(x):
            return cbt.batch_norm(x, None, None, w, b, training=True)

        def theirs(x):
            return torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
        a, b_ = jvp(ours, (xi,), (ti,)), jvp(theirs, (xi,), (ti,))
        assert a[1].dtype == dtype
        torch.testing.assert_close(a[1].float(), b_[1].float(), **tol)
        ga = grad(lambda x: ours(x).float().sin().sum())(xi)
        gb = grad(lambda x: theirs(x).float().sin().sum())(xi)
        torch.testing.assert_close(ga.float(), gb.float(), **tol)


# ------------------------------------------------------------- batching rule

class Calls:
    """Counts the compiled entry points' calls while active."""

    NAMES = ("forward_batches", "backward_batches", "double_backward_batches", "jvp_batches",
             "forward_tensor", "backward_tensor", "fused_forward", "fused_backward")

    def __init__(self, monkeypatch):
        self.n = dict.fromkeys(self.NAMES, 0)
        for name in self.NAMES:
            real = getattr(_engine, name)

            def counted(*a, _real=real, _name=name, **k):
                self.n[_name] += 1
                return _real(*a, **k)
            monkeypatch.setattr(_engine, name, counted)

    def __call__(self):
        return {k: v for k, v in self.n.items() if v}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vmap_runs_each_kernel_once_and_each_batch_gets_its_own_bits(monkeypatch, layout):
    B = 5
    xs = torch.stack([fmt(data((4, 3, 2, 3), seed=s)[0], layout) for s in range(B)])
    if layout == "channels_last":      # each batch channels last, stacked on dim 0
        xs = xs.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    w = torch.rand(B, 3, dtype=F64) + 0.5
    b = torch.randn(B, 3, dtype=F64)

    def f(x, w, b):
        return cbt.batch_norm(x, None, None, w, b, training=True)
    calls = Calls(monkeypatch)
    out = vmap(f)(xs, w, b)
    assert calls() == {"forward_batches": 1}
    alone = torch.stack([f(xs[i], w[i], b[i]) for i in range(B)])
    assert torch.equal(out, alone)

    calls = Calls(monkeypatch)
    gs = vmap(grad(lambda x, w, b: f(x, w, b).pow(2).sum(), argnums=(0, 1, 2)))(xs, w, b)
    assert calls() == {"forward_batches": 1, "backward_batches": 1}
    for i in range(B):
        gi = grad(lambda x, w, b: f(x, w, b).pow(2).sum(), argnums=(0, 1, 2))(xs[i], w[i], b[i])
        for a, c in zip(gs, gi):
            assert torch.equal(a[i], c)


def test_vmap_bits_do_not_depend_on_the_thread_count():
    xs = torch.randn(3, 64, 5, 7, dtype=torch.float32)
    t = torch.randn_like(xs)
    res = []
    for nt in (1, 2, 3):
        def f(x, nt=nt):
            return cbt.batch_norm(x, None, None, training=True, num_threads=nt)
        out, tan = vmap(lambda x, t: jvp(f, (x,), (t,)))(xs, t)
        g = vmap(grad(lambda x: f(x).pow(2).sum()))(xs)
        h = hessian(lambda x: f(x).pow(2).sum())(xs[0, :4, :2])
        res.append((out, tan, g, h))
    for other in res[1:]:
        for a, b in zip(res[0], other):
            assert torch.equal(a, b)


def test_jvp_kernel_bits_are_the_same_in_both_layouts():
    # each channel's sums run over its values in the same (n, s) order
    x = torch.randn(1, 6, 4, 5, 3, dtype=torch.float32)
    t = torch.randn_like(x)
    mean, invstd = x.double().mean((1, 3, 4)), x.double().var((1, 3, 4), unbiased=False).add(
        1e-5).rsqrt()
    w = torch.rand(1, 4)
    a = _func.jvp_stacked(t, None, None, x, w, mean, invstd, True, 2)
    cl = lambda v: v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # noqa: E731
    b = _func.jvp_stacked(cl(t), None, None, cl(x), w, mean, invstd, True, 2)
    assert torch.equal(a, b)


def test_vmap_in_dims_on_every_argument():
    B = 3
    x, w, b, rm, rv = data((4, 3, 5))
    xs = torch.stack([x * (i + 1) for i in range(B)])
    ws, bs = torch.stack([w + i for i in range(B)]), torch.stack([b - i for i in range(B)])
    rms, rvs = torch.stack([rm + i for i in range(B)]), torch.stack([rv + i for i in range(B)])
    for training in (True, False):
        for in_dims in [(0, None, None, None, None), (None, 0, 0, None, None),
                        (1, 0, None, 0, 0), (0, 0, 0, 0, 0), (None, None, None, 0, 0)]:
            args = [xs.movedim(0, 1) if in_dims[0] == 1 else xs if in_dims[0] == 0 else x,
                    ws if in_dims[1] == 0 else w, bs if in_dims[2] == 0 else b,
                    rms.clone() if in_dims[3] == 0 else rm.clone(),
                    rvs.clone() if in_dims[4] == 0 else rv.clone()]
            if training and in_dims[3] is None:
                # one running statistic for every mapped batch: raises (tested below)
                with pytest.raises(RuntimeError, match="running_mean is shared"):
                    vmap(lambda x, w, b, rm, rv: cbt.batch_norm(x, rm, rv, w, b, training=True),
                         in_dims=in_dims)(*args)
                continue

            def f(x, w, b, rm, rv, training=training):
                return cbt.batch_norm(x, rm, rv, w, b, training=training)
            got = vmap(f, in_dims=in_dims)(*args)
            pick = [(a.movedim(1, 0) if d == 1 else a) for a, d in zip(args, in_dims)]
            want = torch.stack([
                torch.nn.functional.batch_norm(
                    *(p[i] if d is not None else p for p, d in
                      zip([pick[0], pick[3].clone(), pick[4].clone(), pick[1], pick[2]],
                          [in_dims[0], in_dims[3], in_dims[4], in_dims[1], in_dims[2]])),
                    training=training) for i in range(B)])
            torch.testing.assert_close(got, want, **TOL)


# ------------------------------------------------------ running statistics

def ensemble(cls, B=3, seed=0, momentum=0.1):
    torch.manual_seed(seed)
    return [torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), cls(4, momentum=momentum),
                                torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(64, 2)).double()
            for _ in range(B)]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_vmapped_ensemble_trains_like_each_model_alone(momentum):
    # each model of the ensemble keeps its own running statistics and counter
    # (momentum None: each its own cumulative average; torch.nn raises there)
    models = ensemble(cbt.BatchNorm2d, momentum=momentum)
    for i, m in enumerate(models):      # counters apart: cumulative factors differ per model
        m[1].num_batches_tracked.fill_(2 * i)
    alone = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, x, y):
        return torch.nn.functional.mse_loss(functional_call(base, (p, b), (x,)), y)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(3, 8, 2, 6, 6, generator=gen, dtype=F64)
        y = torch.randn(3, 8, 2, generator=gen, dtype=F64)
        g = vmap(grad(loss))(params, buffers, x, y)
        with torch.no_grad():
            for k in params:
                params[k] -= 0.1 * g[k]
        for i, m in enumerate(alone):
            m.zero_grad()
            torch.nn.functional.mse_loss(m(x[i]), y[i]).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.1 * p.grad
    for i, m in enumerate(alone):
        for k, v in m.named_parameters():
            torch.testing.assert_close(params[k][i], v, rtol=1e-12, atol=1e-14)
        for k, v in m.named_buffers():
            torch.testing.assert_close(buffers[k][i], v, rtol=1e-12, atol=1e-14)
    assert buffers["1.num_batches_tracked"].tolist() == [3, 5, 7]
    if momentum is None:
        theirs = ensemble(torch.nn.BatchNorm2d, momentum=None)
        p, b = stack_module_state(theirs)
        tbase = copy.deepcopy(theirs[0]).to("meta")
        with pytest.raises(RuntimeError, match=r"\.item\(\)"):
            vmap(lambda p, b, x: functional_call(tbase, (p, b), (x,)))(p, b, x)


def test_shared_running_statistics_under_vmap_raise_naming_the_fix():
    m = cbt.BatchNorm1d(3, dtype=F64)
    before = copy.deepcopy(m.state_dict())
    xs = torch.randn(2, 4, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="running_mean is shared .*stack_module_state"):
        vmap(m)(xs)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval mode and track_running_stats=False need no update: they work
    m.eval()
    torch.testing.assert_close(vmap(m)(xs), torch.stack([m(x) for x in xs]), **TOL)


@pytest.mark.parametrize("transform", ["vjp", "jvp", "grad", "jacrev", "jacfwd", "hessian"])
def test_captured_running_statistics_are_updated_once(transform):
    # a module's own buffers (not passed into the transformed function):
    # updated once, as by one plain forward; torch.nn raises under vjp and jvp
    x = data((6, 3, 2, 2), seed=7)[0]
    for cls in (cbt.BatchNorm2d, torch.nn.BatchNorm2d):
        m = cls(3, dtype=F64)
        plain = copy.deepcopy(m)
        plain(x)
        def f(x, m=m):
            return m(x).pow(2).sum()
        run = {"vjp": lambda f=f: vjp(f, x), "jvp": lambda f=f: jvp(f, (x,), (x,)),
               "grad": lambda f=f: grad(f)(x), "jacrev": lambda f=f: jacrev(f)(x),
               "jacfwd": lambda f=f: jacfwd(f)(x),
               "hessian": lambda f=f: hessian(f)(x)}[transform]
        if cls is torch.nn.BatchNorm2d:
            if transform in ("vjp", "jvp"):
                with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
                    run()
            continue
        run()
        for (k, v), w in zip(m.named_buffers(), plain.buffers()):
            torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------ limits, eager

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_over_forward_is_the_hessian_and_third_derivatives_raise(training):
    x, w, b, rm, rv = data((4, 3, 2), seed=8)

    def f(x, w):
        return cbt.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training).sin().sum()
    ff = jacfwd(jacfwd(f, argnums=(0, 1)), argnums=(0, 1))(x, w)
    want = hessian(f, argnums=(0, 1))(x, w)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(ff[i][j], want[i][j], **TOL)
    for third in (jacrev(hessian(f)), jacfwd(jacfwd(jacfwd(f))), jacfwd(hessian(f))):
        with pytest.raises(NotImplementedError, match="third derivative"):
            third(x, w)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batched_gradients_of_eager_calls(layout):
    # autograd.grad(is_grads_batched=True) runs the backward under torch's
    # legacy vmap: equal to one backward per cotangent
    x, w, b, _, _ = data((4, 3, 2, 3), seed=9)
    x = fmt(x, layout).requires_grad_()
    w.requires_grad_()
    out = cbt.batch_norm(x, None, None, w, b, training=True)
    v = torch.randn(3, *out.shape, dtype=F64)
    got = torch.autograd.grad(out, (x, w), v, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        want = torch.autograd.grad(out, (x, w), v[i], retain_graph=True)
        for a, c in zip(got, want):
            torch.testing.assert_close(a[i], c, **TOL)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_every_mode(training):
    x, w, b, rm, rv = data((4, 3, 2), seed=10)
    inputs = tuple(t.clone().requires_grad_() for t in (x, w, b))

    def fn(x, w, b):
        return cbt.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True,
                                        check_fwd_over_rev=True)


def test_vmap_rule_moves_the_mapped_dimension_to_the_stack():
    # the rule itself, called with the mapped dimension of x at 1 and of the
    # weight at 1 (the drop-in's own calls reach it with dimension 0)
    xs = torch.randn(2, 3, 4, 3, 5, dtype=F64)       # (stack, B', N, C, S)
    ws = torch.rand(2, 3, 3, dtype=F64) + 0.5        # (stack, B', C)

    def f(x, w):
        return _func._Forward_apply(x, w, None, None, None, True, 1e-5, 0)[0]
    got = vmap(f, in_dims=(1, 1), out_dims=1)(xs, ws)
    for i in range(3):
        assert torch.equal(got[:, i], f(xs[:, i], ws[:, i]))


def test_torch_compile_and_transforms_compose_or_raise():
    # while torch.compile traces, the transforms run these functions on fake
    # tensors: they call the registered operators per batch (traceable)
    # instead of reading memory; a wrong value (uninitialised output) is what
    # reading the fake tensors' memory gave
    m = cbt.BatchNorm1d(3, dtype=F64, track_running_stats=False)
    xs = data((2, 4, 3), seed=12)[0].reshape(2, 4, 3) + torch.arange(2.0, dtype=F64)[:, None, None]
    want = vmap(m)(xs)
    try:
        torch.testing.assert_close(torch.compile(vmap(m))(xs), want, **TOL)
        torch.testing.assert_close(vmap(torch.compile(m))(xs), want, **TOL)

        def f(x):
            return m(x).pow(3).sum()
        torch.testing.assert_close(grad(lambda x: torch.compile(m)(x).pow(3).sum())(xs[0]),
                                   grad(f)(xs[0]), **TOL)
        # grad inside the compiled function: torch's error, as the docs say
        with pytest.raises(RuntimeError):
            torch.compile(grad(f))(xs[0])
    finally:
        torch._dynamo.reset()       # compiled frames under transforms confuse later compiles


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_running_statistics_are_not_differentiable_as_in_torch(training):
    # a gradient in them would be zero: torch raises, and so do we, word for word
    x, _, _, rm, rv = data((4, 3), seed=13)
    for fn in (cbt.batch_norm, torch.nn.functional.batch_norm):
        msgs = []
        for call in (lambda fn=fn: fn(x, rm.clone().requires_grad_(), rv.clone(),
                                      training=training),
                     lambda fn=fn: grad(lambda r: fn(x, r, rv.clone(), training=training).sum())(
                         rm.clone())):
            with pytest.raises(RuntimeError) as info:
                call()
            msgs.append(str(info.value))
        assert all("not differentiable with respect to argument 'running_mean'" in m
                   for m in msgs), msgs
