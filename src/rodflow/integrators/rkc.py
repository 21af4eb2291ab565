"""Adaptive damped second-order Runge-Kutta-Chebyshev (RKC) integration with dense output (``integrator="rkc"``).

For dy/dt = f(y) whose Jacobian has a real, non-positive dominant spectrum of radius ρ (a gradient flow: −ηH;
the rod flow: −ηH̄ on the centre, ηH̄ − 2 on the half-vector). An s-stage RKC step is stable for
hρ ≤ β(s) ≈ 0.65 (s − 1)², so the cost per unit time falls like √(ρ/h) as steps grow, where an explicit
Dormand-Prince step stays capped at h ≈ 3.3/ρ whatever the tolerance. The method is the damped (ε = 2/13)
scheme of Sommeijer, Shampine & Verwer (1998, J. Comput. Appl. Math. 88), with their local-error estimate
(12(y_n − y_{n+1}) + 6h(f_n + f_{n+1}))/15 and predictive step-size controller.

The stage count comes from ρ, which the integrator estimates itself by a warm-started nonlinear power iteration
on field evaluations (``spectral.PowerRadius``; every evaluation is counted in ``nfev``) unless a
``spectral_radius(y)`` callable is given; it is re-estimated every ``radius_every`` accepted steps and after
every rejected step. ``advance_to(T)`` steps past T and reads y(T) from the cubic Hermite interpolant of the
last step (``dense.hermite``), whose spread is bounded by the same error estimate that accepted the step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .base import Norm, Tensor
from .stabilized import Stabilized


class ChebyshevRK(Stabilized):
    """Adaptive RKC2 for an autonomous dy/dt = f(y). ``step()`` takes one accepted step; ``nfev`` counts calls
    of f (power iterations included); ``norm(err, y0, y1) <= 1`` accepts a step (default: mixed RMS norm)."""

    estimate_power = 3
    grow, shrink = 10.0, 0.1

    def __init__(self, f: Callable[[Tensor], Tensor], y0: Tensor,
                 spectral_radius: Callable[[Tensor], float] | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 h0: float | None = None, max_stages: int = 400, radius_every: int = 25, radius_safety: float = 1.2,
                 norm: Norm | None = None, max_step: float = math.inf, t0: float = 0.0):
        self.max_stages = int(max_stages)
        super().__init__(f, y0, spectral_radius, rtol=rtol, atol=atol, h0=h0, radius_every=radius_every,
                         radius_safety=radius_safety, norm=norm, max_step=max_step, t0=t0)

    def _stages(self, h: float) -> tuple[float, int]:
        s = 1 + int(math.ceil(math.sqrt(1.0 + 1.54 * h * self.rho)))
        if s > self.max_stages:  # cap the stages: shorten the step to what max_stages can carry
            s = self.max_stages
            h = min(h, 0.65 * (s - 1) ** 2 / self.rho)
        return h, s

    def _attempt(self, h: float, s: int) -> tuple[Tensor, Tensor | None, float]:
        y1 = _rkc_step(self._f, self.y, self.fy, h, s)
        if not bool(torch.isfinite(y1).all()):
            return y1, None, math.nan
        f1 = self._f(y1)
        est = (12.0 * (self.y - y1) + 6.0 * h * (self.fy + f1)) / 15.0
        return y1, f1, self.norm(est, self.y, y1)


def _rkc_step(f, y0: Tensor, f0: Tensor, h: float, s: int) -> Tensor:
    """One s-stage damped second-order RKC step (autonomous f), from the Chebyshev recurrences at w0."""
    eps = 2.0 / 13.0
    w0 = 1.0 + eps / (s * s)
    # T_j, T_j', T_j'' at w0 for j = 0..s
    T = [1.0, w0]
    dT = [0.0, 1.0]
    ddT = [0.0, 0.0]
    for j in range(2, s + 1):
        T.append(2 * w0 * T[j - 1] - T[j - 2])
        dT.append(2 * T[j - 1] + 2 * w0 * dT[j - 1] - dT[j - 2])
        ddT.append(4 * dT[j - 1] + 2 * w0 * ddT[j - 1] - ddT[j - 2])
    w1 = dT[s] / ddT[s]
    b = [0.0] * (s + 1)
    for j in range(2, s + 1):
        b[j] = ddT[j] / dT[j] ** 2
    b[0] = b[1] = b[2]
    a = [1.0 - b[j] * T[j] for j in range(s + 1)]
    y_prev2 = y0
    y_prev = y0 + (b[1] * w1 * h) * f0
    for j in range(2, s + 1):
        mu = 2 * b[j] * w0 / b[j - 1]
        nu = -b[j] / b[j - 2]
        mu_t = 2 * b[j] * w1 / b[j - 1]
        gamma_t = -a[j - 1] * mu_t
        y_new = (1 - mu - nu) * y0 + mu * y_prev + nu * y_prev2 + (mu_t * h) * f(y_prev) + (gamma_t * h) * f0
        y_prev2, y_prev = y_prev, y_new
    return y_prev
