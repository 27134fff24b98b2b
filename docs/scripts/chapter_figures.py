"""The figures of the fused, spatial, stability and train/eval chapters.

    python docs/scripts/chapter_figures.py OUTDIR

Writes OUTDIR/fused_sums.svg, spatial_axes.svg, stability_offset.svg,
running_stats.svg and norm_axes.svg. Every number drawn is computed here by
the package (the fused kernels, batchnorm_forward, BatchNorm, layernorm_forward,
groupnorm_forward); nothing is typed in.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
from matplotlib.patches import Rectangle  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cybatchnorm as bn  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "cybatchnorm", "font.size": 12})
VALUE, GRAD = "#1a7f37", "#c62828"


def fused_sums(path):
    """dx of the closed form from two per-feature sums: dout and x, read twice."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(8, 5))
    gamma, beta = rng.uniform(0.5, 2.0, 5), rng.normal(size=5)
    dout = rng.normal(size=x.shape)
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bn.batchnorm_backward_fused(dout, cache)
    staged = bn.batchnorm_backward(dout, cache)[0]
    fig, axes = plt.subplots(1, 4, figsize=(12.5, 3.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.25, 1]})
    lim = max(np.abs(dout).max(), np.abs(cache.xhat).max())
    for ax, a, title in ((axes[0], dout, "dout  (N, D)"), (axes[1], cache.xhat, "xhat  (N, D)")):
        im = ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("feature j")
        ax.set_yticks([])
    axes[0].set_ylabel("row i")
    # one colour scale for dout and xhat (the same limits), one for dx
    fig.colorbar(im, ax=axes[:2], shrink=0.85, pad=0.02, label="dout, xhat")
    j = np.arange(x.shape[1])
    axes[2].bar(j - 0.2, dbeta, 0.4, color="#5b8def", label="dbeta = Σᵢ dout")
    axes[2].bar(j + 0.2, dgamma, 0.4, color="#f2994a", label="dgamma = Σᵢ dout·xhat")
    axes[2].axhline(0, color="#444", lw=0.8)
    axes[2].set_title("pass 1: two sums per feature")
    axes[2].set_xlabel("feature j")
    axes[2].legend(fontsize=10, loc="best")
    lim = np.abs(dx).max()
    im = axes[3].imshow(dx, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    axes[3].set_title("pass 2: dx  (N, D)")
    axes[3].set_xlabel("feature j")
    axes[3].set_yticks([])
    fig.colorbar(im, ax=axes[3], shrink=0.85, pad=0.04, label="dx")
    err = np.abs(dx - staged).max()
    fig.suptitle("The closed form keeps only dbeta and dgamma: "
                 "dx = γ·ivar/M·(M·dout − dbeta − xhat·dgamma)\n"
                 f"(this batch: max |fused − staged| = {err:.1e})", fontsize=12)
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)


def spatial_axes(path):
    """(N, C, H, W): one channel's mean is taken over N, H and W."""
    rng = np.random.default_rng(1)
    N, C, H, W = 2, 3, 3, 3
    x = rng.normal(size=(N, C, H, W)) + np.arange(C)[None, :, None, None]
    _, cache = bn.batchnorm_forward(x, np.ones(C), np.zeros(C))
    c_hi = 1
    fig, ax = plt.subplots(figsize=(10, 3.9))
    gap_c, gap_n = 0.6, 1.6
    width = C * (W + gap_c) - gap_c
    for n in range(N):
        for c in range(C):
            x0 = n * (width + gap_n) + c * (W + gap_c)
            on = c == c_hi
            for h in range(H):
                for w in range(W):
                    ax.add_patch(Rectangle((x0 + w, H - 1 - h), 1, 1,
                                           fc="#f2994a" if on else "#dbe9f6",
                                           ec="#333333", lw=0.6))
                    ax.text(x0 + w + 0.5, H - 1 - h + 0.5, f"{x[n, c, h, w]:.1f}",
                            ha="center", va="center", fontsize=10)
            ax.text(x0 + W / 2, H + 0.25, f"c={c}", ha="center", fontsize=10,
                    weight="bold" if on else "normal")
        ax.text(n * (width + gap_n) + width / 2, -0.9, f"image n={n}", ha="center", fontsize=11)
    mean = float(x[:, c_hi].mean())
    ax.set_title(f"mu[{c_hi}] = mean of the N·H·W = {N}·{H}·{W} = {N * H * W} orange values "
                 f"= {float(cache.mu[c_hi]):.4f} (numpy: {mean:.4f})\n"
                 f"one mean and one variance per channel: shape (C,) = ({C},)", fontsize=12)
    ax.set_xlim(-0.3, N * (width + gap_n))
    ax.set_ylim(-1.4, H + 0.9)
    ax.set_aspect("equal")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)


