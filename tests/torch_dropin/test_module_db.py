"""PyTorch's own test material for the drop-ins run against them: BatchNorm1d/2d/3d,
LayerNorm, GroupNorm and InstanceNorm1d/2d/3d.

The ``module_db`` entries of ``torch.testing._internal.common_modules`` give
the constructor arguments and inputs PyTorch tests its own modules with, and
the error inputs with the exception type and message it expects. Each sample
is run through torch's module and ours (same constructor arguments, same
initial state), in train and eval mode, in float32 and float64, contiguous and
in the channels_last formats, and everything observable is compared: output
(values, dtype, memory format), input and parameter gradients, second
derivatives (gradgradcheck, as test_modules.py's test_gradgrad), running
statistics and the batch counter, state dict keys, repr.
"""
import copy
import io
import pickle

import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install cybatchnorm[torch] (tox -e torch runs these)")
pytest.importorskip("expecttest", reason="torch's test utilities need expecttest")
from raised import raised  # noqa: E402
from torch.testing._internal import common_modules  # noqa: E402

import cybatchnorm.torch as cbt  # noqa: E402

OURS = {torch.nn.BatchNorm1d: cbt.BatchNorm1d, torch.nn.BatchNorm2d: cbt.BatchNorm2d,
        torch.nn.BatchNorm3d: cbt.BatchNorm3d, torch.nn.LayerNorm: cbt.LayerNorm,
        torch.nn.GroupNorm: cbt.GroupNorm, torch.nn.InstanceNorm1d: cbt.InstanceNorm1d,
        torch.nn.InstanceNorm2d: cbt.InstanceNorm2d, torch.nn.InstanceNorm3d: cbt.InstanceNorm3d}
INFOS = [m for m in common_modules.module_db if m.module_cls in OURS]
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def test_module_db_has_the_eight_classes():
    assert sorted(m.module_cls.__name__ for m in INFOS) == [
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d",
        "InstanceNorm2d", "InstanceNorm3d", "LayerNorm"]


def samples(info, dtype, training, requires_grad=True):
    return info.module_inputs_func(info, device="cpu", dtype=dtype,
                                   requires_grad=requires_grad, training=training)


def build(info, sample, dtype, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(dtype)
    ours = OURS[info.module_cls](*args, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in theirs.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) + 0.5)
        for _, b in theirs.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=gen, dtype=dtype) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    theirs.train(training)
    ours.train(training)
    return ours, theirs


def assert_same_state(ours, theirs, dtype):
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        tol = TOL[dtype] if sd_t[k].is_floating_point() else {}
        torch.testing.assert_close(sd_o[k], sd_t[k], **tol, msg=k)


def run(module, x, dout):
    out = module(x)
    grads = {}
    if out.requires_grad:
        params = [p for p in module.parameters()]
        inputs = ([x] if x.requires_grad else []) + params
        g = torch.autograd.grad(out, inputs, dout, allow_unused=True)
        names = ["x"] * bool(x.requires_grad) + [n for n, _ in module.named_parameters()]
        grads = dict(zip(names, g))
    return out, grads


FORMATS = {2: [torch.contiguous_format], 3: [torch.contiguous_format],
           4: [torch.contiguous_format, torch.channels_last],
           5: [torch.contiguous_format, torch.channels_last_3d]}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", INFOS, ids=lambda m: m.module_cls.__name__)
def test_samples_match_torch(info, dtype, training):
    ran = 0
    for sample in samples(info, dtype, training):
        x0 = sample.forward_input.args[0]
        for fmt in FORMATS[x0.dim()]:
            ours, theirs = build(info, sample, dtype, training)
            # batch norm: torch's _BatchNorm (one class for every rank); the others: torch's class
            base = torch.nn.modules.batchnorm._BatchNorm \
                if issubclass(info.module_cls, torch.nn.modules.batchnorm._BatchNorm) \
                else info.module_cls
            assert isinstance(ours, base) and type(ours) is not info.module_cls
            assert repr(ours) == repr(theirs)
            for step in range(2):        # twice: the running statistics move
                x = x0.detach().clone().to(memory_format=fmt) + step
                xa = x.clone(memory_format=torch.preserve_format).requires_grad_()
                xb = x.clone(memory_format=torch.preserve_format).requires_grad_()
                # dout in x's format, as a following channels_last layer sends it
                dout = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(
                    step)).to(memory_format=fmt)
                oa, ga = run(ours, xa, dout)
                ob, gb = run(theirs, xb, dout)
                assert oa.dtype == ob.dtype and oa.shape == ob.shape
                assert oa.stride() == ob.stride(), (sample.desc, fmt)
                torch.testing.assert_close(oa, ob, **TOL[dtype])
                assert list(ga) == list(gb)
                for k in gb:
                    assert (ga[k] is None) == (gb[k] is None), k
                    if gb[k] is not None:
                        assert ga[k].stride() == gb[k].stride(), k
                        torch.testing.assert_close(ga[k], gb[k], **TOL[dtype], msg=k)
                assert_same_state(ours, theirs, dtype)
            ran += 1
    assert ran >= 6


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", INFOS, ids=lambda m: m.module_cls.__name__)
def test_samples_gradgrad(info, training):
    # test_modules.py's test_grad and test_gradgrad: float64, inputs and parameters
    for sample in samples(info, torch.float64, training):
        x = sample.forward_input.args[0]
        if x.numel() == 0:
            continue
        ours, _ = build(info, sample, torch.float64, training)
        params = list(ours.parameters())
        state = copy.deepcopy(ours.state_dict())

        def fn(x, *p, ours=ours, state=state):
            ours.load_state_dict(state)      # the same running statistics every call
            return torch.func.functional_call(ours, dict(zip(
                [n for n, _ in ours.named_parameters()], p)), (x,))
        inputs = (x.detach().clone().requires_grad_(),) + tuple(
            p.detach().clone().requires_grad_() for p in params)
        assert torch.autograd.gradcheck(fn, inputs, check_batched_grad=False)
        assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=False)


