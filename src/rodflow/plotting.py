"""Figures of a run (``rodflow run``, ``rodflow plot``): loss, sharpness against 2/η, distance of each flow to
GD, GFS sharpness when recorded, and the method-specific figures of ``EXTRA_PLOT_MODULES``. The panels are
``rodflow.panels``', shared with ``compare``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import panels  # noqa: E402
from .panels import STYLE, style, title as _title  # noqa: E402,F401  (public names kept)


def plot_run(result, outdir=None, fmt: str = "png") -> list[Path]:
    """Write the standard figures of ``result`` to ``outdir`` (default: the run directory's plots/)."""
    outdir = Path(outdir) if outdir is not None else Path(result.path) / "plots"
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in (("loss", plot_loss), ("sharpness", plot_sharpness), ("preconditioned", plot_preconditioned),
                     ("distance", plot_distance), ("gfs", plot_gfs), *_extra_plots()):
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


def panel_figure(result, panel, what: str):
    """One panel of ``rodflow.panels`` as its own figure (None when it does not apply to the run)."""
    if not panel(result, None):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    panel(result, ax)
    _title(ax, result, what)
    return fig


# Modules with method-specific figures: each has PLOTS, (name, fn) pairs; fn returns None when it does not apply.
EXTRA_PLOT_MODULES = ["rodflow.plot_rod"]


def _extra_plots() -> list:
    import importlib

    return [pair for mod in EXTRA_PLOT_MODULES for pair in importlib.import_module(mod).PLOTS]


def plot_loss(result, sigma: float | None = None):
    """GD's raw and smoothed loss and each method's predicted GD loss against steps."""
    return panel_figure(result, lambda r, ax: panels.loss(r, ax, sigma), "loss")


def plot_sharpness(result):
    """Sharpness of each method's point (and GD's further top eigenvalues) against the threshold 2/η."""
    return panel_figure(result, panels.eigenvalues, "sharpness")


def plot_preconditioned(result):
    """Preconditioned sharpness λ_max(P⁻¹H) against the optimizer's threshold (runs with RMSProp, Adam, ...)."""
    return panel_figure(result, panels.preconditioned, "preconditioned sharpness")


def plot_distance(result):
    """Distance of each model's point to what it estimates of GD (iterate or midpoint)."""
    return panel_figure(result, panels.distance, "distance to GD")


def plot_gfs(result):
    """The GFS sharpness φ of each method's point (runs with gfs_every)."""
    return panel_figure(result, panels.gfs, "GFS sharpness")
