"""The stiffness of a vector field, estimated from evaluations of the field alone.

``PowerRadius`` runs a nonlinear power iteration on the Jacobian J of f at y, with J v approximated by the
forward difference (f(y + εv) − f(y))/ε: no Hessian, only field evaluations, each counted by the integrator
that owns it. It is warm-started from the last direction, so after the first call a few evaluations suffice
(the Jacobian changes slowly along a trajectory). The estimate ‖J v‖/‖v‖ approaches the dominant eigenvalue's
modulus from below for the near-symmetric Jacobians of gradient and rod flows; callers multiply it by a safety
factor, and an integrator that still meets instability sees it as a rejected step and re-estimates.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .base import Tensor, restore, snapshot


class PowerRadius:
    """Spectral radius of ∂f/∂y by a warm-started nonlinear power iteration (``max_iter`` evaluations at most,
    stopping when two successive estimates agree to ``tol``)."""

    def __init__(self, max_iter: int = 20, tol: float = 0.01, seed: int = 0):
        self.max_iter, self.tol, self.seed = int(max_iter), float(tol), int(seed)
        self.v: Tensor | None = None
        self.last_iters = 0

    def __call__(self, f: Callable[[Tensor], Tensor], y: Tensor, fy: Tensor) -> float:
        v = self.v
        if v is None or v.shape != y.shape or not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
            # cold start from the field itself (as RKC's authors do): it has components along the fast modes,
            # and it keeps symmetries of f exact (the rod flow's δ → −δ); random only at a stationary point
            v = fy.clone()
            if not (bool(torch.isfinite(v).all()) and float(v.norm()) > 0):
                gen = torch.Generator(device="cpu").manual_seed(self.seed)
                v = torch.randn(y.shape, generator=gen, dtype=y.dtype, device="cpu").to(y.device)
        # a difference step of √ε relative to y: large enough to be resolved, small enough to be linear
        eps = math.sqrt(float(torch.finfo(y.dtype).eps)) * max(float(y.norm()), 1.0)
        estimate, previous = math.nan, math.nan
        self.last_iters = 0
        for _ in range(self.max_iter):
            v = v / v.norm()
            jv = (f(y + eps * v) - fy) / eps
            self.last_iters += 1
            estimate = float(jv.norm())
            if not math.isfinite(estimate):
                return math.inf
            if estimate == 0.0:
                break
            v = jv
            if abs(estimate - previous) <= self.tol * estimate:
                break
            previous = estimate
        if float(v.norm()) > 0:
            self.v = v / v.norm()
        return estimate

    def state_dict(self) -> dict:
        return {} if self.v is None else {"v": snapshot(self.v)}

    def load_state_dict(self, state: dict, like: Tensor) -> None:
        self.v = restore(state["v"], like) if "v" in state else None
