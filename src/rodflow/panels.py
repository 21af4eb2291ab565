"""Figure panels of a run, shared by every report: ``rodflow run``/``plot`` (``plotting.plot_run``), ``compare``
and the demo (``compare.plot_comparison``: one file per panel plus an overview).

A panel is ``fn(result, ax) -> bool``: with ``ax=None`` it only says whether it applies to the run (e.g. no
sharpness recorded: False); with an axis it draws onto it. ``PANELS`` lists them by name; a new panel is one
function plus one line there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import processes

STYLE = {
    "gd": dict(color="black", lw=0.8),
    "gradient_flow": dict(color="tab:blue", lw=1.5, ls="--"),
    "central_flow": dict(color="tab:green", lw=1.5),
    "rod_flow": dict(color="tab:red", lw=1.5),
}
THRESHOLD = dict(color="tab:orange", ls=":", lw=1.2)


def style(method: str) -> dict:
    return STYLE.get(method, dict(lw=1.2))


def title(ax, result, what: str) -> None:
    ax.set_title(f"{what} — {result.config['problem']['name']}, η = {result.lr:g}", fontsize=10)


def gd_oscillation(result) -> pd.Series | None:
    """GD's oscillation amplitude per step: half the step length ‖w_{t+1} − w_t‖/2 (the `half_step` column)."""
    if "gd" not in result.methods or "half_step" not in result.metrics:
        return None
    return result.method("gd")["half_step"]


def estimates(method: str) -> str:
    """What a method's point estimates of GD: "iterate" or "midpoint" (its process class says)."""
    return processes.REGISTRY.get(method).estimates if method in processes.REGISTRY else "iterate"


