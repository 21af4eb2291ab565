"""Adaptive fourth-order stabilised explicit Runge-Kutta integration with dense output (``integrator="srk4"``).

For dy/dt = f(y) whose Jacobian has a real, non-positive dominant spectrum of radius ρ, as ``rkc`` (the
gradient and rod flows). An s-stage step (s = m + 4, m = 0..16) is stable and damped (|R| ≤ 0.95 away from 0)
for hρ ≤ β(m), β/s² rising from 0.17 (s = 4) to 0.346 (s = 20); it is of order 4, so where RKC2's steps are set
by its second-order truncation error these can be several times longer for the same accuracy.

The method (coefficients derived by tools/derive_srk4.py, table in ``srk4_table``): m forward-Euler sub-steps
h·τ_j realise the damping factor P(z) of the stability polynomial R = P·W, then a 4-stage finishing method
realises W and makes the whole step fourth order; an embedded third-order solution built from the finishing
stages and f(y₁) (first same as last) gives the local error estimate, and the step size follows it with the
exponent 1/4. s per step costs s field evaluations.

Dense output: the cubic Hermite interpolant of the last step, as ``rkc``. Its own error at mid-step is
estimated by its difference from the quintic Hermite interpolant through the last two steps, and that
estimate enters the acceptance test with the local error, so what is read at integer times is covered by
the error control (the first step, with no step before it, is controlled by the local error only).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .base import Norm, Tensor
from .dense import hermite, hermite5
from .srk4_table import ROWS
from .stabilized import Stabilized

BETAS = tuple(r["beta"] for r in ROWS)


def stages_for(h_rho: float) -> int:
    """The smallest number of Euler stages m whose damped interval holds hρ (the largest m if none does)."""
    for m, beta in enumerate(BETAS):
        if beta >= h_rho:
            return m
    return len(BETAS) - 1


class StabilizedRK4(Stabilized):
    """Adaptive srk4 for an autonomous dy/dt = f(y); the same interface as ``ChebyshevRK``. ``grid``: the spacing
    of the times ``advance_to`` will be asked for (t0 + k·grid; None: any), where the dense output's error is
    controlled; ``dense_output=False``: the caller only steps (no interpolant is read, none is checked)."""

    estimate_power = 4
    grow, shrink = 5.0, 0.2

    def __init__(self, f: Callable[[Tensor], Tensor], y0: Tensor,
                 spectral_radius: Callable[[Tensor], float] | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 h0: float | None = None, radius_every: int = 25, radius_safety: float = 1.2,
                 norm: Norm | None = None, max_step: float = math.inf, t0: float = 0.0,
                 grid: float | None = None, dense_output: bool = True):
        self.grid, self.t0 = (None if grid is None else float(grid)), float(t0)
        self.dense_output = bool(dense_output)
        super().__init__(f, y0, spectral_radius, rtol=rtol, atol=atol, h0=h0, radius_every=radius_every,
                         radius_safety=radius_safety, norm=norm, max_step=max_step, t0=t0)

    def _stages(self, h: float) -> tuple[float, int]:
        m = stages_for(h * self.rho)
        if h * self.rho > BETAS[m]:  # beyond the largest method: shorten the step to what it can carry
            h = BETAS[m] / self.rho
        return h, m

    def _stage_count(self, m: int) -> int:
        return m + 4

    def _attempt(self, h: float, m: int) -> tuple[Tensor, Tensor | None, float]:
        y1, f1, est = self._step(h, m)
        if f1 is None:
            return y1, None, math.nan
        return y1, f1, max(self.norm(est, self.y, y1), self._dense_error(h, y1, f1))

    def _step(self, h: float, m: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """y1, f(y1) and the local error estimate of one step (f1, err None if y1 is not finite)."""
        row = ROWS[m]
        y, fy = self.y, self.fy
        for j, tau in enumerate(row["taus"]):  # the damping factor: Euler sub-steps
            y = y + (h * tau) * fy
            if j + 1 < m:
                fy = self._f(y)
        a21, a31, a32, a41, a42, a43 = row["a"]
        k1 = self._f(y) if m > 0 else fy
        k2 = self._f(y + (h * a21) * k1)
        k3 = self._f(y + h * (a31 * k1 + a32 * k2))
        k4 = self._f(y + h * (a41 * k1 + a42 * k2 + a43 * k3))
        b, bh = row["b"], row["bhat"]
        y1 = y + h * (b[0] * k1 + b[1] * k2 + b[2] * k3 + b[3] * k4)
        if not bool(torch.isfinite(y1).all()):
            return y1, None, None
        f1 = self._f(y1)
        err = h * ((b[0] - bh[0]) * k1 + (b[1] - bh[1]) * k2 + (b[2] - bh[2]) * k3 + (b[3] - bh[3]) * k4
                   - bh[4] * f1)
        return y1, f1, err

    def _dense_error(self, h: float, y1: Tensor, f1: Tensor) -> float:
        """Estimated error of the cubic interpolant where it will be read: its difference from the quintic
        Hermite interpolant through the previous step too, at mid-step, scaled by the cubic's error profile
        16θ²(1 − θ)² at the read times θ inside the step (every θ when ``grid`` is None; 0 on the first
        step, which has no step before it, on a step with no read time inside, and without dense output)."""
        if self._dense is None or not self.dense_output:
            return 0.0
        if self.grid is None:
            profile = 1.0
        else:
            k = math.floor((self.t - self.t0) / self.grid) + 1
            profile = 0.0
            while True:
                theta = (self.t0 + k * self.grid - self.t) / h
                if theta >= 1.0:
                    break
                if theta > 0.0:
                    profile = max(profile, 16.0 * theta**2 * (1.0 - theta) ** 2)
                k += 1
            if profile == 0.0:
                return 0.0
        t_prev, _, y_prev, f_prev = self._dense
        cubic = hermite(self.y, self.fy, y1, f1, h, 0.5)
        quintic = hermite5((t_prev, y_prev, f_prev), (self.t, self.y, self.fy), (self.t + h, y1, f1),
                           self.t + 0.5 * h)
        return profile * self.norm(cubic - quintic, self.y, y1)
