"""The eager fast path (``_fast._Fast``: one compiled call per direction over
the tensors' memory, a plan per input geometry) gives the registered
operators' bits, takes the right decisions when the geometry changes, and
the pooled outputs it returns behave as ordinary tensors."""
import io
import threading
from unittest import mock

import pytest

torch = pytest.importorskip("torch")

import cybatchnorm.memory as memory  # noqa: E402
import cybatchnorm.torch as cbt  # noqa: E402
from cybatchnorm.torch import _ops, _outputs  # noqa: E402

SHAPES = [(32, 16), (6, 5, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4)]


def _x(shape, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 2
    if channels_last and len(shape) == 4:
        x = x.to(memory_format=torch.channels_last)
    if channels_last and len(shape) == 5:
        x = x.to(memory_format=torch.channels_last_3d)
    return x


def _count_fast(monkeypatch):
    calls = {"forward": 0, "backward": 0}
    fwd, bwd = _ops._engine.forward_tensor, _ops._engine.backward_tensor

    def forward_tensor(*a):
        calls["forward"] += 1
        return fwd(*a)

    def backward_tensor(*a):
        calls["backward"] += 1
        return bwd(*a)
    monkeypatch.setattr(_ops._engine, "forward_tensor", forward_tensor)
    monkeypatch.setattr(_ops._engine, "backward_tensor", backward_tensor)
    return calls


def _reference(x, weight, bias, rm, rv, training, momentum, eps, dout):
    # the registered operators (what torch.compile and the dispatcher see),
    # the running statistics updated by the same rule
    out, mean, invstd, m2 = _ops.batch_norm_forward(x, weight, bias, rm, rv, training, eps, 0)
    if training and rm is not None:
        _ops.update_running_stats(rm, rv, mean, m2, x.numel() // x.shape[1], momentum)
    dx, dw, db = _ops.batch_norm_backward(dout, x, weight, mean, invstd, training, 0)
    return out, dx, dw, db


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_fast_path_gives_the_operators_bits(shape, dtype, channels_last, training,
                                                momentum, monkeypatch):
    calls = _count_fast(monkeypatch)
    C = shape[1]
    m = cbt.BatchNorm(C, momentum=momentum, dtype=dtype)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(-2, 3, C, dtype=dtype))
        m.bias.copy_(torch.linspace(1, -1, C, dtype=dtype))
        m.running_mean.copy_(torch.linspace(0.5, 1.5, C, dtype=dtype))
        m.running_var.copy_(torch.linspace(2, 3, C, dtype=dtype))
        m.num_batches_tracked.fill_(3)
    m.train(training)
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    x = _x(shape, dtype, channels_last).requires_grad_(True)
    dout = _x(shape, dtype, channels_last, seed=1)
    y = m(x)
    y.backward(dout)
    factor = (1.0 / 4 if momentum is None else momentum) if training else 0.0
    want = _reference(x.detach(), m.weight.detach(), m.bias.detach(), rm, rv, training,
                      factor, m.eps, dout)
    assert calls == {"forward": 1, "backward": 1}
    for got, ref in zip((y, x.grad, m.weight.grad, m.bias.grad), want):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert torch.equal(got, ref)
    assert y.stride() == x.stride()
    assert x.grad.stride() == x.stride()
    assert torch.equal(m.running_mean, rm) and torch.equal(m.running_var, rv)
    assert int(m.num_batches_tracked) == (4 if training else 3)


@pytest.mark.parametrize("affine,bias", [(False, True), (True, False)])
def test_missing_parameters_read_as_ones_and_zeros(affine, bias, monkeypatch):
    calls = _count_fast(monkeypatch)
    x = _x((8, 4, 3), torch.float64, False).requires_grad_(True)
    m = cbt.BatchNorm1d(4, affine=affine, bias=bias, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(4, affine=affine, bias=bias, dtype=torch.float64)
    dout = _x((8, 4, 3), torch.float64, False, seed=2)
    m(x).backward(dout)
    g = x.grad.clone()
    x.grad = None
    torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)
    ref(x).backward(dout)
    torch.testing.assert_close(g, x.grad, rtol=1e-10, atol=1e-12)
    assert calls["forward"] == 2


def test_a_new_geometry_makes_a_new_plan_and_a_bad_one_still_raises(monkeypatch):
    calls = _count_fast(monkeypatch)
    m = cbt.BatchNorm2d(3, dtype=torch.float64)
    for shape, cl in [((4, 3, 5, 5), False), ((6, 3, 5, 5), False), ((6, 3, 5, 5), True),
                      ((6, 3, 2, 9), True)]:
        x = _x(shape, torch.float64, cl)
        ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
        ref.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.running_var, ref.running_var, rtol=1e-12, atol=1e-15)
    assert calls["forward"] == 4
    # a float32 input to float64 parameters: torch's error, nothing changed
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="mixed dtype"):
        m(_x((6, 3, 5, 5), torch.float32, False))
    # a parameter replaced by one of the wrong size after a plan was made
    m(_x((4, 3, 5, 5), torch.float64, False))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 4"):
        m(_x((4, 3, 5, 5), torch.float64, False))
    for k, v in m.state_dict().items():
        if k != "weight":
            assert torch.equal(v, before[k]), k
    # the module moved to float32: a new plan, float32 results
    m = cbt.BatchNorm2d(3, dtype=torch.float64)
    m(_x((4, 3, 5, 5), torch.float64, False))
    m.float()
    y = m(_x((4, 3, 5, 5), torch.float32, False))
    assert y.dtype == torch.float32


