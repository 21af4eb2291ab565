"""Figures of a run: loss, sharpness against 2/η, distance of each flow to GD."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter1d  # noqa: E402

from . import processes  # noqa: E402
from .summary import gd_loss_two_step  # noqa: E402

STYLE = {
    "gd": dict(color="black", lw=0.8),
    "gradient_flow": dict(color="tab:blue", lw=1.5, ls="--"),
    "central_flow": dict(color="tab:green", lw=1.5),
    "rod_flow": dict(color="tab:red", lw=1.5),
}


def style(method: str) -> dict:
    return STYLE.get(method, dict(lw=1.2))


def plot_run(result, outdir=None, fmt: str = "png") -> list[Path]:
    """Write the standard figures of ``result`` to ``outdir`` (default: the run directory's plots/)."""
    outdir = Path(outdir) if outdir is not None else Path(result.path) / "plots"
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("loss", plot_loss), ("sharpness", plot_sharpness), ("distance", plot_distance),
                     *_extra_plots()):
        fig = fn(result)
        if fig is not None:
            paths.append(save_figure(fig, outdir, name, fmt))
    return paths


def save_figure(fig, outdir: Path, name: str, fmt: str = "png") -> Path:
    """Write ``fig`` to ``outdir/name.fmt`` at print resolution and close it."""
    path = Path(outdir) / f"{name}.{fmt}"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


# Modules with method-specific figures: each has PLOTS, (name, fn) pairs; fn returns None when it does not apply.
EXTRA_PLOT_MODULES = ["rodflow.plot_rod"]


def _extra_plots() -> list:
    import importlib

    return [pair for mod in EXTRA_PLOT_MODULES for pair in importlib.import_module(mod).PLOTS]


def _title(ax, result, what: str) -> None:
    ax.set_title(f"{what} — {result.config['problem']['name']}, η = {result.lr:g}", fontsize=10)


def plot_loss(result, sigma: float | None = None):
    """GD's raw and smoothed loss and each method's predicted GD loss against steps."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if "gd" in result.methods:
        gd = result.method("gd")["loss"]
        ax.plot(gd.index, gd.values, label="GD", alpha=0.35, **style("gd"))
        two = gd_loss_two_step(result)
        ax.plot(two.index, two.values, color="black", lw=1.4, label="GD, 2-step average")
        sigma = sigma if sigma is not None else max(1.0, len(gd) / 60)
        if len(gd) > 3:
            ax.plot(gd.index, gaussian_filter1d(gd.values, sigma, mode="nearest"), color="grey", lw=1.4,
                    ls=":", label=f"GD, Gaussian σ={sigma:.0f}")
    for m in result.methods:
        if m == "gd":
            continue
        df = result.method(m)
        if not df.empty:
            ax.plot(df.index, df["loss_pred"].values, label=f"{m} (predicted)", **style(m))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    losses = result.metrics["loss"].to_numpy(dtype=float)
    if np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    _title(ax, result, "loss")
    return fig


def plot_sharpness(result):
    """Sharpness of each method's point against the stability threshold 2/η."""
    if "sharpness" not in result.metrics or result.metrics["sharpness"].notna().sum() == 0:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for m in result.methods:
        df = result.method(m)["sharpness"].dropna()
        ax.plot(df.index, df.values, label=m, **style(m))
    if "gfs_sharpness" in result.metrics:  # runs with gfs_every: the GFS sharpness φ of each method's point
        for m in result.methods:
            phi = result.method(m)["gfs_sharpness"].dropna()
            if len(phi):
                ax.plot(phi.index, phi.values, ls="--", marker=".", ms=4, lw=1.2, color=style(m).get("color"),
                        label=f"{m}: GFS sharpness φ")
    ax.axhline(2 / result.lr, color="grey", ls=":", lw=1, label="2/η")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness λ_max(H)")
    ax.legend(fontsize=8)
    _title(ax, result, "sharpness")
    return fig


def plot_distance(result):
    """Distance of each model's point to what it estimates of GD (iterate or midpoint)."""
    flows = [m for m in result.methods if m != "gd"]
    if "gd" not in result.methods or not flows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for m in flows:
        df = result.method(m)
        estimates = processes.REGISTRY.get(m).estimates if m in processes.REGISTRY else "iterate"
        col = "dist_gd_mid" if estimates == "midpoint" else "dist_gd"
        target = "midpoints" if estimates == "midpoint" else "iterates"
        ax.plot(df.index, df[col].values, label=f"{m} to GD {target}", **style(m))
    ax.set_xlabel("step")
    ax.set_ylabel("‖model − GD‖")
    if (result.metrics[["dist_gd", "dist_gd_mid"]].fillna(0) >= 0).all().all():
        ax.set_yscale("symlog", linthresh=1e-8)
    ax.legend(fontsize=8)
    _title(ax, result, "distance to GD")
    return fig