def stability_offset(path):
    """Relative error of the variance against the mean offset, package vs E[x²] − E[x]²."""
    rng = np.random.default_rng(2)
    offsets = 10.0 ** np.arange(0, 9)
    base = rng.normal(0.0, 1.0, size=(4096, 1))
    curves = {}
    for dt in (np.float64, np.float32):
        ours, naive = [], []
        for off in offsets:
            x = (base + off).astype(dt)
            xl = x.astype(np.longdouble)
            exact = float(((xl - xl.mean(axis=0)) ** 2).mean())
            _, cache = bn.batchnorm_forward(x, np.ones(1, dt), np.zeros(1, dt))
            xd = x.astype(dt)
            nv = float((xd ** 2).mean(axis=0, dtype=dt)[0] - xd.mean(axis=0, dtype=dt)[0] ** 2)
            if exact == 0:   # float32 rounds every value to the same number: no spread left
                ours.append(np.nan)
                naive.append(np.nan)
                continue
            # an exact result is drawn at 1e-18, the bottom of the axis
            ours.append(max(abs(float(cache.var[0]) - exact) / exact, 1e-18))
            naive.append(max(abs(nv - exact) / exact, 1e-18))
        curves[np.dtype(dt).name] = (ours, naive)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, style in (("float64", "-"), ("float32", "--")):
        ours, naive = curves[name]
        ax.loglog(offsets, ours, style, marker="o", color="#1f77b4",
                  label=f"cybatchnorm, {name}")
        ax.loglog(offsets, naive, style, marker="s", color="#d62728",
                  label=f"E[x²] − E[x]², {name}")
    ax.axhline(1.0, color="#777", lw=0.8)
    ax.text(offsets[0], 1.4, "100 % error", fontsize=9, color="#555")
    ax.set_xlabel("mean offset of the data (standard deviation 1)")
    ax.set_ylabel("relative error of var")
    ax.set_ylim(1e-18, 1e12)
    ax.set_title("Variance of 4096 values, against an extended-precision two-pass reference",
                 fontsize=11)
    ax.legend(fontsize=9, loc="upper left", ncol=2)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)


def running_stats(path):
    """running_mean and running_var of BatchNorm over training steps."""
    rng = np.random.default_rng(3)
    true_mean, true_std, steps = 3.0, 2.0, 60
    layers = {"momentum=0.1": bn.BatchNorm(1), "momentum=0.5": bn.BatchNorm(1, momentum=0.5),
              "momentum=None (cumulative)": bn.BatchNorm(1, momentum=None)}
    hist = {k: ([], []) for k in layers}
    for _ in range(steps):
        xb = rng.normal(true_mean, true_std, size=(16, 1))
        for k, layer in layers.items():
            layer.forward(xb)
            hist[k][0].append(float(layer.running_mean[0]))
            hist[k][1].append(float(layer.running_var[0]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    t = np.arange(1, steps + 1)
    for k in layers:
        axes[0].plot(t, hist[k][0], label=k)
        axes[1].plot(t, hist[k][1], label=k)
    axes[0].axhline(true_mean, color="#444", ls=":", label="population mean")
    axes[1].axhline(true_std ** 2, color="#444", ls=":", label="population variance")
    axes[0].set_title("running_mean (starts at 0)")
    axes[1].set_title("running_var (starts at 1; unbiased)")
    for ax in axes:
        ax.set_xlabel("training step (batches of 16)")
    axes[0].legend(fontsize=9)
    axes[1].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)


def norm_axes(path):
    """Which values one mu averages: batch, layer, group and instance norm on
    the same (N, C, S) = (2, 4, 4) batch."""
    rng = np.random.default_rng(5)
    N, C, S, G = 2, 4, 4, 2
    x = np.round(rng.normal(size=(N, C, S)) + np.arange(C)[None, :, None], 1)
    ones, zeros = np.ones(C), np.zeros(C)
    _, bc = bn.batchnorm_forward(x, ones, zeros)
    _, lc = bn.layernorm_forward(x, np.ones((C, S)), np.zeros((C, S)))
    _, gc = bn.groupnorm_forward(x, ones, zeros, G)
    _, ic = bn.groupnorm_forward(x, ones, zeros, C)
    # (title, mask of the values one mu averages, that mu as the package computed it)
    c1 = np.zeros((N, C, S), bool)
    c1[:, 1] = True
    s0 = np.zeros((N, C, S), bool)
    s0[0] = True
    g0 = np.zeros((N, C, S), bool)
    g0[0, :C // G] = True
    i0 = np.zeros((N, C, S), bool)
    i0[0, 1] = True
    panels = [("batch norm: mu of channel 1, over the batch and the spatial axes", c1,
               float(bc.mu[1])),
              ("layer norm: mu of sample 0, over its channels and spatial axes", s0,
               float(lc.mu64[0])),
              (f"group norm (G = {G}): mu of sample 0, group 0 (channels 0-1)", g0,
               float(gc.mu64[0])),
              ("instance norm (G = C): mu of sample 0, channel 1", i0, float(ic.mu64[1]))]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 6.4))
    cw, gap_c, gap_n = 1.3, 0.4, 1.2          # cell width, gaps between channels and samples
    span = C * (S * cw + gap_c) + gap_n
    for ax, (title, mask, mu) in zip(axes, panels):
        for n in range(N):
            for c in range(C):
                x0 = n * span + c * (S * cw + gap_c)
                for k in range(S):
                    ax.add_patch(Rectangle((x0 + k * cw, 0), cw, 1,
                                           fc="#f2994a" if mask[n, c, k] else "#dbe9f6",
                                           ec="#333333", lw=0.6))
                    ax.text(x0 + (k + 0.5) * cw, 0.5, f"{x[n, c, k]:.1f}", ha="center",
                            va="center", fontsize=8)
                ax.text(x0 + S * cw / 2, 1.25, f"n={n} c={c}", ha="center", fontsize=9)
        ax.set_title(f"{title}\nmu = mean of the {int(mask.sum())} orange values = {mu:.4f}"
                     f" (numpy: {float(x[mask].mean()):.4f})", fontsize=11)
        ax.set_xlim(-0.3, N * span)
        ax.set_ylim(-0.2, 1.7)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})   # same bytes at every build
    plt.close(fig)


def main(outdir):
    paths = []
    for name, draw in (("fused_sums", fused_sums), ("spatial_axes", spatial_axes),
                       ("stability_offset", stability_offset), ("running_stats", running_stats),
                       ("norm_axes", norm_axes)):
        paths.append(os.path.join(outdir, name + ".svg"))
        draw(paths[-1])
    return paths


if __name__ == "__main__":
    print("\n".join(main(sys.argv[1] if len(sys.argv) > 1 else ".")))
