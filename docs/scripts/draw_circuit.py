"""Draw batch norm's graph as a circuit, CS231n style, from cybatchnorm.graph.NODES.

    python docs/scripts/draw_circuit.py OUTDIR

Writes OUTDIR/circuit.svg (every wire carries its forward value, green, above
or left of it, and its gradient, red, below or right of it; the figure says
what the loss is in its title, L = sum(out * dout)) and one OUTDIR/circuit_<node>.svg per
node: a close-up of that node alone, with the wires that enter and leave it
and their values and gradients, drawn at the size of the text; and
OUTDIR/circuit_layer.svg, the same circuit for layer norm (the four numbers as
one sample of four features, a gamma and beta per feature).
The batch is tiny (one feature, four rows: the third feature of the backward
chapter's batch), and every number is computed when the site is built: the
values by the compiled forward kernels of the nodes (graph.forward), the
gradients by the compiled backward kernels (graph.backward, keep=True).
:func:`draw` without numbers is the forward graph figure (draw_graph.py).

Layout, derived from the graph: the nodes run left to right by topological
depth along the top row for the first half of the graph, and back right to
left along the bottom row for the second half (a U, so that the figure is
legible at page width). A node whose input also feeds that node's consumer
directly (mu: x feeds both mu and xmu) is raised above the row, so the direct
wire passes beneath it. Parameters and constants sit below their consumer.
"""
import os
import sys
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cybatchnorm import graph  # noqa: E402
from cybatchnorm.graph import NODES  # noqa: E402

# The tiny batch: column 2 of the backward chapter's x, gamma, beta and dout.
X = np.array([[0.0], [1.0], [2.0], [5.0]])
GAMMA, BETA, EPS = np.array([2.0]), np.array([-1.0]), 1e-5
DOUT = np.array([[0.25], [-0.5], [1.0], [-1.0]])

VALUE, GRAD = "#1a7f37", "#c62828"          # forward values green, gradients red
FILL = {"full": "#dbe9f6", "channel": "#fde9c9", "leaf": "#eeeeee", "loss": "#f3e5f5"}
# layout units are inches of the figure; fonts in points (1/72 in)
COLW, ROW_A, ROW_B, ROW_C, RAISE = 2.45, 5.7, 2.3, 0.0, 1.95
BOX_W, BOX_H, LOSS_W = 1.5, 0.62, 0.5
FONT, SMALL = 13.5, 13   # at the 928-px column the circuit is drawn 0.94 px per point: >= 12 px
INCH = 1.0
plt.rcParams["svg.fonttype"] = "none"       # text stays text: small files, crisp at any zoom
plt.rcParams["svg.hashsalt"] = "cybatchnorm"  # fixed element ids: the same bytes at every build


def compute():
    """Forward values and every gradient of the tiny batch, by the compiled kernels."""
    values = graph.forward(X, GAMMA, BETA, eps=EPS)
    cache = SimpleNamespace(shape=X.shape, **values)
    grads = graph.backward(DOUT, cache, keep=True)
    return values, grads


# Layer norm's tiny batch: the same four numbers as one sample of four
# features, with a gamma and a beta per feature (what layer norm gives them).
LAYER_X, LAYER_DOUT = X.T, DOUT.T
LAYER_GAMMA, LAYER_BETA = np.array([2.0, 1.0, 0.5, -1.0]), np.array([-1.0, 0.0, 1.0, 0.5])


def compute_layer():
    """Layer norm's values and gradients on the same nodes (graph.Reduction
    "layer"), by the same compiled kernels, each in its view of x."""
    red = graph.Reduction("layer", k=1)
    values = graph.forward(LAYER_X, LAYER_GAMMA, LAYER_BETA, eps=EPS, reduction=red)
    cache = SimpleNamespace(shape=LAYER_X.shape, reduction=red,
                            param_shape=LAYER_GAMMA.shape, **values)
    grads = graph.backward(LAYER_DOUT, cache, keep=True)
    return values, grads


def layout():
    """(x, y, kind) of every value, the loss 'L' included, derived from NODES."""
    names = {n.name for n in NODES}
    depth = {}
    for n in NODES:
        for i in n.inputs:
            depth.setdefault(i, 0)
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    half = (max(depth.values()) + 1) // 2
    consumers = {}
    for n in NODES:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    pos = {}

    def place(name, d, kind):
        col = d if d < half else 2 * half - 1 - d
        pos[name] = [col * COLW, ROW_A if d < half else ROW_B, kind]

    for n in NODES:
        for i in n.inputs:
            if i not in names and depth[n.name] == 1:   # the input the graph starts from
                place(i, 0, "full")
        place(n.name, depth[n.name], n.kind)
        # raised: one of n's inputs also feeds a consumer of n directly
        if any(i in c.inputs for i in n.inputs for c in consumers.get(n.name, ())):
            pos[n.name][1] += RAISE
    for n in NODES:   # parameters and constants: below their consumer
        for i in n.inputs:
            if i not in names and i not in pos:
                pos[i] = [pos[n.name][0], ROW_C, "leaf"]
    last = NODES[-1].name
    pos["L"] = [pos[last][0] - BOX_W / 2 - 1.15, pos[last][1], "loss"]
    return {k: tuple(v) for k, v in pos.items()}


