"""Command line: ``python -m cybatchnorm`` runs the demo, the package's main job.

It normalizes a batch, walks the graph forward and backward node by node with
the compiled kernels, prints every node's value and gradient, checks the
gradients by centred finite differences and compares the staged backward with
the fused one.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
import os
import sys
from types import SimpleNamespace
from typing import IO, Any, NoReturn

import numpy as np

from . import graph
from ._validation import DEFAULT_EPS, check_num_threads, full
from ._version import __version__
from .api import batchnorm_backward, batchnorm_backward_fused, batchnorm_forward
from .bench import CASES, Interrupted, check_output_path
from .bench import run as run_bench
from .gradcheck import check_gradients

# staged and fused agree to rounding; these are the promised tolerances
AGREEMENT_TOL = {"float64": 1e-12, "float32": 1e-5}
GRADCHECK_TOL = 1e-6
GRADCHECK_MAX_VALUES = 512   # finite differences cost two forwards per value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:   # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int, what: str) -> Any:
    # an argparse type: an int >= minimum, refused with ``what`` was expected
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")


# the demo's options and their defaults; None in the parser, so that one given
# before ``bench`` (where it means nothing) is seen and refused
DEMO_DEFAULTS = {"n": 8, "d": 4, "dtype": None, "seed": 0, "threads": None, "input": None}


def program_name(argv0: str | None = None) -> str:
    """How the user called us: ``python -m cybatchnorm`` or the console script's name."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    base = os.path.basename(argv0)
    if base in ("__main__.py", "-m", "-c", ""):
        return "python -m cybatchnorm"
    return base


def build_parser(prog: str = "python -m cybatchnorm") -> argparse.ArgumentParser:
    """The argument parser of ``python -m cybatchnorm``."""
    p = _Parser(
        prog=prog,
        description="Batch norm forward and staged backward, node by node, on a "
                    "seeded batch (or your own), with a gradient check and the "
                    "staged-vs-fused agreement.",
    )
    p.add_argument("--version", action="version", version=f"cybatchnorm {__version__}")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="batch size N of the generated batch (default 8)")
    p.add_argument("--d", type=_positive_int, default=None,
                   help="number of features D of the generated batch (default 4)")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="computation dtype (default: float64, or the --input file's)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the generated batch, gamma, beta and dout (default 0)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="OpenMP threads (default: all cores, honouring OMP_NUM_THREADS)")
    p.add_argument("--input", metavar="FILE.npy", default=None,
                   help="use this batch, shape (N, D) or (N, C, *spatial), "
                        "instead of a generated one")
    sub = p.add_subparsers(dest="command", metavar="{bench}",
                           parser_class=_Parser,
                           description="without a command: the demo")
    b = sub.add_parser("bench", help="time forward/backward against numpy, PyTorch and "
                                     "the memory-bandwidth bound, side by side")
    b.add_argument("--cases", dest="bench_cases", default=",".join(CASES),
                   help="comma-separated shapes like 256x1024,32x64x56x56 "
                        f"(default: {','.join(CASES)}; with the default cases and torch "
                        "installed, the PyTorch drop-in's table and targets follow)")
    b.add_argument("--dtype", dest="bench_dtype", default="float32,float64",
                   help="float32, float64 or both, comma-separated (default both)")
    b.add_argument("--threads", dest="bench_threads", default="1,all",
                   help="comma-separated thread counts; 'all' means every core (default 1,all)")
    b.add_argument("--repeats", type=_positive_int, default=7,
                   help="timed runs per measurement, the median is reported (default 7)")
    b.add_argument("--json", metavar="FILE", default=None,
                   help="also write every measurement to FILE as JSON (checked before the run)")
    b.add_argument("--wide", action="store_true",
                   help="every column in the table (wider than 100 columns)")
    return p


def _items(text: str, option: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{option}: expected {what}, got {text!r}")
    return items


def _bench(args: argparse.Namespace) -> int:
    # everything is checked before the first case is timed
    dtypes = _items(args.bench_dtype, "--dtype", "float32 and/or float64")
    for d in dtypes:
        if d not in ("float32", "float64"):
            raise ValueError(f"--dtype: expected float32 and/or float64, got {d!r}")
    threads = []
    for t in _items(args.bench_threads, "--threads", "positive integers or 'all'"):
        if t == "all":
            threads.append(check_num_threads(None))
        else:
            try:
                threads.append(check_num_threads(int(t)))
            except ValueError:
                raise ValueError(
                    f"--threads: expected positive integers or 'all', got {t!r}") from None
    # run_bench parses every case before it prints or times anything; the
    # file is checked here too, so that an error names the option
    cases = _items(args.bench_cases, "--cases", "comma-separated shapes like 256x1024")
    check_output_path(args.json, "--json")
    results = run_bench(cases, dtypes, sorted(set(threads)), args.repeats, args.json,
                        wide=args.wide)
    if isinstance(results, Interrupted):
        return 130           # as a shell reports a program stopped by SIGINT
    return 0 if results else 1


def _summary(a: Any) -> str:
    a = np.asarray(a, dtype=np.float64)
    return f"mean {a.mean():+.3e}  std {a.std():.3e}"


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max(initial=0.0)
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def _load_batch(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, str]:
    rng = np.random.default_rng(args.seed)
    if args.input is None:
        x = rng.normal(loc=3.0, scale=2.0, size=(args.n, args.d))
        source = f"generated (seed {args.seed}, mean 3, std 2)"
    else:
        try:
            x = np.load(args.input, allow_pickle=False)
        except EOFError:
            raise ValueError(f"--input: {args.input!r} is empty, not a .npy file") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"--input: cannot read {args.input!r}: {exc}") from None
        if not isinstance(x, np.ndarray):
            x.close()        # an .npz archive: several arrays, which one is the batch?
            raise ValueError(f"--input: expected a .npy file holding one array, got an .npz "
                             f"archive ({args.input!r}); save the batch with np.save")
        source = f"from {args.input}"
    try:
        x3, shape, dt = full("x", x, np.dtype(args.dtype) if args.dtype else None)
    except (TypeError, ValueError) as exc:
        if args.input is None:
            raise
        raise type(exc)(f"--input: {exc}") from None
    x = x3.reshape(shape)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(dt)
    beta = rng.uniform(-1.0, 1.0, C).astype(dt)
    dout = rng.standard_normal(shape).astype(dt)
    return x, gamma, beta, dout, source


