"""Turn a benchmark JSON (``python -m cybatchnorm bench --json FILE``) into the
table and the plot of the Performance page.

    python docs/scripts/perf_report.py BENCH.json OUTDIR

Writes OUTDIR/perf_table.md, OUTDIR/perf_machine.md, OUTDIR/perf_targets.md,
OUTDIR/perf_sweeps.md (the per-sweep table), OUTDIR/perf.svg and
OUTDIR/perf_dropin.md (the PyTorch drop-in's rows); with a
``torch_overhead.json`` beside BENCH.json (``python benchmarks/torch_overhead.py
--json FILE``), OUTDIR/perf_overhead.md too.
Nothing is typed in by hand: every number comes from the JSON.
"""
import json
import os
import sys

import matplotlib

from cybatchnorm.bench.report import target_rows

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _case(r):
    return "x".join(map(str, r["shape"]))


def table(results):
    """Two Markdown tables, narrow enough for the reading column: the fused
    path's time against the bounds (one row per case, dtype, thread count and
    output mode), then the layer against torch.nn and the staged backward
    against the fused one (one row per case, dtype and thread count)."""
    head = ["case", "dtype", "threads", "outputs", "fwd+bwd ms (min-max)", "5S ms", "8S ms",
            "/ 8S"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for mode in ("alloc", "passed"):
            sp = r["spread"]
            lo = sp[mode + "_fwd"]["min"] + sp[mode + "_bwd"]["min"]
            hi = sp[mode + "_fwd"]["max"] + sp[mode + "_bwd"]["max"]
            lines.append("| " + " | ".join([
                _case(r), r["dtype"], str(r["threads"]),
                "allocated" if mode == "alloc" else "passed in",
                f"{r[mode + '_total'] * 1e3:.2f} ({lo * 1e3:.2f}-{hi * 1e3:.2f})",
                f"{r['bound5'] * 1e3:.2f}", f"{r['bound'] * 1e3:.2f}",
                f"{r[mode + '_total'] / r['bound']:.2f}"]) + " |")
    have_torch = any("torch_module" in r for r in results)
    head = ["case", "dtype", "threads", "MiB", "layer ms"]
    if have_torch:
        head += ["torch.nn ms", "layer / torch.nn"]
    head += ["staged bwd ms", "staged / fused"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [_case(r), r["dtype"], str(r["threads"]), f"{r['mib']:.1f}",
               f"{r['layer'] * 1e3:.2f}"]
        if have_torch:
            t = r.get("torch_module")
            row += [f"{t * 1e3:.2f}", f"{r['layer'] / t:.2f}"] if t else ["-", "-"]
        row += [f"{r['staged_bwd'] * 1e3:.2f}", f"{r['staged_bwd'] / r['alloc_bwd']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def targets(results, sweeps=()):
    """Markdown list: each target of the benchmark (cybatchnorm.bench.report.TARGETS),
    checked against these measurements by the benchmark's own evaluator."""
    lines = []
    for title, limit, rows in target_rows(results, sweeps):
        if not rows:
            lines.append(f"- **{title} <= {limit}x**: no case measured")
            continue
        bad = [(v, c) for v, c in rows if v > limit]
        line = f"- **{title} <= {limit}x**: holds in {len(rows) - len(bad)} of {len(rows)}"
        if bad:
            line += "; misses: " + ", ".join(f"{c} {v:.2f}x" for v, c in bad)
        lines.append(line)
    return "\n".join(lines) + "\n"


def sweeps(rows):
    """Markdown table: each sweep of the kernels on one thread, in units of one
    read of x (``cybatchnorm.bench.sweep_table``)."""
    if not rows:
        return "*(no per-sweep table in the benchmark's JSON)*\n"
    have_torch = all("torch_forward" in r for r in rows)
    head = ["case", "dtype", "S (us)", "copy", "statistics", "normalize", "sums", "dx",
            "forward", "backward"] + (["torch fwd", "fwd / torch (min-max)"] if have_torch else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        S = r["read"]
        row = [_case(r), r["dtype"], f"{S * 1e6:.1f}"] + [
            f"{r[k] / S:.2f}" for k in ("copy", "statistics", "normalize", "sums", "dx",
                                        "forward", "backward")]
        if have_torch:
            row += [f"{r['torch_forward'] / S:.2f}",
                    f"{r['forward_torch']:.2f} ({r['forward_torch_min']:.2f}-"
                    f"{r['forward_torch_max']:.2f})"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def machine(meta):
    """One Markdown paragraph describing where the numbers were measured."""
    env = meta.get("environment", {})
    torch = meta.get("torch") or "not installed"
    omp = ", ".join(os.path.basename(o.get("filepath") or o.get("path") or "?")
                    for o in env.get("openmp_runtime", []))
    caches = ", ".join(f"{k} {v}" for k, v in env.get("caches", {}).items())
    where = meta.get('description') or meta['machine']
    return (f"Measured with cybatchnorm {meta['version']} on {where}"
            f" ({meta['cpus']} CPUs; caches {caches or 'unknown'}),"
            f" Python {env.get('python', '?')},"
            f" numpy {meta['numpy']}, torch {torch}, {env.get('simd', '?')} kernels, OpenMP runtime"
            f" {omp or 'unknown'}; {meta['repeats']} runs of every contender after a warm-up,"
            f" taken in turns; the table gives medians (and the fused path's min-max).\n")


def plot(results, path):
    """Ratios to torch and to the bound, all threads, both output modes."""
    top = max(r["threads"] for r in results)
    rows = [r for r in results if r["threads"] == top]
    labels = [f"{_case(r)} {r['dtype']}" for r in rows]
    have_torch = all("torch_module" in r for r in rows)
    panels = (["torch"] if have_torch else []) + ["bound"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, what in zip(axes[0], panels):
        if what == "torch":
            series = [("layer (BatchNorm) step", [r["layer"] / r["torch_module"] for r in rows])]
        else:
            series = [("outputs allocated", [r["alloc_total"] / r["bound"] for r in rows]),
                      ("outputs passed in", [r["passed_total"] / r["bound"] for r in rows])]
        width = 0.76 / len(series)
        for i, (label, vals) in enumerate(series):
            ax.bar([k + (i - (len(series) - 1) / 2) * width for k in range(len(rows))], vals,
                   width=width, label=label)
        target = 0.7 if what == "torch" else 0.9
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target}x")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
        ax.set_ylabel("training step / torch.nn's" if what == "torch"
                      else "fwd+bwd time / 8S bound")
        against = ('layer against torch.nn.BatchNorm1d/2d' if what == 'torch'
                   else 'fused path against the 8S bound')
        ax.set_title(f"{top} threads: {against}"
                     " (lower is better)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dropin(rows):
    """Markdown table of the drop-in's training step against torch.nn's (the
    benchmark's drop-in rows), with each case's target and whether it holds."""
    if not rows:
        return "*(this run has no drop-in rows: torch was not installed)*\n"
    nt = rows[0]["threads"]
    head = ["case", "layout", "dtype", "ours ms", "torch.nn ms", f"ratio, {nt} threads (wall)",
            "ratio, 1 thread (CPU time)", "target", "holds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r["ratio"] <= r["target"]
        lines.append("| " + " | ".join([
            _case(r), "channels_last" if r["format"] != "contiguous" else "contiguous",
            r["dtype"], f"{r['ours'] * 1e3:.3f}", f"{r['torch'] * 1e3:.3f}",
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
            f"{r['ratio_1thread']:.2f} ({r['ratio_1thread_min']:.2f}-{r['ratio_1thread_max']:.2f})",
            f"<= {r['target']:.2f}", "yes" if ok else "**no**"]) + " |")
    met = sum(r["ratio"] <= r["target"] for r in rows)
    met1 = sum(r["ratio_1thread"] <= r["target"] for r in rows)
    lines.append("")
    lines.append(f"The targets hold in {met} of {len(rows)} cases with {nt} threads "
                 f"(and in {met1} of {len(rows)} with one thread).")
    return "\n".join(lines) + "\n"


def overhead(data):
    """Markdown tables of where a small step's microseconds go
    (benchmarks/torch_overhead.py's JSON): the steps, each layer's cost, the pieces."""
    steps, pieces = data["steps"], data["pieces"]
    N, C = data["meta"]["shape"]
    ref = steps["torch.nn.BatchNorm1d"][0]
    lines = [f"| {N} x {C} float32 training step, 1 thread | us (median, min-max) | x torch.nn |",
             "|---|---|---|"]
    for name, (med, lo, hi) in steps.items():
        lines.append(f"| {name.strip()} | {med:.1f} ({lo:.1f}-{hi:.1f}) | {med / ref:.2f} |")
    lines += ["", "| what it costs, from the medians above | us |", "|---|---|"]
    for what, us in data["layers"]:
        lines.append(f"| {what} | {us:.1f} |")
    lines += ["", "| piece, timed alone | us per call (median, min-max) |", "|---|---|"]
    for name, (med, lo, hi) in pieces.items():
        lines.append(f"| {name} | {med:.2f} ({lo:.2f}-{hi:.2f}) |")
    return "\n".join(lines) + "\n"


def main(json_path, outdir):
    with open(json_path) as fh:
        data = json.load(fh)
    with open(os.path.join(outdir, "perf_table.md"), "w") as fh:
        fh.write(table(data["results"]))
    with open(os.path.join(outdir, "perf_machine.md"), "w") as fh:
        fh.write(machine(data["meta"]))
    with open(os.path.join(outdir, "perf_targets.md"), "w") as fh:
        fh.write(targets(data["results"], data.get("sweeps") or []))
    with open(os.path.join(outdir, "perf_sweeps.md"), "w") as fh:
        fh.write(sweeps(data.get("sweeps") or []))
    plot(data["results"], os.path.join(outdir, "perf.svg"))
    with open(os.path.join(outdir, "perf_dropin.md"), "w") as fh:
        fh.write(dropin(data.get("dropin") or []))
    over = os.path.join(os.path.dirname(json_path), "torch_overhead.json")
    if os.path.exists(over):
        with open(over) as fh:
            text = overhead(json.load(fh))
    else:
        text = "*(no torch_overhead.json beside the benchmark's JSON)*\n"
    with open(os.path.join(outdir, "perf_overhead.md"), "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
