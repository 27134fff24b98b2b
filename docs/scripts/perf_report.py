"""Turn a benchmark JSON (``python -m cybatchnorm bench --json FILE``) into the
table and the plot of the Performance page.

    python docs/scripts/perf_report.py BENCH.json OUTDIR

Writes OUTDIR/perf_table.md, OUTDIR/perf_machine.md, OUTDIR/perf_targets.md
and OUTDIR/perf.svg.
Nothing is typed in by hand: every number comes from the JSON.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _case(r):
    return "x".join(map(str, r["shape"]))


def table(results):
    """Markdown table: one row per case, dtype, thread count and output mode."""
    have_torch = any("torch_alloc_total" in r for r in results)
    head = ["case", "dtype", "threads", "outputs", "MiB", "fwd+bwd ms"]
    if have_torch:
        head += ["torch ms", "/ torch"]
    head += ["bound ms", "/ bound", "staged bwd ms", "numpy staged / staged", "staged / fused"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for mode in ("alloc", "passed"):
            row = [_case(r), r["dtype"], str(r["threads"]),
                   "allocated" if mode == "alloc" else "passed in", f"{r['mib']:.1f}",
                   f"{r[mode + '_total'] * 1e3:.2f}"]
            if have_torch:
                t = r.get(f"torch_{mode}_total")
                row += [f"{t * 1e3:.2f}", f"{r[mode + '_total'] / t:.2f}"] if t else ["-", "-"]
            row += [f"{r['bound'] * 1e3:.2f}", f"{r[mode + '_total'] / r['bound']:.2f}",
                    f"{r['staged_bwd'] * 1e3:.2f}",
                    f"{r['numpy_staged_bwd'] / r['staged_bwd']:.1f}",
                    f"{r['staged_bwd'] / r['alloc_bwd']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def targets(results):
    """Markdown list: each performance target of the project, checked
    against these measurements (all threads, fused path, both output modes)."""
    top = max(r["threads"] for r in results)
    allt = [r for r in results if r["threads"] == top]
    big = [r for r in allt if r["mib"] >= 16]
    name = lambda r, m="": f"{_case(r)} {r['dtype']}" + (f" ({m})" if m else "")
    checks = []
    if all("torch_alloc_total" in r for r in allt):
        rows = [(r, m, r[m + "_total"] / r[f"torch_{m}_total"]) for r in allt
                for m in ("alloc", "passed")]
        checks.append(("fwd+bwd at most 0.8x PyTorch's time, every case and dtype", rows, 0.8, "le"))
    rows = [(r, m, r[m + "_total"] / r["bound"]) for r in big for m in ("alloc", "passed")]
    checks.append(("fwd+bwd at most 1.25x the 8S bound, cases of 16 MiB or more", rows, 1.25, "le"))
    rows = [(r, "", r["numpy_staged_bwd"] / r["staged_bwd"]) for r in allt]
    checks.append(("staged backward at least 4x faster than numpy's staged backward", rows, 4.0, "ge"))
    rows = [(r, "", r["staged_bwd"] / r["alloc_bwd"]) for r in allt]
    checks.append(("staged backward at most 3x the fused backward", rows, 3.0, "le"))
    one = {(tuple(r["shape"]), r["dtype"]): r for r in results if r["threads"] == 1}
    if top > 1:
        rows = [(r, "", one[(tuple(r["shape"]), r["dtype"])]["passed_total"] / r["passed_total"])
                for r in big if (tuple(r["shape"]), r["dtype"]) in one]
        checks.append((f"1 -> {top} threads at least 1.8x faster, cases of 16 MiB or more",
                       rows, 1.8, "ge"))
    lines = []
    for title, rows, limit, how in checks:
        ok = [(r, m, v) for r, m, v in rows if (v <= limit if how == "le" else v >= limit)]
        bad = [(r, m, v) for r, m, v in rows if (r, m, v) not in ok]
        line = f"- **{title}**: holds in {len(ok)} of {len(rows)}"
        if bad:
            line += "; misses: " + ", ".join(f"{name(r, m)} {v:.2f}x" for r, m, v in bad)
        lines.append(line)
    return "\n".join(lines) + "\n"


def machine(meta):
    """One Markdown paragraph describing where the numbers were measured."""
    torch = meta.get("torch") or "not installed"
    return (f"Measured with cybatchnorm {meta['version']} on {meta.get('description') or meta['machine']}"
            f" ({meta['cpus']} CPUs), numpy {meta['numpy']}, torch {torch}, median of "
            f"{meta['repeats']} runs after a warm-up.\n")


def plot(results, path):
    """Ratios to torch and to the bound, all threads, both output modes."""
    top = max(r["threads"] for r in results)
    rows = [r for r in results if r["threads"] == top]
    labels = [f"{_case(r)}\n{r['dtype']}" for r in rows]
    have_torch = all("torch_alloc_total" in r for r in rows)
    panels = (["torch"] if have_torch else []) + ["bound"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, what in zip(axes[0], panels):
        for i, mode in enumerate(("alloc", "passed")):
            den = [r[f"torch_{mode}_total"] if what == "torch" else r["bound"] for r in rows]
            vals = [r[mode + "_total"] / d for r, d in zip(rows, den)]
            ax.bar([k + (i - 0.5) * 0.38 for k in range(len(rows))], vals, width=0.38,
                   label="outputs allocated" if mode == "alloc" else "outputs passed in")
        target = 0.8 if what == "torch" else 1.25
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target}x")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(f"fwd+bwd time / {'PyTorch' if what == 'torch' else '8S bound'}")
        ax.set_title(f"{top} threads: time relative to {'PyTorch' if what == 'torch' else 'the bound'}"
                     " (lower is better)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(json_path, outdir):
    with open(json_path) as fh:
        data = json.load(fh)
    with open(os.path.join(outdir, "perf_table.md"), "w") as fh:
        fh.write(table(data["results"]))
    with open(os.path.join(outdir, "perf_machine.md"), "w") as fh:
        fh.write(machine(data["meta"]))
    with open(os.path.join(outdir, "perf_targets.md"), "w") as fh:
        fh.write(targets(data["results"]))
    plot(data["results"], os.path.join(outdir, "perf.svg"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
