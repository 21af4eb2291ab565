"""Sharpness: the top ``k`` Hessian eigenvalues at a method's point by warm-started LOBPCG on HVPs
(``rodflow.linalg.eigs.SharpnessTracker``); an unconverged or failed solve is NaN with its reason."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..linalg.eigs import SharpnessTracker
from . import register
from .base import Measurement


@register("sharpness")
class Sharpness(Measurement):
    """Built in (``sharpness_every``, ``neigs``, ``eig_tol``): columns ``sharpness`` (the top eigenvalue),
    ``eig_1..eig_k`` when k > 1, ``eig_converged``, ``eig_residual`` (largest relative residual),
    ``sharpness_hvps``; per-step array ``eigs`` (k values) when it is measured at all."""

    name = "sharpness"
    state_key = "eig"
    builtin = "set by the run settings sharpness_every, neigs, eig_tol"

    def __init__(self, problem, seed: int, k: int = 1, tol: float | None = None):
        super().__init__(problem, seed)
        self.k = k
        self.tracker = SharpnessTracker(problem, k, tol, seed=seed)

    def blank(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sharpness": math.nan}
        if self.k > 1:
            out.update({f"eig_{i + 1}": math.nan for i in range(self.k)})
        if self.every:  # the per-step array exists when the sharpness is measured at all
            out["eigs"] = np.full(self.k, np.nan)
        return out

    def measure(self, w, step: int) -> dict[str, Any]:
        res = self.tracker(w)
        row: dict[str, Any] = {
            "sharpness_hvps": res.hvps,
            "eig_converged": float(res.converged),
            "eig_residual": float(res.residuals.max()) / max(float(res.values.abs().max()), 1e-300),
        }
        if not res.converged:  # an unconverged Rayleigh quotient is not a measurement: NaN, with the reason
            row["sharpness_reason"] = res.reason
            return row
        eigs = np.full(self.k, np.nan)
        eigs[: res.values.numel()] = res.values.double().cpu().numpy()
        row["sharpness"] = float(eigs[0])
        if self.k > 1:
            row.update({f"eig_{i + 1}": float(eigs[i]) for i in range(self.k)})
        row["eigs"] = eigs
        return row

    def failed(self, reason: str) -> dict[str, Any]:
        return {"eig_converged": 0.0, "sharpness_reason": reason}

    def warning(self, method: str, step: int, reason: str, raised: bool) -> str:
        what = "failed" if raised else "did not converge"
        return (f"{method}: the sharpness at step {step} {what} ({reason}); recorded as NaN "
                "(column sharpness_reason; count in the summary's sharpness_nan)")

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state, device=self.problem.device)