def edges():
    """(source, target, gradient name or None) of every wire, out -> L included."""
    result = []
    for n in NODES:
        grad_of = dict(zip(n.targets(), n.grads))
        for i in n.inputs:
            result.append((i, n.name, grad_of.get(i)))
    result.append((NODES[-1].name, "L", "dout"))
    return result


def fmt(a):
    """A value or gradient as lines of numbers (one per row of the batch)."""
    a = np.ravel(a)
    return "\n".join(f"{float(v) + 0.0:.3g}" for v in a)   # + 0.0: no "-0"


def _width(kind):
    return LOSS_W if kind == "loss" else BOX_W


def _border(p, q, w):
    # the point where the segment p -> q leaves p's box (of width w)
    (x0, y0), (x1, y1) = p, q
    dx, dy = x1 - x0, y1 - y0
    sx = (w / 2) / abs(dx) if dx else np.inf
    sy = (BOX_H / 2) / abs(dy) if dy else np.inf
    s = min(sx, sy)
    return x0 + dx * s, y0 + dy * s


def draw(ax, values=None, grads=None, highlight=None, fontsize=FONT):
    """Draw the graph on ax; with values and grads, label every wire with both."""
    pos = layout()
    lit = set()
    if highlight is not None:
        lit = {(s, t) for s, t, _ in edges() if highlight in (s, t)}
    for name, (cx, cy, kind) in pos.items():
        on = name == highlight
        w = _width(kind)
        ax.add_patch(FancyBboxPatch(
            (cx - w / 2, cy - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0.03",
            fc="#fff59d" if on else FILL[kind], ec="#b8860b" if on else "#333333",
            lw=2.6 if on else 1.0, zorder=3))
        op = next((n.op for n in NODES if n.name == name), None)
        label = name if op is None else f"{name}\n{op}"
        ax.text(cx, cy, label, ha="center", va="center", fontsize=fontsize,
                linespacing=1.1, weight="bold" if on else "normal", zorder=4)
        parts = [g for s, _, g in edges() if s == name and g]
        if grads is not None and len(parts) > 1:
            # two branches meet here: the node's gradient is their sum
            # stacked under the box's left half, clear of the wires leaving it
            ax.text(cx - 0.1, cy - BOX_H / 2 - 0.1,
                    f"d{name} =\n{' + '.join(parts)} =\n" + fmt(grads["d" + name]),
                    ha="right", va="top", fontsize=SMALL, color=GRAD, zorder=4,
                    linespacing=1.05)
    for s, t, g in edges():
        p, q = pos[s][:2], pos[t][:2]
        a, b = _border(p, q, _width(pos[s][2])), _border(q, p, _width(pos[t][2]))
        on = (s, t) in lit
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14,
                                     lw=2.6 if on else 1.2,
                                     color="#b8860b" if on else "#444444", zorder=2))
        if values is None:
            continue
        mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        if abs(q[1] - p[1]) > abs(q[0] - p[0]) and q[1] < p[1]:
            my = a[1] + 0.75 * (b[1] - a[1])   # falling wire: clear of the sum under its source
        top = f"{s}\n{fmt(values[s])}"
        bot = f"{g}\n{fmt(DOUT if g == 'dout' else grads[g])}" if g else "no gradient"
        kw = dict(fontsize=SMALL, zorder=4, linespacing=1.05,
                  weight="bold" if on else "normal")
        if abs(q[1] - p[1]) > abs(q[0] - p[0]):       # vertical: value left, gradient right
            ax.text(mx - 0.08, my, top, ha="right", va="center", color=VALUE, **kw)
            ax.text(mx + 0.08, my, bot, ha="left", va="center", color=GRAD, **kw)
        elif abs(q[1] - p[1]) > 1e-9:                 # diagonal: both on the outer side
            side = -1 if q[1] > p[1] else 1           # rising wire: labels to its left
            ha = "left" if side > 0 else "right"
            # value and gradient side by side
            gap = side * (0.2 + 0.1 * max(map(len, (top if side > 0 else bot).split("\n"))))
            near, far = (top, bot) if side > 0 else (bot, top)
            ax.text(mx + side * 0.25, my + 0.1, near, ha=ha, va="center",
                    color=VALUE if near is top else GRAD, **kw)
            ax.text(mx + side * 0.25 + gap, my + 0.1, far, ha=ha, va="center",
                    color=VALUE if far is top else GRAD, **kw)
        else:                                         # horizontal: value above, gradient below
            ax.text(mx, my + 0.06, top, ha="center", va="bottom", color=VALUE, **kw)
            ax.text(mx, my - 0.06, bot, ha="center", va="top", color=GRAD, **kw)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.5, max(xs) + BOX_W)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()