BATCH_NORMS = [m for m in INFOS
               if issubclass(m.module_cls, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", BATCH_NORMS, ids=lambda m: m.module_cls.__name__)
def test_batch_norm_samples_every_gradcheck_mode(info, training):
    # forward-mode AD, batched gradients (vmap over the backward), batched
    # forward gradients (vmap over forward mode), forward over reverse and
    # batched second derivatives, on every sample, in each of its formats
    ran = 0
    for sample in samples(info, torch.float64, training):
        x0 = sample.forward_input.args[0]
        if x0.numel() == 0:
            continue
        for fmt in FORMATS[x0.dim()]:
            ours, _ = build(info, sample, torch.float64, training)
            names = [n for n, _ in ours.named_parameters()]
            state = copy.deepcopy(ours.state_dict())

            def fn(x, *p, ours=ours, state=state, names=names):
                ours.load_state_dict(state)      # the same running statistics every call
                return torch.func.functional_call(ours, dict(zip(names, p)), (x,))
            inputs = (x0.detach().clone().to(memory_format=fmt).requires_grad_(),) + tuple(
                p.detach().clone().requires_grad_() for p in ours.parameters())
            assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True,
                                            check_batched_grad=True,
                                            check_batched_forward_grad=True)
            assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True,
                                                check_fwd_over_rev=True)
            ran += 1
    assert ran >= 3


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", BATCH_NORMS, ids=lambda m: m.module_cls.__name__)
def test_batch_norm_samples_under_transforms_match_torch(info, training):
    # grad (input and parameters), jvp, jacfwd and vmap through
    # functional_call on every sample against torch.nn's module where its
    # transforms work: eval, and training without running statistics (the
    # training output does not read them; ours keeps tracking its own, which
    # it updates under each transform, where torch.nn raises under jvp)
    ran = 0
    for sample in samples(info, torch.float64, training, requires_grad=False):
        x0 = sample.forward_input.args[0]
        if x0.numel() == 0:
            continue
        for fmt in FORMATS[x0.dim()]:
            ours, theirs = build(info, sample, torch.float64, training)
            theirs.track_running_stats = False
            x = x0.detach().clone().to(memory_format=fmt)
            res = []
            for m in (ours, theirs):
                p = {k: v.detach() for k, v in m.named_parameters()}

                def loss(x, p, m=m):
                    return torch.func.functional_call(m, p, (x,)).sin().sum()

                def out(x, m=m, p=p):
                    return torch.func.functional_call(m, p, (x,))
                res.append((torch.func.grad(loss, argnums=(0, 1))(x, p),
                            torch.func.jvp(out, (x,), (torch.cos(x),)),
                            torch.func.jacfwd(out)(x[:2]) if x.shape[0] > 2 else None))
                if not training:        # (training: a shared running statistic raises)
                    res[-1] += (torch.func.vmap(out)(torch.stack([x, 2 * x])),)
            torch.testing.assert_close(res[0], res[1], **TOL[torch.float64])
            ran += 1
    assert ran >= 1


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", [m for m in INFOS if m.module_error_inputs_func is not None],
                         ids=lambda m: m.module_cls.__name__)
def test_error_inputs_raise_as_torch(info, training):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=False, training=training)
    assert errors
    for err in errors:
        sample = err.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        if err.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(err.error_type, match=err.error_regex):
                OURS[info.module_cls](*args, **kwargs)
            continue
        ours = OURS[info.module_cls](*args, **kwargs)
        ours.train(training)
        before = copy.deepcopy(ours.state_dict())
        if training:
            with pytest.raises(err.error_type, match=err.error_regex):
                ours(*sample.forward_input.args)
        else:
            # eval mode: torch accepts eps = 0 and says "non-negative" for
            # eps < 0; whatever torch does, we do, word for word
            theirs = info.module_cls(*args, **kwargs).eval()
            x = sample.forward_input.args[0]
            assert raised(lambda: ours(x)) == raised(lambda: theirs(x))  # noqa: B023 (called at once)
        for k, v in ours.state_dict().items():
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("info", INFOS, ids=lambda m: m.module_cls.__name__)
def test_pickle_save_load_factory_kwargs(info):
    # test_modules.py's test_pickle, test_save_load and test_factory_kwargs
    for sample in samples(info, torch.float64, True, requires_grad=False):
        ours, theirs = build(info, sample, torch.float64, True)
        x = sample.forward_input.args[0]
        ours(x)
        clone = pickle.loads(pickle.dumps(ours))
        buf = io.BytesIO()
        torch.save(ours.state_dict(), buf)
        buf.seek(0)
        fresh = OURS[info.module_cls](*sample.constructor_input.args,
                                      **sample.constructor_input.kwargs).to(torch.float64)
        fresh.load_state_dict(torch.load(buf))
        for m in (clone, fresh):
            m.eval()
        ours.eval()
        if x.numel():
            torch.testing.assert_close(clone(x), ours(x))
            torch.testing.assert_close(fresh(x), ours(x))
        m = OURS[info.module_cls](*sample.constructor_input.args,
                                  **sample.constructor_input.kwargs, dtype=torch.float64,
                                  device="cpu")
        assert all(t.dtype == torch.float64 for t in m.parameters())
        assert all(t.dtype == (torch.long if n == "num_batches_tracked" else torch.float64)
                   for n, t in m.named_buffers())
