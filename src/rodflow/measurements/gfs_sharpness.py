"""GFS sharpness φ at a method's point (``rodflow.gfs.GFSSolver``, warm-started along the run): columns
``gfs_sharpness``, ``gfs_converged``, ``gfs_error``, its work (``gfs_grad_evals``, ``gfs_hvps``, ``gfs_jvps``) and
``gfs_reason`` when φ is NaN or undefined."""

from __future__ import annotations

import math
from typing import Any, Mapping

from . import register
from .base import Measurement


@register("gfs")
class GFSSharpness(Measurement):
    """Built in (``gfs_every``, ``gfs_options``). The solver is created at the first evaluation (a float32
    problem gets a float64 copy then), so a run that never evaluates φ pays nothing."""

    name = "gfs"
    state_key = "gfs"
    warn = False  # an undefined φ (no finite minimiser) is a result, with its reason, not a fault
    builtin = "set by the run settings gfs_every, gfs_options"

    def __init__(self, problem, seed: int, options: Mapping[str, Any] | None = None):
        super().__init__(problem, seed)
        self.options = {"seed": self.seed, **dict(options or {})}
        self._solver = None

    def solver(self):
        if self._solver is None:
            from ..gfs import GFSSolver

            self._solver = GFSSolver(self.problem, **self.options)
        return self._solver

    def measure(self, w, step: int) -> dict[str, Any]:
        phi = self.solver()(w)
        row = phi.as_row()
        if phi.reason:
            row["gfs_reason"] = phi.reason
        return row

    def failed(self, reason: str) -> dict[str, Any]:
        return {"gfs_sharpness": math.nan, "gfs_converged": 0.0, "gfs_reason": reason}

    def state_dict(self) -> dict[str, Any]:
        return {} if self._solver is None else self._solver.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:  # the solver's warm starts: φ after a resume is bitwise the same
            self.solver().load_state_dict(state)