def demo(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the demo for parsed ``args``; return the exit status."""
    out = out or sys.stdout
    for k in ("n", "d"):
        # the file gives the shape: a size given beside it would be ignored
        if args.input is not None and getattr(args, k) is not None:
            raise ValueError(f"--{k}: --input gives the data; drop --{k}")
    for k, v in DEMO_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    x, gamma, beta, dout, source = _load_batch(args)
    nt = check_num_threads(args.threads)
    eps = DEFAULT_EPS
    stream = out

    def w(*s: object) -> None:
        print(*s, file=stream)

    # the textbook walk: one compiled kernel per node, forward then reverse
    values = graph.forward(x, gamma, beta, eps, num_threads=nt)
    saved = SimpleNamespace(shape=x.shape, **{k: v for k, v in values.items()})
    grads = graph.backward(dout, saved, num_threads=nt, keep=True)
    grads["dout"] = dout
    w(f"cybatchnorm demo: x {x.shape} {x.dtype}, {source}, {nt} thread(s)")
    w("")
    w(f"{'node':8} {'operation':16} {'shape':>12}   {'value':34} gradient")
    for name in ("x", "gamma", "beta") + tuple(n.name for n in graph.NODES):
        op = "input" if name in ("x", "gamma", "beta") else graph.node(name).op
        v = values[name]
        g = grads.get("d" + name)
        gtxt = f"d{name:8} {_summary(g)}" if g is not None else ""
        w(f"{name:8} {op:16} {str(v.shape):>12}   {_summary(v):34} {gtxt}")
    w("")
    w("where branches meet, gradients add:")
    for total, parts in (("dxmu", ("dxmu1", "dxmu2")), ("dx", ("dx1", "dx2"))):
        w(f"  {total} = {' + '.join(parts)}: " + "   ".join(
            f"{p} {_summary(grads[p])}" for p in parts))
    w("")

    # the public API on the same batch: staged and fused must agree
    _, cache = batchnorm_forward(x, gamma, beta, eps, num_threads=nt)
    staged = batchnorm_backward(dout, cache, num_threads=nt)
    fused = batchnorm_backward_fused(dout, cache, num_threads=nt)
    tol = AGREEMENT_TOL[x.dtype.name]
    agree = {k: _rel(f, s) for k, s, f in zip(("dx", "dgamma", "dbeta"), staged, fused)}
    ok_agree = max(agree.values()) <= tol
    w("staged vs fused backward (max |fused - staged| / max |staged|): "
      + ", ".join(f"{k} {v:.1e}" for k, v in agree.items())
      + f"  -> {'AGREE' if ok_agree else 'DISAGREE'} (tolerance {tol:g})")

    # centred differences in float64, on a slice when the batch is large
    xs, gs, bs, ds = x, gamma, beta, dout
    note = ""
    if x.size > GRADCHECK_MAX_VALUES:
        # a corner of the batch: enough rows for a meaningful variance
        limits = (16, 16) if x.ndim == 2 else (8, 4) + (4,) * (x.ndim - 2)
        corner = tuple(slice(0, k) for k in limits)
        xs, ds, gs, bs = x[corner], dout[corner], gamma[corner[1]], beta[corner[1]]
        note = f" on the corner x[{', '.join(f':{k}' for k in xs.shape)}]"
    err = check_gradients(xs.astype(np.float64), gs, bs, ds, num_threads=nt)
    ok_grad = err.passed(GRADCHECK_TOL)
    w(f"gradient check{note} (centred differences, float64): "
      f"dx {err.dx:.1e}, dgamma {err.dgamma:.1e}, dbeta {err.dbeta:.1e}"
      f"  -> {'PASS' if ok_grad else 'FAIL'} (tolerance {GRADCHECK_TOL:g})")
    return 0 if ok_agree and ok_grad else 1


def _refuse_demo_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # the demo's options mean nothing to bench: say where they go, never ignore them
    given = [k for k in DEMO_DEFAULTS if getattr(args, k) is not None]
    if args.command == "bench" and given:
        opt = "--" + given[0]
        hint = (f"; bench has its own {opt}: put it after 'bench'"
                if opt in ("--threads", "--dtype") else "")
        parser.error(f"{opt} is an option of the demo, not of bench{hint}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m cybatchnorm`` and of the ``cybatchnorm``
    console script; returns the exit status."""
    prog = prog or program_name()
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        if args.command == "bench":
            _refuse_demo_options(parser, args)
            status = _bench(args)
        else:
            status = demo(args)
        sys.stdout.flush()     # here, where a closed pipe is handled, not at exit
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except (TypeError, ValueError, MemoryError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _closed_pipe() -> int:
    # the reader went away (``| head``): stop quietly, as Unix tools do. Point
    # stdout at /dev/null so the interpreter's final flush cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
