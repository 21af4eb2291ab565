"""Central flow and GD on the reference swish MLP, uninterrupted, against the public reference implementation.

    .venv/bin/python benchmarks/bench_central_flow.py [--steps 1000] [--ref PATH] [--eig-tol T] [--neigs K]

Runs ``rodflow.simulate`` (methods gd, central_flow; no extra sharpness measurement) from the reference's w0
at lr 0.2 in float64 and prints: iterate agreement before and after the onset of the edge of stability,
predicted-loss and tr X agreement, GD agreement until it turns chaotic, predicted vs Gaussian-smoothed GD
loss and squared gradient norm, and cost (seconds, HVPs and third-derivative products per step) next to
the reference's wall time (shared/reference/README.md §6: 76.9 s total, 71.5 s without row 0 at lr 0.2;
53.3 s / 46.6 s at lr 0.1).
Uses the full fixture if present, else the compact test extract (fewer comparable rows). ``--ref`` may
also point to the lr = 0.1 fixture (no EoS: X ≡ 0, plain Euler gradient flow).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rodflow  # noqa: E402
from rodflow.problems.reference_mlp import mlp_problem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT.parent / "shared" / "reference" / "central_flow_mlp_swish.npz"
COMPACT = ROOT / "tests" / "data" / "central_flow_reference.npz"
# the reference's central-flow wall time (README §6): lr -> (total, excluding row 0)
REF_WALL = {0.2: (76.9, 71.5), 0.1: (53.3, 46.6)}
ONSET = 489


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (truncated at 4σ, renormalised at the edges)."""
    r = int(4 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    num = np.convolve(x, k, mode="same")
    den = np.convolve(np.ones_like(x), k, mode="same")
    return num / den


def run(steps: int = 1000, ref_path: str | None = None, eig_tol: float | None = None, neigs: int | None = None) -> dict:
    torch.set_num_threads(1)
    path = Path(ref_path) if ref_path else (FULL if FULL.is_file() else COMPACT)
    with np.load(path) as d:
        ref = {k: d[k] for k in d.files}
    full = "w_cf" in ref and ref["w_cf"].shape[0] == ref["cf_loss"].shape[0]
    lr = float(ref["lr"])
    problem = mlp_problem(ref["x"], ref["y"], ref["w0"])
    opts = {k: v for k, v in (("eig_tol", eig_tol), ("neigs", neigs)) if v is not None}
    start = time.perf_counter()
    result = rodflow.simulate(problem, lr, steps, methods=("gd", "central_flow"), sharpness_every=0,
                              options={"central_flow": opts}, progress=False)
    total = time.perf_counter() - start
    cf = result.method("central_flow")
    gd = result.method("gd")
    T = min(steps, ref["cf_loss"].shape[0] - 1)
    t = np.arange(T + 1)
    out: dict = {"steps": steps, "reference": str(path), "status": dict(result.status)}
    w = result.iterates["central_flow"][: T + 1]
    if full:
        err = np.abs(w - ref["w_cf"][: T + 1]).max(axis=1)
        dist = np.linalg.norm(w - ref["w_cf"][: T + 1], axis=1)
        out["cf_max_abs_err_pre_onset"] = float(err[t <= ONSET].max())
        out["cf_max_abs_err_post_onset"] = float(err[t > ONSET].max()) if T > ONSET else float("nan")
        out["cf_dist_end"] = float(dist[-1])
        wg = result.iterates["gd"][: min(T, 550) + 1]
        gerr = np.abs(wg - ref["w_gd"][: wg.shape[0]]).max(axis=1)
        out["gd_max_abs_err_to_520"] = float(gerr[:521].max())
        out["gd_max_abs_err_to_550"] = float(gerr.max())
    pred = cf["loss_pred"].to_numpy()[: T + 1]
    rel = np.abs(pred / ref["cf_loss_pred"][: T + 1] - 1)
    out["loss_pred_max_rel_err"] = float(rel.max())
    trX = cf["trace_sigma"].to_numpy()[: T + 1] / lr
    active = (t >= 500) & (ref["cf_X_trace"][: T + 1] > 0)
    out["X_zero_where_reference_zero"] = bool((trX[ref["cf_X_trace"][: T + 1] == 0] == 0).all())
    if active.any():
        out["trX_max_rel_err_t500+"] = float(np.abs(trX[active] / ref["cf_X_trace"][: T + 1][active] - 1).max())
    out["first_active_step"] = int(t[trX > 0][0]) if (trX > 0).any() else None
    # predictions of time-averaged GD (σ = 50 Gaussian smoothing, t in [592, 900] as the reference README)
    if T >= 900:
        gl = smooth(gd["loss"].to_numpy()[: T + 1], 50)
        win = slice(592, 901)
        out["loss_pred_vs_smoothed_gd_mean_rel"] = float(np.mean(pred[win] / gl[win] - 1))
        out["loss_pred_vs_smoothed_gd_max_rel"] = float(np.max(np.abs(pred[win] / gl[win] - 1)))
        gsq = smooth(gd["grad_norm"].to_numpy()[: T + 1] ** 2, 50)
        gp = cf["grad_sq_pred"].to_numpy()[: T + 1]
        out["grad_sq_pred_vs_smoothed_gd_mean_rel"] = float(np.mean(gp[win] / gsq[win] - 1))
        gflow = cf["grad_norm"].to_numpy()[: T + 1] ** 2
        out["grad_sq_flow_vs_smoothed_gd_mean_rel"] = float(np.mean(gflow[win] / gsq[win] - 1))
    wall = cf["wall_s"].to_numpy()
    out["cf_wall_s"] = float(wall.sum())
    out["cf_wall_s_excl_row0"] = float(wall[1:].sum())
    out["gd_wall_s"] = float(gd["wall_s"].sum())
    out["total_wall_s"] = total
    ref_total, ref_excl = REF_WALL[round(lr, 6)]
    out["ref_wall_s"], out["ref_wall_s_excl_row0"] = ref_total, ref_excl
    out["ratio_vs_reference"] = out["cf_wall_s"] / ref_total
    out["ratio_vs_reference_excl_row0"] = out["cf_wall_s_excl_row0"] / ref_excl
    pre, post = cf.index <= ONSET, cf.index > ONSET
    for name, mask in (("pre", pre), ("post", post)):
        if mask.any():
            out[f"cf_hvps_per_step_{name}"] = float(cf["hvps"][mask].mean())
            out[f"cf_d3_per_step_{name}"] = float(cf["d3"][mask].mean())
            out[f"cf_s_per_step_{name}"] = float(cf["wall_s"][mask].mean())
    out["max_qp_residual"] = float(np.nanmax(cf["qp_residual"].to_numpy()))
    out["max_n_critical"] = int(cf["n_critical"].max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ref", default=None)
    ap.add_argument("--eig-tol", type=float, default=None, help="central_flow eig_tol (default: its default)")
    ap.add_argument("--neigs", type=int, default=None, help="central_flow neigs (default: its default)")
    args = ap.parse_args()
    out = run(args.steps, args.ref, args.eig_tol, args.neigs)
    width = max(len(k) for k in out)
    print(f"{'quantity':<{width}}  value")
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"\nwall time: ours {out['cf_wall_s']:.1f} s vs reference {out['ref_wall_s']} s "
          f"(ratio {out['ratio_vs_reference']:.2f}); excluding row 0: {out['cf_wall_s_excl_row0']:.1f} s vs "
          f"{out['ref_wall_s_excl_row0']} s (ratio {out['ratio_vs_reference_excl_row0']:.2f})")


if __name__ == "__main__":
    main()
