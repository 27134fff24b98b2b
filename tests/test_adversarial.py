"""The package against an adversarial user: each case here once crashed the
interpreter, gave a silently wrong result, left state half-changed or raised
from the wrong layer. Each must now give the right answer or a clear error
naming the argument, before anything changes."""
import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import graph, nodes
from cybatchnorm._threads import thread_cap

HUGE = 10**6        # threads: libgomp segfaulted at 65536 and exited at 40000

RNG = np.random.default_rng(20)
X = RNG.normal(1.0, 2.0, (16, 3))
G = RNG.uniform(0.5, 2.0, 3)
B = RNG.uniform(-1.0, 1.0, 3)
D = RNG.standard_normal((16, 3))


# ------------------------------------------------------------- thread counts

def _entry_points(nt):
    out, cache = bn.batchnorm_forward(X, G, B, num_threads=nt)
    values = graph.forward(X, G, B, num_threads=nt)
    count, mean, m2 = bn.batch_stats(X, num_threads=nt)
    gm, gv = mean, m2 / count
    ivar = 1.0 / np.sqrt(gv + 1e-5)
    sd, sdx = bn.backward_reduce(D, X, gm, num_threads=nt)
    layer = bn.BatchNorm(3, num_threads=nt)
    return {
        "batchnorm_forward": out,
        "batchnorm_backward": bn.batchnorm_backward(D, cache, num_threads=nt)[0],
        "batchnorm_backward_fused": bn.batchnorm_backward_fused(D, cache, num_threads=nt)[0],
        "graph.forward": values["out"],
        "graph.backward": graph.backward(D, cache, num_threads=nt)["dx"],
        "nodes.xhat_backward": nodes.xhat_backward(D, cache.xmu, cache.ivar,
                                                   num_threads=nt)[1],
        "merge_stats": bn.merge_stats([count], mean[None], m2[None], num_threads=nt)[1],
        "normalize": bn.normalize(X, gm, ivar, G, B, num_threads=nt),
        "backward_elementwise": bn.backward_elementwise(D, X, gm, ivar, G, sd, sdx, count,
                                                        num_threads=nt),
        "BatchNorm": layer.forward(X),
        "BatchNorm.backward": layer.backward(D),
        "check_gradients": np.array(bn.check_gradients(X[:6], G, B, num_threads=nt).dx),
    }


def test_huge_num_threads_is_capped_not_fatal():
    # the cap changes no bit: every result equals the one-thread result
    one, many = _entry_points(1), _entry_points(HUGE)
    for name in one:
        if name != "check_gradients":
            assert np.array_equal(one[name], many[name]), name
    assert bn.show_config(mode="dicts") is not None


def test_thread_cap_runs_up_to_the_floor_as_given():
    from cybatchnorm._validation import check_num_threads
    assert thread_cap() >= 8
    assert check_num_threads(7) == 7
    assert check_num_threads(HUGE) == thread_cap()


def test_huge_threads_in_a_fresh_process():
    # where libgomp died: a process of its own, so a crash fails only this test
    code = ("import numpy as np, cybatchnorm as bn; x = np.ones((64, 3)); x[0] = 2;"
            "o, c = bn.batchnorm_forward(x, np.ones(3), np.zeros(3), num_threads=65536);"
            "bn.batchnorm_backward_fused(x, c, num_threads=40000); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------- command line

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cybatchnorm", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_huge_threads():
    r = _cli("--threads", str(HUGE))
    assert r.returncode == 0, r.stderr
    assert f"{thread_cap()} thread(s)" in r.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "empty.npy").write_bytes(b"")
    np.savez(d / "two.npz", a=np.ones((4, 3)), b=np.ones(3))
    np.save(d / "x.npy", X)
    return d


@pytest.mark.parametrize("args, needle", [
    (["--input", "{d}/empty.npy"], "--input: "),
    (["--seed", "-1"], "--seed"),
    (["--input", "{d}/two.npz"], "--input: expected a .npy file"),
    (["--input", "{d}/x.npy", "--n", "5"], "--n: --input gives the data; drop --n"),
    (["--input", "{d}/x.npy", "--d", "5"], "--d: --input gives the data; drop --d"),
])
def test_cli_bad_input_is_one_line_naming_the_option(files, args, needle):
    r = _cli(*(a.format(d=files) for a in args))
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------- float32 over its whole range

