"""Preconditioned sharpness λ_max(P⁻¹H) of an optimizer with a preconditioner (RMSProp, Adam, NAdam), as the top
eigenvalue of the symmetric P^{-1/2} H P^{-1/2}, by warm-started LOBPCG on HVPs; with the optimizer's stability
threshold on it (column ``threshold``, recorded by the processes)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..linalg.eigs import top_eigs
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
        self.tol = tol
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.basis: torch.Tensor | None = None

    def blank(self) -> dict[str, Any]:
        return {"preconditioned_sharpness": math.nan}

    def record(self, observation, step: int, reference=None) -> dict[str, Any]:
        P = observation.preconditioner
        if P is None:
            return {"preconditioned_sharpness_reason": "the process shows no preconditioner"}
        w = observation.point
        scale = P.to(w.dtype).rsqrt().reshape(-1, 1)  # (d, 1) or (1, 1) for a scalar preconditioner
        hvp = self.problem.hvp_operator(w)
        res = top_eigs(lambda V: scale * hvp(scale * V), self.problem.d, 1, X0=self.basis, tol=self.tol,
                       dtype=w.dtype, generator=self.generator, device=w.device)
        row: dict[str, Any] = {"preconditioned_sharpness_hvps": res.hvps,
                               "pre_eig_converged": float(res.converged)}
        if bool(torch.isfinite(res.basis).all()):
            self.basis = res.basis
        if not res.converged:
            row["preconditioned_sharpness_reason"] = res.reason
            return row
        row["preconditioned_sharpness"] = float(res.values[0])
        return row

    def failed(self, reason: str) -> dict[str, Any]:
        return {"pre_eig_converged": 0.0, "preconditioned_sharpness_reason": reason}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.basis is None else {"basis": self.basis.detach().cpu().numpy().copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.basis = torch.as_tensor(state["basis"], device=self.problem.device) if "basis" in state else None
