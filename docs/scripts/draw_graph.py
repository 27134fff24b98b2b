"""Draw the batch-norm computational graph from cybatchnorm.graph.NODES.

    python docs/scripts/draw_graph.py OUTDIR

Writes OUTDIR/graph.svg: the circuit of draw_circuit.py without numbers, one
box per value, coloured by its shape kind. Nothing about the graph is typed
here or there: nodes, operations, inputs, shape kinds and the layout all come
from NODES, so the picture cannot drift from the code.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import draw_circuit  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


def main(outdir):
    fig, ax = draw_circuit.figure()
    draw_circuit.draw(ax)
    legend = [Patch(fc=draw_circuit.FILL[k], ec="#333333", label=label) for k, label in (
        ("full", "shaped like x: (N, C, *spatial)"), ("channel", "one value per channel: (C,)"),
        ("leaf", "parameters and constants"), ("loss", "the loss"))]
    ax.legend(handles=legend, loc="center left", ncol=1, fontsize=draw_circuit.SMALL,
              frameon=False, bbox_to_anchor=(0.0, 0.47))
    path = os.path.join(outdir, "graph.svg")
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(main(sys.argv[1] if len(sys.argv) > 1 else "."))