@pytest.mark.parametrize("std", [1e-20, 1.0, 1e20, 1e25, 3e37])
def test_float32_gradients_over_the_whole_range(std):
    # every backward within a few float32 ulps of the float64 closed form,
    # where the textbook float32 factors (ivar**2, ivar**3) leave float32's range
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    import extremes
    errors = extremes.table(stds=(std,))[std]
    for name, err in errors.items():
        if name.startswith("torch.nn") or err is None:
            continue      # torch's own, for comparison; or values float32 cannot hold
        assert err < 1e-6, (name, err)


def test_float32_flagged_channel_leaves_the_others_bits():
    # one channel at std 1e25 takes the float64 rows; the others keep the
    # float32 rows' bits (as if it were not there)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    dout = rng.normal(size=(64, 4)).astype(np.float32)
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    wide = x.copy()
    wide[:, 2] *= np.float32(1e25)
    for data in (x, wide):
        _, cache = bn.batchnorm_forward(data, g, b, cache="minimal")
        dx = bn.batchnorm_backward_fused(dout, cache)[0]
        if data is x:
            ref = dx
    assert np.array_equal(dx[:, [0, 1, 3]], ref[:, [0, 1, 3]])


# ------------------------------------------------------------ copy and save

def _layer_states():
    for backward in ("fused", "staged"):
        layer = bn.BatchNorm(3, backward=backward)
        yield "fresh", layer
        layer = bn.BatchNorm(3, backward=backward)
        layer.forward(X)
        yield "between forward and backward", layer
        layer = bn.BatchNorm(3, backward=backward)
        layer.forward(X)
        layer.backward(D)
        yield "after backward", layer


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_layer_survives_copy_and_pickle(how):
    for when, layer in _layer_states():
        other = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
        for name in ("gamma", "beta", "running_mean", "running_var"):
            assert np.array_equal(getattr(layer, name), getattr(other, name)), (when, name)
        assert other.num_batches_tracked == layer.num_batches_tracked
        if layer._cache is not None:      # the restored layer's backward: the same bits
            assert np.array_equal(layer.backward(D), other.backward(D)), when
        assert np.array_equal(layer.forward(X), other.forward(X)), when


@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_cache_survives_copy_and_pickle(kind):
    _, cache = bn.batchnorm_forward(X, G, B, cache=kind)
    want = bn.batchnorm_backward_fused(D, cache)
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache)), copy.copy(cache)):
        for fn in (bn.batchnorm_backward_fused, bn.batchnorm_backward):
            got = fn(D, other)
            assert all(np.array_equal(a, b) for a, b in zip(fn(D, cache), got))
        assert np.array_equal(bn.batchnorm_backward_fused(D, other)[0], want[0])
        assert not other.mu.flags.writeable


def test_state_dict_round_trip_and_torch_names():
    layer = bn.BatchNorm(3)
    layer.forward(X)
    state = layer.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked"]
    other = bn.BatchNorm(3)
    other.load_state_dict(state)
    assert other.num_batches_tracked == 1
    assert np.array_equal(other.running_var, layer.running_var)
    state["running_var"][0] = 99.0      # a copy: the layer is not changed through it
    assert layer.running_var[0] != 99.0
    assert list(bn.BatchNorm(3, affine=False, track_running_stats=False).state_dict()) == []


@pytest.mark.parametrize("bad, err, needle", [
    (dict(running_var=np.ones(4)), ValueError, "running_var"),
    (dict(weight=[1.0, "a", 2.0]), TypeError, "weight"),
    (dict(num_batches_tracked=np.array(1.5)), ValueError, "num_batches_tracked"),
    (dict(extra=np.ones(3)), ValueError, "unexpected keys"),
])
def test_load_state_dict_checks_everything_before_loading(bad, err, needle):
    layer = bn.BatchNorm(3)
    layer.forward(X)
    state = layer.state_dict()
    state.update(bad)
    before = pickle.dumps(layer.state_dict())
    with pytest.raises(err, match=needle):
        layer.load_state_dict(state)
    assert pickle.dumps(layer.state_dict()) == before


# ----------------------------------------------------------- all or nothing

