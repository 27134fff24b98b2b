"""Batch norm under each torch.func transform: what runs, and how far from the reference.

``python benchmarks/torch_func.py`` prints, per transform of a float64 BatchNorm2d
(4 vmapped batches of (8, 3, 4, 4) where the transform maps, training and eval),
the compiled entry points one call of the transform runs (counted by wrapping
``cybatchnorm._engine``'s), and the largest absolute difference from torch.nn's
module under the same transform: training without running statistics (where
torch.nn's transforms work) and eval with them. Where torch.nn's result is
wrong (second derivatives in training: jacrev(jacfwd(...)), the Hessian's
x-weight block, jacfwd(jacfwd(...))), the reference is its autograd Hessian
or centred differences instead, and the line says so.

``python benchmarks/torch_func.py --time [rounds]`` times ``vmap(grad(...))`` of a
float32 BatchNorm2d training step over 8 stacked batches of (16, 32, 8, 8) — ours, torch.nn's,
and ours called batch by batch in a Python loop — interleaved, median of the rounds
[min-max of the per-round ratios], one thread (thread CPU time) and all threads (wall).
"""
from collections import Counter
import statistics
import sys
import time

import torch
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

from cybatchnorm import _engine
import cybatchnorm.torch as cbt

F64 = torch.float64
ENTRIES = ("forward_batches", "backward_batches", "double_backward_batches", "jvp_batches",
           "forward_tensor", "backward_tensor")
calls: Counter = Counter()


def count(name):
    real = getattr(_engine, name)

    def counted(*a, **k):
        calls[name] += 1
        return real(*a, **k)
    setattr(_engine, name, counted)


def pair(training):
    kw = dict(dtype=F64, track_running_stats=not training)
    theirs, ours = torch.nn.BatchNorm2d(3, **kw), cbt.BatchNorm2d(3, **kw)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        theirs.weight.copy_(torch.rand(3, generator=gen, dtype=F64) + 0.5)
        theirs.bias.copy_(torch.randn(3, generator=gen, dtype=F64))
        if not training:
            theirs.running_mean.copy_(torch.randn(3, generator=gen, dtype=F64))
            theirs.running_var.copy_(torch.rand(3, generator=gen, dtype=F64) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    ours.train(training)
    theirs.train(training)
    return ours, theirs


def cases(m, x, xs, t):
    p = {k: v.detach() for k, v in m.named_parameters()}

    def loss(x, p=p):
        return functional_call(m, p, (x,)).sin().sum()

    def lossp(p):
        return functional_call(m, p, (x,)).sin().sum()

    def out(x):
        return m(x).sin()

    def fwad():
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            return fwAD.unpack_dual(m(fwAD.make_dual(x, t))).tangent.clone()
    return {
        "grad": lambda: grad(loss)(x),
        "grad (parameters)": lambda: grad(lossp)(p),
        "vjp": lambda: vjp(out, x)[1](torch.cos(x))[0],
        "jacrev": lambda: jacrev(out)(x[:2, :, :2]),
        "jvp": lambda: jvp(out, (x,), (t,))[1],
        "jacfwd": lambda: jacfwd(out)(x[:2, :, :2]),
        "forward_ad dual": fwad,
        "hessian": lambda: hessian(loss)(x[:2, :, :2]),
        "hessian (x, weight)": lambda: torch.cat([
            h.flatten() for row in hessian(lambda x, w: functional_call(
                m, {"weight": w, "bias": p["bias"]}, (x,)).sin().sum(), argnums=(0, 1))(
                x[:2, :, :2], p["weight"]) for h in row]),
        "jacfwd(jacrev)": lambda: jacfwd(jacrev(loss))(x[:2, :, :2]),
        "jacrev(jacfwd)": lambda: jacrev(jacfwd(loss))(x[:2, :, :2]),
        "jacfwd(jacfwd)": lambda: jacfwd(jacfwd(loss))(x[:2, :, :2]),
        "vmap": lambda: vmap(m)(xs),
        "vmap(grad)": lambda: vmap(grad(loss))(xs),
        "vmap(jvp)": lambda: vmap(lambda x, t: jvp(out, (x,), (t,))[1])(xs, torch.cos(xs)),
    }


def fd_error(module, H, x, h=1e-5):
    # |H t - (grad(x + h t) - grad(x - h t)) / 2h| for a direction t, on x[:2, :, :2]
    x = x[:2, :, :2]
    t = torch.cos(x)

    def g(x):
        return grad(lambda x: functional_call(module, dict(module.named_parameters()),
                                              (x,)).sin().sum())(x)
    fd = (g(x + h * t) - g(x - h * t)) / (2 * h)
    return float((torch.einsum("abcdefgh,efgh->abcd", H, t) - fd).detach().abs().max())


def autograd_hessian_xw(theirs, x):
    # torch.nn's (x, weight) Hessian built by autograd (right where its torch.func one is not)
    b = theirs.bias.detach()
    h = torch.autograd.functional.hessian(
        lambda x, w: torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
        .sin().sum(), (x, theirs.weight.detach()))
    return torch.cat([t.flatten() for row in h for t in row])


def flat(r):
    # one tensor of a result (a tensor, a dict or a tuple of them)
    if isinstance(r, dict):
        r = list(r.values())
    if isinstance(r, (tuple, list)):
        return torch.cat([flat(v) for v in r])
    return r.detach().flatten()


def main():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 4, 4, generator=gen, dtype=F64)
    xs = torch.randn(4, 8, 3, 4, 4, generator=gen, dtype=F64)
    t = torch.randn(8, 3, 4, 4, generator=gen, dtype=F64)
    for name in ENTRIES:
        count(name)
    out = sys.stdout
    out.write(f"torch {torch.__version__}; x (8, 3, 4, 4) float64, vmap over 4 such batches\n")
    out.write(f" {'transform':22s} {'mode':5s} {'compiled calls per transform call':52s} "
              "largest |ours - reference|\n")
    for training in (True, False):
        ours, theirs = pair(training)
        mine, ref = cases(ours, x, xs, t), cases(theirs, x, xs, t)
        for name in mine:
            calls.clear()
            got = mine[name]()
            ran = ", ".join(f"{k} x{v}" for k, v in sorted(calls.items())) or "-"
            note = "torch.nn"
            if training and name in ("jacrev(jacfwd)", "jacfwd(jacfwd)"):
                want = mine["hessian"]()
                wrong = float((flat(ref[name]()) - flat(want)).abs().max())
                note = (f"our hessian (torch.nn's differs by {wrong:.1e}); H t against "
                        f"centred differences of the gradient: {fd_error(ours, got, x):.1e}")
            elif training and name == "hessian (x, weight)":
                want = autograd_hessian_xw(theirs, x[:2, :, :2])
                wrong = float((flat(ref[name]()) - flat(want)).abs().max())
                note = f"torch.nn's autograd (its torch.func one differs by {wrong:.1e})"
            else:
                want = ref[name]()
            err = float((flat(got) - flat(want)).abs().max())
            out.write(f" {name:22s} {'train' if training else 'eval':5s} {ran:52s} "
                      f"{err:.1e} vs {note}\n")


