"""The per-method summary table: accuracy against GD and cost."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import processes


def gd_loss_two_step(result) -> pd.Series | None:
    """GD's loss averaged over two consecutive steps, ½(L_t + L_{t+1}), indexed by t."""
    if "gd" not in result.methods:
        return None
    loss = result.method("gd")["loss"]
    return 0.5 * (loss + loss.shift(-1))


def summarize(result) -> pd.DataFrame:
    """One row per method: status, final loss and sharpness, distance to GD, loss-prediction error, cost.

    Distances compare a method's point with what it estimates of the run's reference (GD unless the run names
    another): its iterate w_t for iterate models (gradient flow, central flow), its midpoint (w_t + w_{t+1})/2
    for midpoint models (the rod centre).
    ``loss_pred_err`` is Σ_t |pred_t − L̄_t| / Σ_t |L̄_t|, the error of the method's predicted loss against
    GD's loss averaged over two steps L̄_t (a ratio of sums, so steps where the loss is ~0 do not dominate).
    ``onset_step`` / ``first_spike_step``: when the method enters the edge of stability and when its predicted
    loss first spikes (``rodflow.onset``; NaN for a model without an oscillation, with ``onset_reason``).
    """
    from .onset import onsets

    smooth = gd_loss_two_step(result)
    onset = onsets(result)
    rows = []
    for m in result.methods:
        df = result.method(m)
        if df.empty:
            rows.append({"method": m, "status": result.status.get(m, "")})
            continue
        estimates = processes.REGISTRY.get(m).estimates if m in processes.REGISTRY else "iterate"
        dist = df["dist_gd_mid" if estimates == "midpoint" else "dist_gd"]
        row = {
            "method": m,
            "status": result.status.get(m, ""),
            "steps": int(df.index.max()),
            "final_loss": float(df["loss"].iloc[-1]),
            "final_sharpness": _last(df.get("sharpness")),
            "compared_to": "midpoint" if estimates == "midpoint" else "iterate",
            "dist_mean": float(dist.mean()) if dist.notna().any() else np.nan,
            "dist_max": float(dist.max()) if dist.notna().any() else np.nan,
            "dist_final": float(dist.iloc[-1]),
        }
        row.update(_ends_distance(result, m))
        if smooth is not None and "loss_pred" in df:
            both = pd.concat([df["loss_pred"], smooth], axis=1, keys=["pred", "gd"]).dropna()
            with np.errstate(all="ignore"):  # a diverged run's infinite losses give NaN, not a warning
                scale = both["gd"].abs().sum()
                err = (both["pred"] - both["gd"]).abs().sum() / scale if 0 < scale < np.inf else np.nan
            row["loss_pred_err"] = float(err)
        for col in ("grad_evals", "hvps", "d3", "sharpness_hvps"):
            if col in df:
                row[col] = int(df[col].fillna(0).sum())
        if "eig_converged" in df:  # sharpness evaluations that did not converge (recorded as NaN)
            row["sharpness_nan"] = int((df["eig_converged"] == 0).sum())
        if "rate_eig_failures" in df:  # rod flow rate="gd-eigen": eigensolves that did not converge (pairs kept)
            failures = _last(df["rate_eig_failures"])
            if np.isfinite(failures):
                row["rate_eig_failures"] = int(failures)
        if "gfs_sharpness" in df and df["gfs_sharpness"].notna().any():
            from .gfs import monotonicity

            rows_gfs = df[df["gfs_converged"].notna()]
            row["final_gfs_sharpness"] = _last(df["gfs_sharpness"])
            row.update(monotonicity(rows_gfs["gfs_sharpness"], rows_gfs.get("gfs_error")))
        row.update(onset.get(m, {}))
        row["grad_evals_per_step"] = row.get("grad_evals", 0) / max(1, row["steps"])
        row["wall_s"] = float(df["wall_s"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _ends_distance(result, m: str) -> dict[str, float]:
    """For a model with per-step predictions of GD's iterate (aux ``end_iterate``, e.g. the rod's ends):
    mean and max of ‖end_iterate_t − w_t‖ when GD's full iterates are recorded (not projections)."""
    ends = result.aux.get(m, {}).get("end_iterate")
    gd = result.iterates.get("gd")
    if ends is None or gd is None or result.config.get("record_iterates") is not True or ends.shape != gd.shape:
        return {}
    dist = np.linalg.norm(np.asarray(ends, float) - np.asarray(gd, float), axis=1)
    dist = dist[np.isfinite(dist)]
    return {"ends_dist_mean": float(dist.mean()), "ends_dist_max": float(dist.max())} if dist.size else {}


def _last(series) -> float:
    if series is None:
        return np.nan
    s = series.dropna()
    return float(s.iloc[-1]) if len(s) else np.nan


def format_table(frame: pd.DataFrame) -> str:
    cols = [c for c in ("method", "status", "final_loss", "final_sharpness", "compared_to", "dist_mean",
                        "dist_max", "ends_dist_mean", "ends_dist_max", "loss_pred_err", "grad_evals_per_step", "hvps",
                        "wall_s", "sharpness_nan", "rate_eig_failures", "onset_step", "first_spike_step", "final_gfs_sharpness", "gfs_evals", "gfs_nan", "gfs_increases") if c in frame]
    return frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}")