def _bad_states():
    yield ("running_var ints", lambda layer: setattr(layer, "running_var", np.ones(3, np.int64)),
           TypeError)
    yield ("running_mean short", lambda layer: setattr(layer, "running_mean", np.zeros(2)),
           ValueError)
    yield "running_mean list", lambda layer: setattr(layer, "running_mean", [0.0] * 3), TypeError
    yield "running_var read-only", lambda layer: layer.running_var.setflags(write=False), ValueError
    yield "momentum string", lambda layer: setattr(layer, "momentum", "0.1"), TypeError
    yield "momentum 2", lambda layer: setattr(layer, "momentum", 2.0), ValueError
    yield "gamma short", lambda layer: setattr(layer, "gamma", np.ones(2)), ValueError
    yield ("num_batches_tracked -1", lambda layer: setattr(layer, "num_batches_tracked", -1),
           ValueError)
    yield "eps 0", lambda layer: setattr(layer, "eps", 0.0), ValueError


@pytest.mark.parametrize("name, spoil, err", list(_bad_states()))
def test_a_refused_forward_changes_nothing(name, spoil, err):
    layer = bn.BatchNorm(3)
    layer.forward(X)
    spoil(layer)
    before = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else copy.copy(v))
              for k, v in vars(layer).items() if k != "_cache"}
    cache = layer._cache
    with pytest.raises((TypeError, ValueError)) as info:
        layer.forward(X)
    assert isinstance(info.value, err)
    for k, v in before.items():
        now = getattr(layer, k)
        assert type(now) is type(v) and (np.array_equal(now, v) if isinstance(v, np.ndarray)
                                         else now == v), (name, k)
    assert layer._cache is cache


def test_a_refused_input_changes_nothing():
    layer = bn.BatchNorm(3)
    for x in (np.ones((1, 3)), np.ones((4, 2)), np.array([["a"] * 3] * 4)):
        with pytest.raises((TypeError, ValueError)):
            layer.forward(x)
    assert layer.num_batches_tracked == 0
    assert np.array_equal(layer.running_var, np.ones(3))


# ------------------------------------------------------ errors at the boundary

@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_out_matrix_is_refused_naming_out():
    with pytest.raises(TypeError, match="^out: expected a numpy array"):
        bn.batchnorm_forward(X, G, B, out=np.matrix(np.zeros(X.shape)))
    _, cache = bn.batchnorm_forward(X, G, B)
    with pytest.raises(TypeError, match="^dx: expected a numpy array"):
        bn.batchnorm_backward_fused(D, cache, dx=np.ma.zeros(X.shape))


def test_channels_last_with_no_channels_is_channels_first_with_none():
    first = bn.batchnorm_forward(np.ones((4, 0, 5)), np.ones(0), np.zeros(0))[0]
    last, cache = bn.batchnorm_forward(np.ones((4, 5, 0)), np.ones(0), np.zeros(0), axis=-1)
    assert first.shape == (4, 0, 5) and last.shape == (4, 5, 0)
    assert bn.batchnorm_backward_fused(np.ones((4, 5, 0)), cache)[0].shape == (4, 5, 0)


@pytest.mark.parametrize("spoil", [
    lambda c: object.__setattr__(c, "mode", "eval"),
    lambda c: object.__setattr__(c, "eps", 1.0),
    lambda c: object.__setattr__(c, "kind", "full" if c.kind == "minimal" else "minimal"),
    lambda c: object.__setattr__(c, "ivar", c.ivar * 2),
    lambda c: object.__setattr__(c, "mu64", np.array(c.mu64)),
    lambda c: object.__setattr__(c, "_xhat" if c.kind == "full" else "x",
                                 np.array(c.xhat if c.kind == "full" else c.x)),
])
@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_a_cache_changed_after_the_forward_is_refused(spoil, kind):
    _, cache = bn.batchnorm_forward(X, G, B, cache=kind)
    spoil(cache)
    for fn in (bn.batchnorm_backward, bn.batchnorm_backward_fused):
        with pytest.raises(ValueError, match="^cache: "):
            fn(D, cache)


@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_a_cache_array_cannot_be_made_writable_directly(kind):
    _, cache = bn.batchnorm_forward(X, G, B, cache=kind)
    names = ("mu", "var", "sqrtvar", "ivar", "gamma", "beta", "mu64", "ivar64")
    for name in names + (("xmu", "xhat") if kind == "full" else ()):
        with pytest.raises(ValueError):
            getattr(cache, name).setflags(write=True)
