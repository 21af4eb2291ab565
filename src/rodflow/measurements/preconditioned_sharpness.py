"""Preconditioned sharpness λ_max(P⁻¹H) of an optimizer with a preconditioner (RMSProp, Adam, NAdam), as the top
eigenvalue of the symmetric P^{-1/2} H P^{-1/2}, by warm-started LOBPCG on HVPs; with the optimizer's stability
threshold on it (column ``threshold``, recorded by the processes)."""

from __future__ import annotations

import math
from typing import Any

from ..linalg.eigs import SharpnessTracker
from . import register
from .base import Measurement


@register("preconditioned_sharpness")
class PreconditionedSharpness(Measurement):
    """Built in (runs whose optimizer has a preconditioner; every ``sharpness_every`` steps): columns
    ``preconditioned_sharpness``, ``pre_eig_converged``, ``preconditioned_sharpness_hvps``; NaN with
    ``preconditioned_sharpness_reason`` when the solve does not converge or the process shows no preconditioner.
    P is the one the method's next step uses (GD: the state updated with ∇L(w_t))."""

    name = "preconditioned_sharpness"
    state_key = "pre_eig"
    builtin = "set by the run settings optimizer and sharpness_every"

    def __init__(self, problem, seed: int, tol: float | None = None):
        super().__init__(problem, seed)
        self.tracker = SharpnessTracker(problem, 1, tol, seed=seed + 7919)

    def blank(self) -> dict[str, Any]:
        return {"preconditioned_sharpness": math.nan}

    def record(self, observation, step: int, reference=None) -> dict[str, Any]:
        P = observation.preconditioner
        if P is None:
            return {"preconditioned_sharpness_reason": "the process shows no preconditioner"}
        res = self.tracker(observation.point, scale=P.rsqrt())  # P^{-1/2} H P^{-1/2}
        row: dict[str, Any] = {"preconditioned_sharpness_hvps": res.hvps, "pre_eig_converged": float(res.converged)}
        if not res.converged:
            row["preconditioned_sharpness_reason"] = res.reason
            return row
        row["preconditioned_sharpness"] = float(res.values[0])
        return row

    def failed(self, reason: str) -> dict[str, Any]:
        return {"pre_eig_converged": 0.0, "preconditioned_sharpness_reason": reason}

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state, device=self.problem.device)
