"""Grid figures and the summary table of a sweep directory (``rodflow sweep-report DIR``).

Figures (in DIR/plots): final sharpness·η/2 of each method against η (1 is the edge of stability); the mean
distance of each flow to what it estimates of GD against η; the cost of each method (gradient evaluations
and HVPs per step, wall time per run). A sweep whose η does not vary is drawn against its first varying
numeric key instead. Runs that diverged are marked with a cross; failed and pending runs are left out.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plotting import save_figure, style  # noqa: E402
from .sweep import PENDING, read_index, sweep_info  # noqa: E402


def methods_of(index: pd.DataFrame) -> list[str]:
    return [c[: -len(".status")] for c in index.columns if c.endswith(".status")]


def axes_of(index: pd.DataFrame, info: dict) -> tuple[str, list[str]]:
    """The x key of the figures (η unless it is constant) and the other varying keys (one line each)."""
    varying = [k for k in info.get("varying", []) if k in index and index[k].nunique(dropna=False) > 1]
    numeric = [k for k in varying if pd.api.types.is_numeric_dtype(index[k])]
    x = "lr" if "lr" in varying or not numeric else numeric[0]
    return x, [k for k in varying if k != x]


def _groups(index: pd.DataFrame, by: list[str]):
    if not by:
        yield "", index
        return
    for key, frame in index.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(by, key)), frame


def sweep_table(index: pd.DataFrame, info: dict) -> pd.DataFrame:
    """One row per run: its varying keys, status, and per method final sharpness·η/2, distance to GD, cost."""
    x, others = axes_of(index, info)
    keys = [k for k in [x, *others] if k in index]
    table = index[["id", *keys, "status"]].copy()
    for m in methods_of(index):
        if f"{m}.final_sharpness" in index:
            table[f"{m} S·η/2"] = index[f"{m}.final_sharpness"] * index["lr"] / 2
        if m != "gd" and f"{m}.dist_mean" in index:
            table[f"{m} dist"] = index[f"{m}.dist_mean"]
        if f"{m}.grad_evals_per_step" in index:
            table[f"{m} grads/step"] = index[f"{m}.grad_evals_per_step"]
    return table


def report(sweep_dir, fmt: str = "png") -> tuple[str, list[Path]]:
    """Write the grid figures of ``sweep_dir`` to its plots/ and return (summary table text, figure paths)."""
    sweep_dir = Path(sweep_dir)
    index = read_index(sweep_dir)
    info = sweep_info(sweep_dir)
    table = sweep_table(index, info)
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    have = index[index["status"].ne(PENDING) & ~index["status"].str.startswith("failed")]
    outdir = sweep_dir / "plots"
    outdir.mkdir(exist_ok=True)
    paths = []
    if len(have):
        for name, fn in (("sharpness", plot_sharpness), ("distance", plot_distance), ("cost", plot_cost)):
            fig = fn(have, info)
            if fig is not None:
                paths.append(save_figure(fig, outdir, name, fmt))
    return text, paths


def _lines(ax, index, info, column, label_of, transform=None):
    x, others = axes_of(index, info)
    drawn = False
    for m in methods_of(index):
        col = column(m)
        if col is None or col not in index:
            continue
        for glabel, frame in _groups(index, others):
            frame = frame.sort_values(x)
            y = frame[col].astype(float)
            if transform is not None:
                y = transform(frame, y)
            if not np.isfinite(y).any():
                continue
            label = label_of(m) + (f" ({glabel})" if glabel else "")
            ax.plot(frame[x], y, marker="o", ms=3, label=label, **style(m))
            div = frame["status"].str.startswith("diverged").to_numpy()
            if div.any():
                ax.scatter(frame[x][div], y[div], marker="x", color="red", zorder=3)
            drawn = True
    ax.set_xlabel("η" if x == "lr" else x)
    return drawn


def plot_sharpness(index: pd.DataFrame, info: dict):
    """Final sharpness·η/2 of each method against η: GD at the edge of stability sits at 1."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = _lines(ax, index, info, lambda m: f"{m}.final_sharpness", lambda m: m,
                   transform=lambda frame, y: y * frame["lr"].astype(float) / 2)
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(1.0, color="grey", ls=":", lw=1, label="S = 2/η")
    ax.set_ylabel("final sharpness · η/2")
    ax.legend(fontsize=8)
    ax.set_title(f"final sharpness — sweep {info.get('name', '')}", fontsize=10)
    return fig


def plot_distance(index: pd.DataFrame, info: dict):
    """Mean distance of each flow to GD (iterate or midpoint, as it estimates) against η."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = _lines(ax, index, info, lambda m: None if m == "gd" else f"{m}.dist_mean", lambda m: f"{m} to GD")
    if not drawn:
        plt.close(fig)
        return None
    values = np.concatenate([index[c].to_numpy(dtype=float) for c in index if c.endswith(".dist_mean")])
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.set_ylabel("mean ‖model − GD‖ over the run")
    ax.legend(fontsize=8)
    ax.set_title(f"distance to GD — sweep {info.get('name', '')}", fontsize=10)
    return fig


def plot_cost(index: pd.DataFrame, info: dict):
    """Cost per method: gradient evaluations and HVPs per step (mean over runs), and wall time per run."""
    methods = methods_of(index)
    grads = [index.get(f"{m}.grad_evals_per_step", pd.Series(dtype=float)).mean() for m in methods]
    steps = [index[f"{m}.steps"].clip(lower=1) if f"{m}.steps" in index else 1 for m in methods]
    hvps = [(index.get(f"{m}.hvps", 0) / s).mean() if f"{m}.hvps" in index else 0.0 for m, s in zip(methods, steps)]
    wall = [index.get(f"{m}.wall_s", pd.Series(dtype=float)).mean() for m in methods]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    pos = np.arange(len(methods))
    a1.bar(pos - 0.2, grads, width=0.4, label="gradient evals / step")
    a1.bar(pos + 0.2, hvps, width=0.4, label="HVPs / step")
    a1.set_xticks(pos, methods, rotation=20)
    a1.legend(fontsize=8)
    a1.set_title("work per GD step (mean over runs)", fontsize=10)
    a2.bar(pos, wall, color=[style(m).get("color", "tab:gray") for m in methods])
    a2.set_xticks(pos, methods, rotation=20)
    a2.set_ylabel("s")
    a2.set_title("wall time per run (mean, excl. sharpness)", fontsize=10)
    fig.tight_layout()
    return fig
