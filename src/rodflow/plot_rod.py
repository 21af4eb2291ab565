"""Rod-flow figures of a run (hooked into ``plotting.plot_run``; skipped when the run has no rod_flow)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import panels  # noqa: E402
from .panels import style, title as _title  # noqa: E402


def plot_rod_length(result):
    """Rod length ‖δ‖ against GD's half step ‖w_{t+1} − w_t‖/2 (log scale), and the secant sharpness."""
    if "rod_flow" not in result.methods or result.method("rod_flow").empty:
        return None
    rod = result.method("rod_flow")
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.4, 6), sharex=True, height_ratios=(2, 1))
    if panels.oscillation(result, None):
        panels.oscillation(result, ax)
    else:  # no GD half step to compare with: the rod alone
        ax.plot(rod.index, rod["rod_length"].values, label="rod length ‖δ‖", **style("rod_flow"))
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("")
    ax.set_ylabel("length")
    _title(ax, result, "rod length vs GD's oscillation")
    if "secant_sharpness" in rod:
        bx.plot(rod.index, rod["secant_sharpness"].values, label="rod secant sharpness", **style("rod_flow"))
    if "sharpness" in rod and rod["sharpness"].notna().any():
        s = rod["sharpness"].dropna()
        bx.plot(s.index, s.values, color="tab:orange", lw=1, label="sharpness at the centre")
    bx.axhline(2 / result.lr, color="grey", ls=":", lw=1, label="2/η")
    bx.set_xlabel("step")
    bx.set_ylabel("curvature")
    bx.legend(fontsize=8)
    return fig


def plot_centre(result):
    """Each coordinate (up to 4) of the rod centre against GD's midpoints, and the ends against GD iterates."""
    if "rod_flow" not in result.methods or "gd" not in result.methods or "rod_flow" not in result.iterates:
        return None
    mids = result.aux.get("gd", {}).get("midpoint")
    if mids is None or mids.ndim != 2:
        return None
    centre = result.iterates["rod_flow"]
    ends = result.aux["rod_flow"].get("end_iterate")
    gd = result.iterates.get("gd")
    k = min(4, centre.shape[1])
    fig, axes = plt.subplots(k, 1, figsize=(6.4, 1.8 * k + 1), sharex=True, squeeze=False)
    t = np.arange(centre.shape[0])
    for i, ax in enumerate(axes[:, 0]):
        if gd is not None:
            ax.plot(t, gd[:, i], color="black", lw=0.5, alpha=0.3, label="GD iterates")
        ax.plot(t, mids[:, i], color="black", lw=1.2, label="GD midpoints")
        ax.plot(t, centre[:, i], label="rod centre", **style("rod_flow"))
        if ends is not None:
            ax.plot(t, ends[:, i], color="tab:red", lw=0.5, alpha=0.4, label="rod ends c − (−1)^t δ")
        for m in result.methods:
            if m not in ("gd", "rod_flow") and m in result.iterates:
                ax.plot(t, result.iterates[m][:, i], label=m, **style(m))
        ax.set_ylabel(f"w[{i}]")
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("step")
    _title(axes[0, 0], result, "rod centre vs GD midpoints")
    return fig


PLOTS = (("rod_length", plot_rod_length), ("rod_centre", plot_centre))
