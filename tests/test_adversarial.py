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
from cybatchnorm import graph
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
        "graph.xhat_backward": graph.xhat_backward(D, cache.xmu, cache.ivar,
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
