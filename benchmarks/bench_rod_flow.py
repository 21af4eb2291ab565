"""Rod flow: cost (gradient evaluations, wall time, step sizes per unit time) against GD, accuracy against
tolerance, and accuracy against GD on every toy problem compared with gradient flow and central flow.

    .venv/bin/python benchmarks/bench_rod_flow.py            # prints three tables
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

import rodflow
from rodflow import problems, processes

PROBLEM, LR, STEPS = "sharp-valley", 0.3, 1500
TOLERANCES = ((1e-4, 1e-6, 1e-2), (1e-6, 1e-8, 1e-3), (1e-8, 1e-10, 1e-4), (1e-10, 1e-12, 1e-6))
TOYS = (("quadratic", 0.1), ("quartic", 0.2), ("self-stabilization", 0.1), ("sharp-valley", 0.3),
        ("scalar-network", 0.2), ("squared-regression", 0.05))


def gd_reference(prob, lr, steps):
    gd = processes.make("gd", prob, lr)
    gd.start(prob.w0)
    W = [gd.point().clone()]
    t0 = time.perf_counter()
    with prob.counting() as spent:
        for _ in range(steps + 1):
            gd.advance()
            W.append(gd.point().clone())
    return torch.stack(W).numpy(), spent.grad_evals, time.perf_counter() - t0


def rod_cost(prob, lr, steps, rtol, atol, rod_rtol, W):
    rf = processes.make("rod_flow", prob, lr, rtol=rtol, atol=atol, rod_rtol=rod_rtol)
    rf.start(prob.w0)
    mid = 0.5 * (W[1:] + W[:-1])
    d_mid, d_end, accepted = [], [], []
    t0 = time.perf_counter()
    with prob.counting() as spent:
        for t in range(steps + 1):
            if t:
                n = rf.ode.naccept
                rf.advance()
                accepted.append(rf.ode.naccept - n)
            c, delta = rf.centre.numpy(), rf.delta.numpy()
            d_mid.append(np.linalg.norm(c - mid[t]))
            d_end.append(np.linalg.norm(c - (-1) ** t * delta - W[t]))
    wall = time.perf_counter() - t0
    acc = np.array(accepted, float)
    half = len(acc) // 2
    return dict(rtol=rtol, atol=atol, rod_rtol=rod_rtol, grad_evals_per_step=spent.grad_evals / steps,
                wall_ms_per_step=1e3 * wall / steps, mean_h=steps / max(1, rf.ode.naccept),
                mean_h_first_half=half / max(1, acc[:half].sum()), mean_h_second_half=(len(acc) - half) / max(1, acc[half:].sum()),
                rejected=rf.ode.nreject, dist_mid_mean=float(np.mean(d_mid)), dist_mid_max=float(np.max(d_mid)),
                ends_dist_mean=float(np.mean(d_end)))


def cost_table() -> pd.DataFrame:
    prob = problems.make(PROBLEM)
    W, gd_evals, gd_wall = gd_reference(prob, LR, STEPS)
    rows = [dict(method="gd", grad_evals_per_step=gd_evals / (STEPS + 1), wall_ms_per_step=1e3 * gd_wall / (STEPS + 1),
                 mean_h=1.0)]
    for rtol, atol, rod_rtol in TOLERANCES:
        rows.append(dict(method="rod_flow", **rod_cost(prob, LR, STEPS, rtol, atol, rod_rtol, W)))
    return pd.DataFrame(rows)


def accuracy_table(steps: int = 400) -> pd.DataFrame:
    methods = [m for m in ("gd", "gradient_flow", "central_flow", "rod_flow") if m in processes.REGISTRY]
    frames = []
    for name, lr in TOYS:
        res = rodflow.simulate(problems.make(name), lr, steps, methods=methods, sharpness_every=0, progress=False)
        s = res.summary()
        s.insert(0, "problem", name)
        frames.append(s[[c for c in ("problem", "method", "status", "compared_to", "dist_mean", "dist_max",
                                     "ends_dist_mean", "ends_dist_max", "loss_pred_err", "grad_evals_per_step")
                         if c in s]])
    return pd.concat(frames, ignore_index=True)


def run() -> dict:
    torch.set_num_threads(1)
    return {"cost": cost_table(), "accuracy": accuracy_table()}


if __name__ == "__main__":
    out = run()
    pd.set_option("display.width", 200)
    fmt = lambda x: f"{x:.3g}"  # noqa: E731
    print(f"# cost on {PROBLEM}, lr={LR}, {STEPS} steps (per unit GD time)")
    print(out["cost"].to_string(index=False, float_format=fmt))
    print("\n# accuracy against GD on the toys (400 steps, suggested lr)")
    print(out["accuracy"].to_string(index=False, float_format=fmt))