def figure(title=None):
    """A figure sized to the layout (plus a title line), and its axes."""
    pos = layout()
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    w = (max(xs) - min(xs) + 0.5 + BOX_W) * INCH
    h = (max(ys) - min(ys) + 1.2 + (0.5 if title else 0)) * INCH
    fig, ax = plt.subplots(figsize=(w, h))
    if title:
        ax.set_title(title, fontsize=16)
    fig.subplots_adjust(0, 0, 1, 1 - (0.5 / h if title else 0))
    return fig, ax


def save(path, values=None, grads=None, highlight=None, title=None):
    fig, ax = figure(title)
    draw(ax, values, grads, highlight)
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)
    return path


CLOSE_FONT = 12          # close-ups are shown at their natural size: 12 pt is 16 px


def closeup(path, values, grads, name):
    """One node alone: its inputs on the left, the node, where its value goes
    on the right; every wire with its value (green, above) and gradient (red,
    below); where two gradients come back, their sum under the node."""
    node = next(n for n in NODES if n.name == name)
    grad_of = dict(zip(node.targets(), node.grads))
    outs = [(t, g) for s, t, g in edges() if s == name]
    kinds = {k: v[2] for k, v in layout().items()}
    rows = max(len(node.inputs), len(outs))
    step = 2.4                      # room for a value above and a gradient below each wire
    extra = 1.3 if len(outs) > 1 else 0.0     # the sum of two gradients under the node
    h = rows * step + extra
    fig, ax = plt.subplots(figsize=(8.6, h))
    fig.subplots_adjust(0, 0, 1, 1)
    kw = dict(fontsize=CLOSE_FONT, linespacing=1.05, zorder=4)
    mid = extra + rows * step / 2

    def ys(k):
        return [mid + (k - 1) / 2 * step - j * step for j in range(k)]

    def box(x, y, label, kind, height=0.6, on=False):
        w = (1.95 if on else 1.25) if kind != "loss" else 0.55
        ax.add_patch(FancyBboxPatch((x - w / 2, y - height / 2), w, height,
                                    boxstyle="round,pad=0.03",
                                    fc="#fff59d" if on else FILL[kind],
                                    ec="#b8860b" if on else "#333333", lw=2.2 if on else 1.0,
                                    zorder=3))
        ax.text(x, y, label, ha="center", va="center", weight="bold" if on else "normal", **kw)
        return w

    def wire(x0, x1, y, top, bot):
        # horizontal: the value above, the gradient below
        ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=14,
                                     lw=1.6, color="#444444", zorder=2))
        ax.text((x0 + x1) / 2, y + 0.08, top, ha="center", va="bottom", color=VALUE, **kw)
        ax.text((x0 + x1) / 2, y - 0.08, bot, ha="center", va="top", color=GRAD, **kw)

    cx = 4.3
    tall = (rows - 1) * step + 0.6
    w = box(cx, mid, f"{name}\n{node.op}", node.kind, height=tall, on=True)
    for i, y in zip(node.inputs, ys(len(node.inputs))):
        box(0.75, y, i, kinds.get(i, "leaf"))
        g = grad_of.get(i)
        wire(1.4, cx - w / 2 - 0.05, y, f"{i}\n{fmt(values[i])}",
             f"{g}\n{fmt(grads[g])}" if g else "no gradient")
    for (t, g), y in zip(outs, ys(len(outs))):
        box(7.85, y, t, kinds.get(t, "loss"))
        wire(cx + w / 2 + 0.05, 7.2, y, f"{name}\n{fmt(values[name])}",
             f"{g}\n{fmt(DOUT if g == 'dout' else grads[g])}")
    if len(outs) > 1:
        parts = " + ".join(g for _, g in outs)
        ax.text(cx, mid - tall / 2 - 0.12, f"d{name} = {parts} =\n{fmt(grads['d' + name])}",
                ha="center", va="top", color=GRAD, **kw)
    if any(t == "L" for t, _ in outs):
        ax.text(7.85, mid - 0.42, "L = Σ out ⊙ dout", ha="center", va="top", style="italic",
                **kw)
    ax.set_xlim(0, 8.6)
    ax.set_ylim(0, h)
    ax.set_axis_off()
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)
    return path


def main(outdir):
    values, grads = compute()
    paths = [save(os.path.join(outdir, "circuit.svg"), values, grads,
                  title="forward values (green) and gradients (red) on every wire;"
                        "  the loss L = Σ out ⊙ dout")]
    for n in NODES:
        paths.append(closeup(os.path.join(outdir, f"circuit_{n.name}.svg"), values, grads,
                             n.name))
    values, grads = compute_layer()
    paths.append(save(os.path.join(outdir, "circuit_layer.svg"), values, grads,
                      title="layer norm, one sample of four features: the same nodes, "
                            "values (green) and gradients (red)"))
    return paths


if __name__ == "__main__":
    print("\n".join(main(sys.argv[1] if len(sys.argv) > 1 else ".")))