def timing(rounds):
    B, shape = 8, (16, 32, 8, 8)
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(B, *shape, generator=gen)
    mods = {"ours": cbt.BatchNorm2d(32, track_running_stats=False),
            "torch.nn": torch.nn.BatchNorm2d(32, track_running_stats=False)}

    def step(m):
        p = dict(m.named_parameters())
        return lambda: vmap(grad(lambda p, x: functional_call(m, p, (x,)).square().sum()),
                            in_dims=(None, 0))(p, xs)

    def loop(m=mods["ours"]):
        p = dict(m.named_parameters())
        f = grad(lambda p, x: functional_call(m, p, (x,)).square().sum())
        return lambda: [f(p, x) for x in xs]
    runs = {"ours": step(mods["ours"]), "torch.nn": step(mods["torch.nn"]), "ours, loop": loop()}
    out = sys.stdout
    out.write(f"vmap(grad) of a training step, {B} batches of {shape} float32, "
              f"{rounds} rounds\n")
    modes = ((1, time.thread_time, "1 thread, thread CPU time"),
             (torch.get_num_threads(), time.perf_counter, "all threads, wall"))
    for threads, clock, label in modes:
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        for m in mods.values():
            m.num_threads = threads if isinstance(m, cbt.BatchNorm2d) else None
        times = {k: [] for k in runs}
        for _ in range(rounds):
            for k, f in runs.items():         # interleaved
                f()
                t0 = clock()
                for _ in range(5):
                    f()
                times[k].append((clock() - t0) / 5)
        torch.set_num_threads(prev)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k in ("torch.nn", "ours, loop"):
            ratios = [a / b for a, b in zip(times["ours"], times[k])]
            out.write(f" {label:28s} ours {med['ours'] * 1e3:7.3f} ms  {k:10s} "
                      f"{med[k] * 1e3:7.3f} ms  ours/{k} {statistics.median(ratios):.2f} "
                      f"[{min(ratios):.2f}-{max(ratios):.2f}]\n")


if __name__ == "__main__":
    if "--time" in sys.argv:
        args = [a for a in sys.argv[1:] if a != "--time"]
        timing(int(args[0]) if args else 15)
    else:
        main()