def loss(result, ax, sigma: float | None = None) -> bool:
    """GD's raw, two-step-averaged and Gaussian-smoothed loss and each model's predicted GD loss."""
    from scipy.ndimage import gaussian_filter1d

    from .summary import gd_loss_two_step

    if ax is None:
        return True
    if "gd" in result.methods:
        gd = result.method("gd")["loss"]
        ax.plot(gd.index, gd.values, label="GD", alpha=0.35, **style("gd"))
        two = gd_loss_two_step(result)
        ax.plot(two.index, two.values, color="black", lw=1.3, label="GD, 2-step average")
        if len(gd) > 3:
            sigma = sigma if sigma is not None else max(1.0, len(gd) / 60)
            ax.plot(gd.index, gaussian_filter1d(gd.values, sigma, mode="nearest"), color="grey", lw=1.3, ls=":",
                    label=f"GD, Gaussian σ={sigma:.0f}")
    for m in result.methods:
        df = result.method(m)
        if m != "gd" and not df.empty:
            ax.plot(df.index, df["loss_pred"].values, label=f"{m} (predicted)", **style(m))
    vals = result.metrics["loss"].to_numpy(dtype=float)
    if np.all(vals[np.isfinite(vals)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    return True


def threshold_line(result, ax, column: str = "threshold") -> None:
    """The optimizer's stability threshold: 2/η for plain GD, else GD's recorded ``threshold`` column (a curve:
    Adam's bias correction moves it)."""
    m = result.metrics
    if column in m and "gd" in result.methods and result.method("gd")[column].notna().any():
        t = result.method("gd")[column].dropna()
        ax.plot(t.index, t.values, label="threshold", **THRESHOLD)
    else:
        ax.axhline(2 / result.lr, label="2/η", **THRESHOLD)


def eigenvalues(result, ax) -> bool:
    """Each method's sharpness λ₁ (and GD's further top eigenvalues) against the threshold (2/η for plain GD;
    none for an optimizer with a preconditioner, whose threshold is on λ_max(P⁻¹H): ``preconditioned``)."""
    m = result.metrics
    if "sharpness" not in m or m["sharpness"].notna().sum() == 0:
        return False
    if ax is None:
        return True
    eig_cols = sorted((c for c in m if c.startswith("eig_") and c[4:].isdigit()), key=lambda c: int(c[4:]))
    for meth in result.methods:
        df = result.method(meth)
        s = df["sharpness"].dropna()
        ax.plot(s.index, s.values, label=f"{meth} λ₁", **style(meth))
        if meth == "gd":
            for c in eig_cols[1:]:
                e = df[c].dropna()
                ax.plot(e.index, e.values, color="black", lw=0.6, alpha=0.5, ls="--",
                        label=("GD λ₂" if len(eig_cols) == 2 else f"GD λ₂…λ{len(eig_cols)}")
                        if c == eig_cols[1] else None)
    if "preconditioned_sharpness" not in m:
        threshold_line(result, ax)
    ax.set_xlabel("step")
    ax.set_ylabel("top Hessian eigenvalues")
    ax.legend(fontsize=7)
    return True


def distance(result, ax) -> bool:
    """Distance of each model's point to what it estimates of the reference (GD unless the run named another):
    its iterate or its midpoint."""
    ref = result.config.get("reference", "gd")
    flows = [m for m in result.methods if m != ref]
    if ref not in result.methods or not flows:
        return False
    if ax is None:
        return True
    name = "GD" if ref == "gd" else ref
    for m in flows:
        est = estimates(m)
        col = "dist_gd_mid" if est == "midpoint" else "dist_gd"
        ax.plot(result.method(m).index, result.method(m)[col].values, label=f"{m} → {name} {est}", **style(m))
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"‖model − {name}‖")
    ax.legend(fontsize=7)
    return True


def oscillation(result, ax) -> bool:
    """Rod length ‖δ‖ against GD's oscillation amplitude ‖w_{t+1} − w_t‖/2."""
    osc = gd_oscillation(result)
    rods = [m for m in result.methods
            if "rod_length" in result.metrics and result.method(m)["rod_length"].notna().any()]
    if osc is None or not rods:
        return False
    if ax is None:
        return True
    ax.plot(osc.index, osc.values, label="GD ‖w_{t+1} − w_t‖/2", alpha=0.6, **style("gd"))
    for m in rods:
        r = result.method(m)["rod_length"]
        ax.plot(r.index, r.values, label=f"{m} ‖δ‖", **style(m))
    if (osc.dropna() > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("oscillation amplitude")
    ax.legend(fontsize=7)
    return True


def _per_method(result, ax, column: str, label, **kw) -> bool:
    """Each method's recorded ``column`` (its measured steps) as a curve labelled ``label(method)``; False when no
    method has a value (``ax`` None: only that answer)."""
    m = result.metrics
    if column not in m or m[column].notna().sum() == 0:
        return False
    if ax is None:
        return True
    for meth in result.methods:
        s = result.method(meth)[column].dropna()
        if len(s):
            ax.plot(s.index, s.values, label=label(meth), **kw, **style(meth))
    return True


def gfs(result, ax) -> bool:
    """The GFS sharpness φ of each method's point (runs with gfs_every) against 2/η."""
    drawn = _per_method(result, ax, "gfs_sharpness", lambda meth: meth, marker="o", ms=3)
    if not drawn or ax is None:
        return drawn
    ax.axhline(2 / result.lr, label="2/η", **THRESHOLD)
    ax.set_xlabel("step")
    ax.set_ylabel("GFS sharpness")
    ax.legend(fontsize=7)
    return True


def preconditioned(result, ax) -> bool:
    """Each method's preconditioned sharpness λ_max(P⁻¹H) against the optimizer's threshold (RMSProp, Adam, ...)."""
    drawn = _per_method(result, ax, "preconditioned_sharpness", lambda meth: f"{meth} λ_max(P⁻¹H)")
    if not drawn or ax is None:
        return drawn
    threshold_line(result, ax)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("preconditioned sharpness")
    ax.legend(fontsize=7)
    return True


PANELS = {"loss": loss, "eigenvalues": eigenvalues, "preconditioned": preconditioned, "distance": distance,
          "rod": oscillation, "gfs": gfs}
