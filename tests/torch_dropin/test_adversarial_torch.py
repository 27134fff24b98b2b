"""The drop-in against an adversarial user (see tests/test_adversarial.py):
running statistics bitwise torch.nn's, torch's errors for odd input, tracing
and scripting refused before anything changes, checkpoints that move."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import cybatchnorm as bn  # noqa: E402
import cybatchnorm.torch as cbt  # noqa: E402


def _exact_batches(dtype, C=5, steps=5, seed=0):
    # whole numbers, 32 rows: every batch statistic is exact in float32, so
    # torch's sums and ours agree and only the update's arithmetic is tested
    rng = np.random.default_rng(seed)
    return [rng.integers(-8, 9, (32, C)).astype(dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.1, 1.0, None, 0.3])
def test_running_statistics_bitwise_torch_nn(dtype, momentum):
    tdt = getattr(torch, dtype)
    for seed in range(5):
        ref = torch.nn.BatchNorm1d(5, momentum=momentum, dtype=tdt)
        ours = cbt.BatchNorm1d(5, momentum=momentum, dtype=tdt)
        layer = bn.BatchNorm(5, momentum=momentum, dtype=dtype)
        for x in _exact_batches(dtype, seed=seed):
            ref(torch.from_numpy(x))
            ours(torch.from_numpy(x))
            layer.forward(x)
        for name in ("running_mean", "running_var"):
            want = getattr(ref, name).numpy()
            assert getattr(ours, name).numpy().tobytes() == want.tobytes(), (seed, name)
            assert getattr(layer, name).tobytes() == want.tobytes(), (seed, name)


def _both(f_torch, f_ours):
    outcome = []
    for f in (f_torch, f_ours):
        try:
            v = f()
            outcome.append(("ok", tuple(v.shape)))
        except Exception as exc:      # noqa: BLE001 - the type is what is compared
            outcome.append((type(exc).__name__, str(exc)))
    return outcome


RM, RV = torch.zeros(3), torch.ones(3)
CASES = {
    "1-D input in eval": lambda f: f(torch.randn(3), RM, RV, training=False),
    "1-D input in training": lambda f: f(torch.randn(3), None, None, training=True),
    "empty 1-D with given stats": lambda f: f(torch.randn(0), torch.zeros(0), torch.ones(0),
                                              training=False),
    "empty 1-D in training": lambda f: f(torch.randn(0), None, None, training=True),
    "training not a bool": lambda f: f(torch.randn(4, 3), RM.clone(), RV.clone(),
                                       training="yes"),
    "momentum a 0-d tensor": lambda f: f(torch.randn(4, 3), RM.clone(), RV.clone(),
                                         training=True, momentum=torch.tensor(0.1)),
    "no channels with a weight": lambda f: f(torch.randn(4, 0), None, None, torch.ones(0),
                                             training=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_functional_errors_as_torch(case):
    got = _both(lambda: CASES[case](F.batch_norm), lambda: CASES[case](cbt.batch_norm))
    assert got[0] == got[1]


@pytest.mark.parametrize("training", [True, False])
def test_module_with_no_features_as_torch(training):
    got = _both(lambda: torch.nn.BatchNorm1d(0).train(training)(torch.randn(4, 0)),
                lambda: cbt.BatchNorm1d(0).train(training)(torch.randn(4, 0)))
    assert got[0] == got[1]


def _state(m):
    return [t.clone() for t in m.state_dict().values()]


@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_refused_before_anything_changes(training):
    m = cbt.BatchNorm2d(3).train(training)
    before = _state(m)
    with pytest.raises(NotImplementedError, match="TorchScript .torch.jit.trace."):
        torch.jit.trace(m, torch.randn(4, 3, 2, 2))
    assert all(torch.equal(a, b) for a, b in zip(before, _state(m)))
    with pytest.raises(NotImplementedError, match="TorchScript .torch.jit.trace."):
        torch.jit.trace(lambda x: cbt.batch_norm(x, None, None, training=True),
                        torch.randn(4, 3))


def test_jit_script_refused_naming_torchscript():
    with pytest.raises(NotImplementedError, match="TorchScript .torch.jit.script."):
        torch.jit.script(cbt.BatchNorm1d(3))
    with pytest.raises(NotImplementedError, match="TorchScript"):
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 3), cbt.BatchNorm1d(3)))


def test_checkpoint_moves_between_the_three_layers():
    x = _exact_batches("float32")[0]
    layer = bn.BatchNorm(5, dtype="float32")
    layer.gamma[:] = 2.0
    layer.forward(x)
    ref = torch.nn.BatchNorm1d(5)
    ref.load_state_dict({k: torch.as_tensor(v) for k, v in layer.state_dict().items()})
    ours = cbt.BatchNorm1d(5)
    ours.load_state_dict(ref.state_dict())
    back = bn.BatchNorm(5, dtype="float32")
    back.load_state_dict(ours.state_dict())
    for k, v in layer.state_dict().items():
        assert np.array_equal(back.state_dict()[k], v), k
        assert np.array_equal(ref.state_dict()[k].numpy(), v), k


def test_where_we_differ_from_torch_nn():
    # the rows of docs/torch.md's table "Where we differ from torch.nn"
    # 1. a refused batch leaves num_batches_tracked as it was (torch counts it)
    ref, ours = torch.nn.BatchNorm1d(3), cbt.BatchNorm1d(3)
    for m in (ref, ours):
        with pytest.raises(ValueError):
            m(torch.randn(1, 3))
    assert int(ref.num_batches_tracked) == 1 and int(ours.num_batches_tracked) == 0
    # 2. eps = nan is refused (torch computes NaN everywhere)
    x = torch.randn(4, 3)
    assert torch.isnan(F.batch_norm(x, None, None, training=True, eps=float("nan"))).all()
    with pytest.raises(ValueError, match="eps"):
        cbt.batch_norm(x, None, None, training=True, eps=float("nan"))
    # 3. float32 batch statistics are float64-accurate: on data far from zero
    # torch's float32 sums differ from them in the last bits
    x = torch.from_numpy(np.random.default_rng(0).normal(1000, 2, (4096, 8)).astype("float32"))
    ref, ours = torch.nn.BatchNorm1d(8, momentum=1.0), cbt.BatchNorm1d(8, momentum=1.0)
    ref(x)
    ours(x)
    exact = torch.from_numpy(x.double().mean(0).float().numpy())
    assert torch.equal(ours.running_mean, exact)
    assert (ref.running_mean - exact).abs().max() > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("training", [True, False])
def test_reduced_precision_at_least_as_close_as_torch_nn(dtype, training):
    # module_db samples, every output and gradient, against the float64
    # computation rounded to the dtype: ours never further than torch.nn's
    pytest.importorskip("expecttest", reason="torch's test utilities need expecttest")
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "benchmarks"))
    import reduced_precision
    torch.manual_seed(0)            # module_db draws its samples from torch's generator
    rows = reduced_precision.errors(getattr(torch, dtype), training)
    assert len(rows) > 20
    for name, k, ours, theirs in rows:
        assert ours <= theirs, (name, k, ours, theirs)


def _spoilers():
    yield ("running_var of ints",
           lambda m: setattr(m, "running_var", torch.ones(3, dtype=torch.int64)), None)
    yield "running_mean too long", lambda m: setattr(m, "running_mean", torch.zeros(4)), None
    yield ("weight float64",
           lambda m: setattr(m, "weight", torch.nn.Parameter(torch.ones(3, dtype=torch.float64))),
           None)
    yield "one value per channel", None, torch.randn(1, 3)
    yield "wrong channels", None, torch.randn(4, 2)
    yield "1-D input", None, torch.randn(3)
    yield "integer input", None, torch.ones(4, 3, dtype=torch.int64)
    yield "eps negative", lambda m: setattr(m, "eps", -1.0), None


_REFUSED = [(name, spoil, x, training) for name, spoil, x in _spoilers()
            for training in (True, False)
            if training or name != "one value per channel"]     # eval takes one row


@pytest.mark.parametrize("name, spoil, x, training", _REFUSED,
                         ids=[f"{r[0]}-{'train' if r[3] else 'eval'}" for r in _REFUSED])
def test_a_refused_drop_in_forward_changes_nothing(name, spoil, x, training):
    m = cbt.BatchNorm1d(3).train(training)
    m(torch.randn(8, 3))                    # some state to keep
    if spoil is not None:
        spoil(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)):
        m(torch.randn(8, 3) if x is None else x)
    after = m.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert v.dtype == after[k].dtype and torch.equal(after[k], v), (name, k)


def test_huge_num_threads_in_the_drop_in_is_capped_not_fatal():
    # libgomp segfaulted at 65536 threads: every way in caps the count, and
    # the cap changes no bit
    x = torch.randn(64, 3, 4, dtype=torch.float64, requires_grad=True)
    outs = []
    for nt in (1, 10**6):
        m = cbt.BatchNorm1d(3, dtype=torch.float64, num_threads=nt)
        out = m(x)
        (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
        f = cbt.batch_norm(x, None, None, training=True, num_threads=nt)
        outs.append((out.detach(), dx, f.detach(), m.running_var.clone()))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
