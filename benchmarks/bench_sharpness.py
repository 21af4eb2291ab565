"""Sharpness tracking along a GD run: HVPs per call of the warm-started LOBPCG (what `simulate` does) against
a cold start from a random block at every call (what a tracker without memory pays), same tolerance."""

from __future__ import annotations

import time

import torch

import rodflow
from rodflow.linalg.eigs import top_eigs

from bench_hvp import mlp_problem


def run(steps: int = 60, tol: float = 1e-4) -> dict:
    problem = mlp_problem(32, n=256)
    res = rodflow.simulate(problem, lr=0.5, steps=steps, methods=("gd",), sharpness_every=0, progress=False)
    ws = torch.as_tensor(res.iterates["gd"])
    warm_basis, warm, cold, errs = None, 0, 0, []
    t_warm = t_cold = 0.0
    for t in range(steps + 1):
        w = ws[t]
        mv = lambda V: problem.hvp_block(w, V)  # noqa: E731
        s = time.perf_counter()
        rw = top_eigs(mv, problem.d, 1, X0=warm_basis, tol=tol, generator=torch.Generator().manual_seed(0))
        t_warm += time.perf_counter() - s
        warm_basis = rw.basis
        s = time.perf_counter()
        rc = top_eigs(mv, problem.d, 1, tol=tol, generator=torch.Generator().manual_seed(t + 1))
        t_cold += time.perf_counter() - s
        warm += rw.hvps
        cold += rc.hvps
        errs.append(abs(float(rw.values[0] - rc.values[0])) / abs(float(rc.values[0])))
    out = dict(d=problem.d, calls=steps + 1, warm_hvps_per_call=warm / (steps + 1), cold_hvps_per_call=cold / (steps + 1),
               hvp_ratio=warm / cold, wall_ratio=t_warm / t_cold, max_rel_diff=max(errs))
    print(f"d={problem.d}: warm {out['warm_hvps_per_call']:.1f} HVPs/call, cold {out['cold_hvps_per_call']:.1f}; "
          f"ratio {out['hvp_ratio']:.2f} (wall {out['wall_ratio']:.2f}); max rel diff {out['max_rel_diff']:.1e}")
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    run()
