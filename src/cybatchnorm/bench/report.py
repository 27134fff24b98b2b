"""The benchmark's report: tables, targets and the lines around them.

Formats what :mod:`cybatchnorm.bench` measured: the summary table (at most
100 columns unless wide), the per-sweep table in units of one read of x, the
targets with every case's ratio (:func:`target_rows`, which the performance
page reads too) and a printer that wraps report lines at :data:`WIDTH`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import textwrap
from typing import Any

__all__ = ["RESIDENT", "SWEEP_COLUMNS", "TARGETS", "WIDTH", "case_name", "format_sweeps",
           "format_table", "format_targets", "printer", "target_rows", "targets_met"]


def case_name(r: Any) -> str:
    """A result's shape as the command line spells it: ``"256x1024"``."""
    return "x".join(map(str, r["shape"]))


# the columns of the default table; format_table(wide=True) shows every one of _columns
_NARROW = ("case", "dtype", "thr", "out", "f+b", "layer", "staged", "torch", "8S", "/8S",
           "lay/tm", "stg/fus")


def _columns(r: Any, mode: str) -> list[tuple[str, int, Any]]:
    # (header, width, value) of every column for result r in mode "alloc" or "passed"
    tm = r.get("torch_module")
    nan = float("nan")
    total = r[mode + "_total"]
    lo = r["spread"][mode + "_fwd"]["min"] + r["spread"][mode + "_bwd"]["min"]
    hi = r["spread"][mode + "_fwd"]["max"] + r["spread"][mode + "_bwd"]["max"]
    return [
        ("case", 12, case_name(r)), ("dtype", 7, r["dtype"]), ("thr", 3, r["threads"]),
        ("out", 6, mode), ("MiB", 6, f"{r['mib']:.1f}"),
        ("f+b", 7, f"{total * 1e3:.2f}"), ("min-max", 13, f"{lo * 1e3:.2f}-{hi * 1e3:.2f}"),
        ("layer", 7, f"{r['layer'] * 1e3:.2f}"), ("staged", 7, f"{r['staged_bwd'] * 1e3:.2f}"),
        ("torch", 7, f"{tm * 1e3 if tm else nan:.2f}"),
        ("5S", 6, f"{r['bound5'] * 1e3:.2f}"), ("8S", 6, f"{r['bound'] * 1e3:.2f}"),
        ("/5S", 5, f"{total / r['bound5']:.2f}"), ("/8S", 5, f"{total / r['bound']:.2f}"),
        ("lay/tm", 6, f"{r['layer'] / tm if tm else nan:.2f}"),
        ("stg/fus", 7, f"{r['staged_bwd'] / r['alloc_bwd']:.2f}"),
    ]


def format_table(results: Any, wide: bool = False) -> str:
    """The summary table: medians in ms and the ratios the targets are about.
    At most 100 columns; ``wide=True`` adds the size, the fused path's
    min-max, the 5S bound and the ratio to it."""
    lines: list[str] = []
    for r in results:
        for mode in ("alloc", "passed"):
            cols = [c for c in _columns(r, mode) if wide or c[0] in _NARROW]
            if not lines:
                head = " ".join(f"{name:>{w}}" for name, w, _ in cols)
                lines += [head, "-" * len(head)]
            lines.append(" ".join(f"{str(v):>{w}}" for _, w, v in cols))
    return "\n".join(lines)


SWEEP_COLUMNS = ("copy", "statistics", "normalize", "sums", "dx", "forward", "backward")


def format_sweeps(rows: Sequence[dict[str, Any]]) -> str:
    """The per-sweep table: each sweep's time in S, the time of one read of x."""
    names = ("copy", "stats", "norm", "sums", "dx", "fwd", "bwd")
    head = (f"  {'case':>11} {'dtype':>7} {'S us':>7} " + " ".join(f"{c:>5}" for c in names)
            + f" {'torch':>5} {'f/torch':>7} {'[min-max]':>11}")
    lines = [head]
    for r in rows:
        S = r["read"]
        line = (f"  {case_name(r):>11} {r['dtype']:>7} {S * 1e6:7.1f} "
                + " ".join(f"{r[c] / S:5.2f}" for c in SWEEP_COLUMNS))
        if "torch_forward" in r:
            line += (f" {r['torch_forward'] / S:5.2f} {r['forward_torch']:7.2f}"
                     f" [{r['forward_torch_min']:4.2f}-{r['forward_torch_max']:4.2f}]")
        lines.append(line)
    return "\n".join(lines)


