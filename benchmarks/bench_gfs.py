"""Cost of one GFS-sharpness evaluation on a small tanh MLP: rodflow.gfs (adaptive Dormand-Prince + Newton-CG
polish) against fixed-step RK4 at step 1/S (the 2021 edge-of-stability code's method), same φ accuracy.

    .venv/bin/python benchmarks/bench_gfs.py
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_gfs import tiny_mlp  # noqa: E402

from rodflow.gfs import gfs_sharpness  # noqa: E402
from rodflow.linalg.eigs import top_eigs  # noqa: E402


def rk4_gfs(p, w, gtol: float, refine: int = 1, max_steps: int = 2_000_000):
    """Fixed-step RK4 at h = 1/(refine·S(w0)) until ‖∇L‖ < gtol, then the top eigenvalue."""
    S = float(top_eigs(lambda V: p.hvp_block(w, V), p.d, 1).values[0])
    h = 1.0 / (refine * S)
    x = w.clone()
    for k in range(max_steps):
        k1 = -p.grad(x)
        if float(k1.norm()) < gtol:
            break
        k2 = -p.grad(x + 0.5 * h * k1)
        k3 = -p.grad(x + 0.5 * h * k2)
        k4 = -p.grad(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return float(top_eigs(lambda V: p.hvp_block(x, V), p.d, 1).values[0]), k


def run(gtol: float = 1e-6, max_refine: int = 64) -> dict:
    """GFS vs RK4 at h = 1/S; then h = 1/(2S), 1/(4S), ... until RK4's φ is as accurate as the GFS's (B5)."""
    torch.set_num_threads(1)
    p = tiny_mlp()
    ref = gfs_sharpness(p, tol=1e-8, rtol=1e-10, atol=1e-12).sharpness
    out = {"reference_phi": ref, "d": p.d, "rk4_gtol": gtol}
    p.counts.grad_evals = p.counts.hvps = 0
    t = time.perf_counter()
    r = gfs_sharpness(p)
    gfs = dict(phi=r.sharpness, rel_err=abs(r.sharpness - ref) / ref, grad_evals=r.grad_evals, hvps=r.hvps,
               wall_s=time.perf_counter() - t)
    out["gfs"] = gfs
    refine = 1
    while True:
        p.counts.grad_evals = p.counts.hvps = 0
        t = time.perf_counter()
        phi, steps = rk4_gfs(p, p.w0, gtol, refine)
        row = dict(phi=phi, rel_err=abs(phi - ref) / ref, grad_evals=p.counts.grad_evals, hvps=p.counts.hvps,
                   wall_s=time.perf_counter() - t, steps=steps, h_times_S=1.0 / refine)
        out[f"rk4_h1/{refine}S"] = row
        if row["rel_err"] <= gfs["rel_err"] or refine >= max_refine:
            break
        refine *= 2
    out["rk4_matched"] = row["rel_err"] <= gfs["rel_err"]
    out["rk4_refine_needed"] = refine
    # an HVP costs about two gradient evaluations: count the GFS's work in gradient-evaluation equivalents
    out["B5_grad_eval_ratio"] = (gfs["grad_evals"] + 2 * gfs["hvps"]) / row["grad_evals"]
    out["B5_wall_ratio"] = gfs["wall_s"] / row["wall_s"]
    out["B5_grad_eval_ratio_vs_h1S"] = (gfs["grad_evals"] + 2 * gfs["hvps"]) / out["rk4_h1/1S"]["grad_evals"]
    out["B5_wall_ratio_vs_h1S"] = gfs["wall_s"] / out["rk4_h1/1S"]["wall_s"]
    return out


if __name__ == "__main__":
    res = run()
    print(f"tiny tanh MLP, d = {res['d']}, reference φ = {res['reference_phi']:.10g}")
    print(f"{'method':18s} {'φ rel err':>10s} {'grad evals':>11s} {'HVPs':>6s} {'wall s':>8s}")
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k:18s} {v['rel_err']:10.2e} {v['grad_evals']:11d} {v['hvps']:6d} {v['wall_s']:8.2f}")
    print(f"B5: GFS / matched RK4: work {res['B5_grad_eval_ratio']:.3f} (HVP = 2 grads), wall {res['B5_wall_ratio']:.3f}")