def test_the_thread_count_follows_threadpool_limits(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []
    fwd = _ops._engine.forward_tensor

    def forward_tensor(*a):
        seen.append(a[-1])
        return fwd(*a)
    monkeypatch.setattr(_ops._engine, "forward_tensor", forward_tensor)
    m = cbt.BatchNorm1d(64)
    x = torch.randn(4096, 64)
    m(x)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        m(x)
    m(x)
    assert seen[1] == 1
    assert seen[0] == seen[2]


def test_strided_and_expanded_gradients_are_read_correctly():
    x = _x((16, 5, 3, 3), torch.float64, True).requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    m, ref = cbt.BatchNorm2d(5, dtype=torch.float64), torch.nn.BatchNorm2d(5, dtype=torch.float64)
    w = torch.randn(16, 5, 3, 3, dtype=torch.float64).transpose(0, 3)   # neither layout
    (m(x).transpose(0, 3) * w).sum().backward()
    (ref(ref_x).transpose(0, 3) * w).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    x.grad, ref_x.grad = None, None
    m(x).sum().backward()        # an expanded (stride 0) gradient
    ref(ref_x).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)


def test_create_graph_runs_the_differentiable_operator():
    x = _x((8, 3, 4), torch.float64, False).requires_grad_(True)
    m = cbt.BatchNorm1d(3, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: m(t), (x,))


# ------------------------------------------------------------ pooled outputs

BIG = (64, 8, 32, 32)      # 2 MiB of float32: above _outputs.MIN_BYTES


def test_an_output_kept_alive_is_never_overwritten(pool):
    m = cbt.BatchNorm2d(8)
    y1 = m(_x(BIG, torch.float32, False, seed=1))
    keep = y1.clone()
    view = y1[3:5]
    y2 = m(_x(BIG, torch.float32, False, seed=2))
    assert y2.data_ptr() != y1.data_ptr()
    del y1
    y3 = m(_x(BIG, torch.float32, False, seed=3))       # the view still holds y1's storage
    assert torch.equal(view, keep[3:5])
    assert y3.data_ptr() != view.data_ptr() - view.storage_offset() * 4
    del y2
    y4 = m(_x(BIG, torch.float32, False, seed=4))       # y2's storage, idle again, is reused
    assert _outputs.info()["storages"] >= 2
    assert torch.equal(view, keep[3:5])
    del y3, y4


def test_a_storage_is_reused_once_nothing_holds_it(pool):
    m = cbt.BatchNorm2d(8)
    x = _x(BIG, torch.float32, False)
    ptr = m(x).data_ptr()
    assert m(x).data_ptr() == ptr        # the first output died: its storage is lent again
    st = m(x).untyped_storage()          # a storage object alone holds it too
    assert m(x).data_ptr() != st.data_ptr()