TARGETS = (("layer f+b / torch.nn module f+b", 0.7), ("allocating / passed-in f+b", 1.2),
           ("staged bwd / fused bwd (>= 16 MiB)", 2.0), ("channels-last / (N, C) layout", 1.1),
           ("passed-in f+b / 8S bound (>= 16 MiB)", 0.9),
           ("1 thr: fwd / torch fwd (resident f32)", 1.1),
           ("1 thr: fwd / torch fwd (resident f64)", 0.8))


# the cache-resident cases of the forward targets, read from the per-sweep
# table (one thread, thread CPU time: the kernels against torch.batch_norm)
RESIDENT = ([256, 1024], [4096, 1024])


def target_rows(results: Any, sweeps: Sequence[dict[str, Any]] = ()
                ) -> list[tuple[str, float, list[tuple[float, str]]]]:
    """Every target's measured ratios, on the runs with the most threads
    (the forward targets: on ``sweeps``, the per-sweep table's one-thread
    rows): ``[(name, limit, [(ratio, case), ...]), ...]``. The benchmark's
    summary and the performance page both read this."""
    top = max(r["threads"] for r in results)
    rows: dict[str, list[tuple[float, str]]] = {name: [] for name, _ in TARGETS}
    for r in results:
        if r["threads"] != top:
            continue
        case = f"{case_name(r)} {r['dtype']}"
        if "torch_module" in r:
            rows[TARGETS[0][0]].append((r["layer"] / r["torch_module"], case))
        rows[TARGETS[1][0]].append((r["alloc_total"] / r["passed_total"], case))
        if r["mib"] >= 16:
            rows[TARGETS[2][0]].append((r["staged_bwd"] / r["alloc_bwd"], case))
            rows[TARGETS[4][0]].append((r["passed_total"] / r["bound"], case))
        if "channels_last" in r:
            rows[TARGETS[3][0]].append((r["channels_last"] / r["alloc_total"], case))
    for r in sweeps:
        if "forward_torch" in r and list(r["shape"]) in RESIDENT:
            row = TARGETS[5 if r["dtype"] == "float32" else 6][0]
            rows[row].append((r["forward_torch"], f"{case_name(r)} {r['dtype']}"))
    return [(name, limit, rows[name]) for name, limit in TARGETS]


def format_targets(results: Any, sweeps: Sequence[dict[str, Any]] = ()) -> str:
    """One line per target: the worst case's ratio, how many cases meet it,
    and which miss."""
    lines = ["targets (all threads unless marked '1 thr'; every case must meet its target):"]
    for name, target, rows in target_rows(results, sweeps):
        if not rows:
            lines.append(f"  {name:38s} <= {target:.2f}x: no case measured")
            continue
        worst, case = max(rows)
        ok = sum(v <= target for v, _ in rows)
        miss = ", ".join(f"{c} {v:.2f}x" for v, c in rows if v > target)
        lines.append(f"  {name:38s} <= {target:.2f}x: {ok} of {len(rows)} meet it; worst "
                     f"{worst:5.2f}x ({case})" + (f"; misses: {miss}" if miss else ""))
    return "\n".join(lines)


WIDTH = 100   # the report fits a 100-column terminal (the --wide table excepted)


def printer(file: Any) -> Callable[..., None]:
    """A function printing one report line to ``file``, wrapped at WIDTH with
    its continuation indented (``wrap=False``: printed whole, as the tables
    are, whose rows are WIDTH or less unless --wide)."""
    def w(text: str, wrap: bool = True) -> None:
        for line in text.split("\n"):
            if wrap and len(line) > WIDTH:
                indent = " " * (len(line) - len(line.lstrip()) + 4)
                line = textwrap.fill(line, WIDTH, subsequent_indent=indent,
                                     break_on_hyphens=False)
            print(line, file=file, flush=True)
    return w


def targets_met(what: str, rows: list[dict[str, Any]]) -> str:
    """The summary line of a table of :func:`timing.ratio_record` rows: how
    many meet their "target", every core and one thread."""
    n = len(rows)
    return (f"  {what} targets met: {sum(r['ratio'] <= r['target'] for r in rows)} of {n} (all "
            f"threads); with one thread: {sum(r['ratio_1thread'] <= r['target'] for r in rows)} "
            f"of {n}")
