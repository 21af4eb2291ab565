"""Measurements behind rod flow's theory checks (tests/test_rod_flow.py, ``rodflow theory``, docs/rod_flow.md).

Everything here measures the integrated ODE or GD itself; no prediction is computed from the formula it is
compared with. The rod is integrated by Dormand-Prince at its tight default tolerances unless told otherwise:
these checks are about the equations, and the integrator must not be what limits them (the checked rates
agree to 2e-4; the cheap default integrator's error at its tolerance is ~2e-3 on them).
"""

from __future__ import annotations

import numpy as np
import torch

from . import processes
from .problem import Problem
from .simulate import simulate


def run_gd(problem: Problem, lr: float, steps: int) -> np.ndarray:
    """GD iterates w_0..w_steps as an array (steps + 1, d) (a ``simulate`` run of GD alone)."""
    result = simulate(problem, lr=lr, steps=steps, methods=["gd"], sharpness_every=0, progress=False,
                      diverge_factor=1e300)
    return np.asarray(result.iterates["gd"])


def run_rod(problem: Problem, lr: float, steps: int, c=None, delta=None, **options) -> dict[str, np.ndarray]:
    """Rod flow at t = 0..steps (from GD's first step, or from the rod (c, δ) when given).

    Returns arrays ``centre``, ``delta``, ``end_iterate`` (steps + 1, d) and ``rod_length``, ``secant``,
    ``loss_pred`` (steps + 1,), plus ``nfev`` (right-hand-side calls of the integrator). From GD's first step
    this is a ``simulate`` run; a given rod (c, δ) is a start ``simulate`` does not offer, so the process is
    stepped here.
    """
    options = {"integrator": "dopri"} | options
    if c is None:
        result = simulate(problem, lr=lr, steps=steps, methods=["rod_flow"], sharpness_every=0, progress=False,
                          options={"rod_flow": options}, diverge_factor=1e300)
        rows, arrays = result.method("rod_flow"), result.aux["rod_flow"]
        return {"centre": np.asarray(result.iterates["rod_flow"]), "delta": np.asarray(arrays["delta"]),
                "end_iterate": np.asarray(arrays["end_iterate"]), "rod_length": rows["rod_length"].to_numpy(),
                "secant": rows["secant_sharpness"].to_numpy(), "loss_pred": rows["loss_pred"].to_numpy(),
                "nfev": np.array(int(rows["ode_nfev"].iloc[-1]))}
    rf = processes.make("rod_flow", problem, lr, **options)
    rf.start_state(torch.as_tensor(np.asarray(c)), torch.as_tensor(np.asarray(delta)))
    keys = ("centre", "delta", "end_iterate", "rod_length", "secant", "loss_pred")
    rec: dict[str, list] = {k: [] for k in keys}
    for t in range(steps + 1):
        if t:
            rf.advance()
        obs = rf.observe()
        rec["centre"].append(obs.point.numpy().copy())
        rec["delta"].append(obs.vectors["delta"])
        rec["end_iterate"].append(obs.vectors["end_iterate"])
        rec["rod_length"].append(obs.scalars["rod_length"])
        rec["secant"].append(obs.scalars["secant_sharpness"])
        rec["loss_pred"].append(obs.scalars["loss_pred"])
    out = {k: np.array(v) for k, v in rec.items()}
    out["nfev"] = np.array(rf.ode.nfev)
    return out


def fit_rate(t: np.ndarray, length: np.ndarray) -> float:
    """Least-squares slope of log(length) against t: the measured exponential growth rate."""
    return float(np.polyfit(np.asarray(t, float), np.log(np.asarray(length, float)), 1)[0])


def onset_step(amplitude, level: float) -> int | None:
    """First step after the amplitude's minimum at which it reaches ``level`` (None: never)."""
    a = np.asarray(amplitude, float)
    a = np.where(np.isfinite(a), a, np.inf)
    tmin = int(np.argmin(a))
    above = np.nonzero(a[tmin:] >= level)[0]
    return int(tmin + above[0]) if above.size else None


def top_sharpness(problem: Problem, w) -> float:
    """λ_max of the dense Hessian at w (small problems)."""
    H = problem.hessian(torch.as_tensor(np.asarray(w), dtype=problem.dtype))
    return float(torch.linalg.eigvalsh(H)[-1])


def map_rod_growth(rule, lam: float, lr: float = 0.1, step: float = 5000.0) -> tuple[float, float]:
    """The rod of an optimizer's map on L = ½λw² (d = 1), linearised at the minimum with the momentum at rest and
    the second moment at 1 (late in a run: step count ``step``, NAdam's μ product 0): (the largest real part of
    the eigenvalues of ∂(dδ/dt)/∂δ, measured by central differences of the rod field; λ* = threshold · P, the
    curvature at which the optimizer's threshold on λ_max(P⁻¹H) is reached with the P its step uses)."""
    problem = Problem.from_loss(lambda w: 0.5 * lam * (w * w).sum(), torch.zeros(1, dtype=torch.float64),
                                check=False)
    rod = processes.make("rod_flow", problem, lr, optimizer=rule, seed="none")
    rod.start(torch.ones(1, dtype=torch.float64))
    n = rod.n_rod
    y = rod.y.clone()
    y[: 2 * n] = 0.0  # centre at the minimum, momentum at rest, no rod
    aux = y[2 * n:]
    aux[:] = 1.0
    if "mu_product" in rod.aux_keys:
        aux[rod.aux_keys.index("mu_product")] = 0.0
    aux[-1] = step
    h = 1e-7
    J = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        yp, ym = y.clone(), y.clone()
        yp[n + j], ym[n + j] = h, -h
        J[:, j] = (rod._map_field(0.0, yp)[n:2 * n] - rod._map_field(0.0, ym)[n:2 * n]) / (2 * h)
    state = rule.init(torch.zeros(1, dtype=torch.float64))
    state.update({k: torch.ones(1, dtype=torch.float64) for k in rule.smooth})
    if "mu_product" in state:
        state["mu_product"] = torch.zeros(1, dtype=torch.float64)
    state = rule.update_state(state, torch.zeros(1, dtype=torch.float64), step)  # the state the step uses
    P = rule.preconditioner(state, step)
    P = 1.0 if P is None else float(P)
    return float(torch.linalg.eigvals(J).real.max()), rule.threshold(state, lr, step) * P