def test_a_gradient_kept_by_autograd_is_never_overwritten(pool):
    m = cbt.BatchNorm2d(8)
    x = _x(BIG, torch.float32, False).requires_grad_(True)
    dout = _x(BIG, torch.float32, False, seed=5)
    m(x).backward(dout)          # x.grad may be dx itself, from the pool
    first = x.grad.clone()
    x2 = _x(BIG, torch.float32, False, seed=6).requires_grad_(True)
    m(x2).backward(dout)
    assert torch.equal(x.grad, first)
    # an output saved by a later operation survives its Python name
    y = m(x.detach())
    z = y * y
    del y
    want = 2 * m(x.detach()).detach()
    w = torch.ones_like(want, requires_grad=True)
    y = m(x.detach() * 1.0)
    assert torch.equal(y.detach(), want / 2)
    z2 = (y * w)
    del y
    grad, = torch.autograd.grad(z2.sum(), w)
    assert torch.equal(grad, want / 2)
    assert torch.equal(z, (want / 2) ** 2)


def test_pooled_outputs_are_ordinary_tensors(pool):
    m = cbt.BatchNorm2d(8)
    with torch.no_grad():        # (torch refuses to resize a tensor that requires grad)
        y = m(_x(BIG, torch.float32, False))
    keep = y.clone()
    y.add_(1)
    assert torch.equal(y, keep + 1)
    buf = io.BytesIO()
    torch.save(y, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), keep + 1)
    y.resize_(2, 3)
    assert y.shape == (2, 3)
    y.resize_(BIG[0] * 2, 8, 32, 32)       # larger than its storage: torch reallocates
    y.fill_(7)
    del y
    # an output resized larger goes back to the pool with its new size; the
    # next output of the old size is another storage and correct
    with torch.no_grad():
        z = m(_x(BIG, torch.float32, False))
    assert torch.equal(z, keep)


def test_the_pool_follows_the_memory_limit_and_release(pool):
    m = cbt.BatchNorm2d(8)
    x = _x(BIG, torch.float32, False)
    m(x)
    assert _outputs.info()["idle"] >= 2 << 20
    assert memory.release_pool() >= 2 << 20
    assert _outputs.info()["held"] == 0
    m(x)
    memory.set_pool_limit(0)
    assert _outputs.info()["held"] == 0
    y = m(x)
    assert _outputs.info()["held"] == 0        # limit 0: nothing kept
    assert torch.equal(y, m(x))


def test_two_threads_never_share_an_output(pool):
    xs = [_x(BIG, torch.float32, False, seed=s) for s in range(2)]
    want = [cbt.BatchNorm2d(8)(x) for x in xs]
    errors = []

    def run(i):
        m = cbt.BatchNorm2d(8, num_threads=1)
        kept = []
        for _ in range(20):
            kept.append(m(xs[i]))
            if len(kept) > 3:
                kept.pop(0)
            for y in kept:
                if not torch.equal(y, want[i]):
                    errors.append(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_the_small_step_takes_the_fast_path(monkeypatch):
    calls = _count_fast(monkeypatch)
    with mock.patch.object(_ops.EagerBatchNorm, "apply", side_effect=AssertionError("slow path")):
        x = torch.randn(32, 16, requires_grad=True)
        cbt.BatchNorm1d(16)(x).sum().backward()
        cbt.batch_norm(x, None, None, training=True).sum().backward()
    assert calls == {"forward": 2, "backward": 2}


def test_a_lent_storage_does_not_count_against_the_limit(pool):
    # as the numpy pool counts only returned buffers: with room for one idle
    # output, an output the caller keeps (here x.grad, dx itself) must not
    # push the next ones out of the pool
    memory.set_pool_limit(3 << 20)
    m = cbt.BatchNorm2d(8)
    x = _x(BIG, torch.float32, False)
    kept = m(x)
    y = m(x)
    del y
    assert _outputs.info()["idle"] == 2 << 20
    assert m(x).data_ptr() != kept.data_ptr()
    memory.set_pool_limit(1 << 20)          # below one output: the idle one is dropped
    assert _outputs.info()["idle"] == 0
