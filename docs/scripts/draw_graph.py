"""Draw the batch-norm computational graph from cybatchnorm.graph.NODES.

    python docs/scripts/draw_graph.py OUTDIR

Writes OUTDIR/graph.svg. Nothing about the graph is typed here: nodes, their
operations, inputs and shape kinds all come from NODES, so the picture cannot
drift from the code. Columns are topological depth; rows are shape kinds
(values shaped like x on top, per-channel (C,) values below, parameters and
constants at the bottom).
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from cybatchnorm.graph import NODES  # noqa: E402

ROW = {"full": 2.0, "channel": 1.0, "leaf": 0.0}
COLOR = {"full": "#dbe9f6", "channel": "#fde9c9", "leaf": "#e6e6e6"}
LEAF_KIND = {"x": "full"}
SPACING = 1.7   # column width, in box units   # x is shaped like the full values; the rest are parameters


def layout():
    """Position of every value: (column, row, kind, label)."""
    depth = {}
    pos = {}
    for n in NODES:
        for i in n.inputs:
            if i not in depth:      # a leaf: x, gamma, beta, eps
                depth[i] = 0
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    # leaves sit one column before their first consumer
    for n in NODES:
        for i in n.inputs:
            if i not in {m.name for m in NODES} and i not in pos:
                kind = LEAF_KIND.get(i, "leaf")
                pos[i] = (SPACING * (depth[n.name] - 1), ROW[kind], "leaf", i)
        pos[n.name] = (SPACING * depth[n.name], ROW[n.kind], n.kind, f"{n.name}\n{n.op}")
    return pos


def main(outdir):
    pos = layout()
    fig, ax = plt.subplots(figsize=(14, 4.2))
    w, h = 1.45, 0.52
    for name, (cx, cy, kind, label) in pos.items():
        ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h,
                                    boxstyle="round,pad=0.02", fc=COLOR[kind], ec="#333333"))
        ax.text(cx, cy, label, ha="center", va="center", fontsize=8,
                family="monospace")
    for n in NODES:
        x1, y1 = pos[n.name][:2]
        for i in n.inputs:
            x0, y0 = pos[i][:2]
            skip = y0 == y1 and x1 - x0 > SPACING   # same row, jumping over nodes
            ax.add_patch(FancyArrowPatch(
                (x0 + w / 2 * (1 if x1 > x0 else 0), y0 + (h / 2 if skip else 0)),
                (x1 - w / 2 * (1 if x1 > x0 else 0), y1 + (h / 2 if skip else 0)),
                connectionstyle="arc3,rad=-0.35" if skip else "arc3,rad=0",
                arrowstyle="-|>", mutation_scale=12, lw=1.1, color="#333333",
                shrinkA=2, shrinkB=2))
    for kind, label in (("full", "shape of x  (N, C, *spatial)"),
                        ("channel", "per channel  (C,)"),
                        ("leaf", "parameters and constants")):
        ax.text(min(p[0] for p in pos.values()) - 0.8, ROW[kind], label, ha="right", va="center", fontsize=9, style="italic")
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 3.4, max(xs) + 0.8)
    ax.set_ylim(-0.5, 3.3)
    ax.set_axis_off()
    ax.set_title("forward: left to right; backward: the same edges, right to left", fontsize=10)
    fig.tight_layout()
    path = os.path.join(outdir, "graph.svg")
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "."))
