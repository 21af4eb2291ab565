"""Sharpness tracking along a GD run (B4): HVPs per call of the warm-started LOBPCG (what `simulate` does)
against a cold Lanczos call per point (scipy.sparse.linalg.eigsh on a LinearOperator of HVPs from a random
start: what the 2021 edge-of-stability code does) and against a cold LOBPCG start, all at tolerance 1e-4, with
each one's achieved eigenvalue error against a tight solve.

    .venv/bin/python benchmarks/bench_sharpness.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

import rodflow
from rodflow.linalg.eigs import top_eigs

from bench_hvp import mlp_problem


def lanczos_cold(problem, w, tol: float, seed: int) -> tuple[float, int]:
    """Top eigenvalue by ARPACK Lanczos (eigsh, which='LA') from a random start; (value, HVPs)."""
    calls = [0]

    def matvec(v):
        calls[0] += 1
        return problem.hvp(w, torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))).numpy()

    op = LinearOperator((problem.d, problem.d), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(problem.d)
    val = eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return float(val[0]), calls[0]


def run(steps: int = 60, tol: float = 1e-4, quick: bool = False) -> dict:
    if quick:
        steps = 30
    problem = mlp_problem(32, n=256)
    res = rodflow.simulate(problem, lr=0.5, steps=steps, methods=("gd",), sharpness_every=0, progress=False)
    ws = torch.as_tensor(res.iterates["gd"])
    warm_basis, warm, cold, lz = None, 0, 0, 0
    t_warm = t_cold = t_lz = 0.0
    err_warm, err_cold, err_lz = [], [], []
    for t in range(steps + 1):
        w = ws[t]
        mv = problem.hvp_operator(w)
        exact = float(top_eigs(mv, problem.d, 1, tol=1e-11, generator=torch.Generator().manual_seed(99)).values[0])
        s = time.perf_counter()
        rw = top_eigs(mv, problem.d, 1, X0=warm_basis, tol=tol, generator=torch.Generator().manual_seed(0))
        t_warm += time.perf_counter() - s
        warm_basis = rw.basis
        s = time.perf_counter()
        rc = top_eigs(mv, problem.d, 1, tol=tol, generator=torch.Generator().manual_seed(t + 1))
        t_cold += time.perf_counter() - s
        s = time.perf_counter()
        vl, nl = lanczos_cold(problem, w, tol, seed=t + 1)
        t_lz += time.perf_counter() - s
        warm += rw.hvps
        cold += rc.hvps
        lz += nl
        err_warm.append(abs(float(rw.values[0]) - exact) / exact)
        err_cold.append(abs(float(rc.values[0]) - exact) / exact)
        err_lz.append(abs(vl - exact) / exact)
    n = steps + 1
    out = dict(d=problem.d, calls=n, tol=tol, warm_hvps_per_call=warm / n, cold_lobpcg_hvps_per_call=cold / n,
               eigsh_hvps_per_call=lz / n, hvp_ratio_vs_eigsh=warm / lz, wall_ratio_vs_eigsh=t_warm / t_lz,
               hvp_ratio_vs_cold_lobpcg=warm / cold, wall_ratio_vs_cold_lobpcg=t_warm / t_cold,
               max_rel_err_warm=max(err_warm), max_rel_err_cold_lobpcg=max(err_cold), max_rel_err_eigsh=max(err_lz))
    print(f"d={problem.d}, {n} calls, tol {tol:g}: warm LOBPCG {out['warm_hvps_per_call']:.1f} HVPs/call "
          f"(max rel err {out['max_rel_err_warm']:.1e}); cold eigsh {out['eigsh_hvps_per_call']:.1f} "
          f"({out['max_rel_err_eigsh']:.1e}); cold LOBPCG {out['cold_lobpcg_hvps_per_call']:.1f} "
          f"({out['max_rel_err_cold_lobpcg']:.1e}); warm/eigsh HVPs {out['hvp_ratio_vs_eigsh']:.3f}, "
          f"wall {out['wall_ratio_vs_eigsh']:.3f}")
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    run()
