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

from .base import IntegrationError, Norm, Tensor, restore, rms_norm, snapshot
from .dense import hermite, hermite5
from .spectral import PowerRadius
from .srk4_table import ROWS

BETAS = tuple(r["beta"] for r in ROWS)


def stages_for(h_rho: float) -> int:
    """The smallest number of Euler stages m whose damped interval holds hρ (the largest m if none does)."""
    for m, beta in enumerate(BETAS):
        if beta >= h_rho:
            return m
    return len(BETAS) - 1


class StabilizedRK4:
    """Adaptive srk4 for an autonomous dy/dt = f(y); the same interface as ``ChebyshevRK``."""

    order = 4

    def __init__(self, f: Callable[[Tensor], Tensor], y0: Tensor,
                 spectral_radius: Callable[[Tensor], float] | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 h0: float | None = None, radius_every: int = 25, radius_safety: float = 1.2,
                 norm: Norm | None = None, max_step: float = math.inf, t0: float = 0.0,
                 grid: float | None = None):
        if not (rtol > 0 and atol >= 0):
            raise ValueError("rtol must be > 0 and atol >= 0")
        if not max_step > 0:
            raise ValueError("max_step must be > 0")
        self.f, self.radius_fn = f, spectral_radius
        self.power = PowerRadius() if spectral_radius is None else None
        self.rtol, self.atol = rtol, atol
        self.norm = norm if norm is not None else rms_norm(rtol, atol)
        self.max_step = float(max_step)
        self.grid, self.t0 = (None if grid is None else float(grid)), float(t0)
        self.radius_every, self.radius_safety = int(radius_every), radius_safety
        self.nfev = self.naccept = self.nreject = 0
        self.t = float(t0)
        self.y = y0.clone()
        self.fy = self._f(self.y)
        self._radius_at = -1
        self.rho = self._radius()
        self.h = float(h0) if h0 is not None else self._initial_step()
        self.err_old = self.h_old = None
        self.stages = 0
        self._dense: tuple[float, float, Tensor, Tensor] | None = None  # (t_prev, h_prev, y_prev, f_prev)

    def _f(self, y: Tensor) -> Tensor:
        self.nfev += 1
        return self.f(y)

    def _radius(self) -> float:
        self._radius_at = self.naccept
        if self.power is not None:
            rho = self.power(self._f, self.y, self.fy)
        else:
            rho = float(self.radius_fn(self.y))
        return self.radius_safety * max(rho, 1e-12) if math.isfinite(rho) else math.inf

    def _initial_step(self) -> float:
        h = min(1.0 / max(self.rho, 1e-12), self.max_step)
        probe = self._f(self.y + h * self.fy)
        est = self.norm(h * (probe - self.fy), self.y, self.y)
        if not math.isfinite(est):
            return 1e-3 * h
        return h if est == 0 else max(min(10 * h, 0.5 * h / math.sqrt(est)), 1e-3 * h)

    def _attempt(self, h: float, m: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
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
        step, which has no step before it, and on a step with no read time inside)."""
        if self._dense is None:
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

    def step(self) -> None:
        """One accepted step (rejected attempts are retried with a smaller h)."""
        if self.naccept - self._radius_at >= self.radius_every:
            self.rho = self._radius()
        while True:
            h = min(self.h, self.max_step)
            if not h > 1e-12 * max(1.0, abs(self.t)):
                raise IntegrationError(f"step size underflow (h={h:.3g}) at t={self.t:.6g}")
            if not math.isfinite(self.rho):
                raise IntegrationError(f"the spectral radius estimate is not finite at t={self.t:.6g}")
            m = stages_for(h * self.rho)
            if h * self.rho > BETAS[m]:  # beyond the largest method: shorten the step to what it can carry
                h = BETAS[m] / self.rho
            y1, f1, est = self._attempt(h, m)
            finite = f1 is not None
            if finite:
                err = max(self.norm(est, self.y, y1), self._dense_error(h, y1, f1))
                finite = math.isfinite(err)
            if finite and err <= 1.0:
                fac = 0.8 * max(err, 1e-10) ** (-1.0 / 4.0)
                if self.err_old is not None and self.h_old:
                    fac = min(fac, fac * (h / self.h_old) * (self.err_old / max(err, 1e-10)) ** (1.0 / 4.0))
                self.err_old, self.h_old = max(err, 1e-10), h
                self._dense = (self.t, h, self.y, self.fy)
                self.t, self.y, self.fy = self.t + h, y1, f1
                self.h = h * min(5.0, max(0.2, fac))
                self.naccept += 1
                self.stages = m + 4
                return
            self.nreject += 1
            if finite:
                self.rho = self._radius()
            self.h = h * (0.1 if not finite else max(0.2, 0.8 * err ** (-1.0 / 4.0)))

    def advance_to(self, T: float) -> Tensor:
        """y(T) for T ≥ the last requested time: steps forward only as far as needed, then interpolates."""
        while self.t < T:
            self.step()
        if self.t == T or self._dense is None:
            return self.y.clone()
        t_prev, h_prev, y_prev, f_prev = self._dense
        if T < t_prev:
            raise IntegrationError(f"cannot go back to t={T}: the integrator is at t={t_prev}")
        return hermite(y_prev, f_prev, self.y, self.fy, h_prev, (T - t_prev) / h_prev)

    # --------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state = {"t": self.t, "y": snapshot(self.y), "fy": snapshot(self.fy), "h": self.h, "rho": self.rho,
                 "radius_at": self._radius_at, "stages": self.stages, "nfev": self.nfev, "naccept": self.naccept,
                 "nreject": self.nreject,
                 "err_old": math.nan if self.err_old is None else self.err_old,
                 "h_old": math.nan if self.h_old is None else self.h_old}
        if self._dense is not None:
            state.update(dense_t=self._dense[0], dense_h=self._dense[1], dense_y=snapshot(self._dense[2]),
                         dense_f=snapshot(self._dense[3]))
        if self.power is not None:
            state.update({f"power.{k}": v for k, v in self.power.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        like = self.y
        self.t = float(state["t"])
        self.y, self.fy = restore(state["y"], like), restore(state["fy"], like)
        self.h, self.rho = float(state["h"]), float(state["rho"])
        self._radius_at, self.stages = int(state["radius_at"]), int(state["stages"])
        self.nfev, self.naccept, self.nreject = (int(state[k]) for k in ("nfev", "naccept", "nreject"))
        self.err_old = None if math.isnan(float(state["err_old"])) else float(state["err_old"])
        self.h_old = None if math.isnan(float(state["h_old"])) else float(state["h_old"])
        self._dense = None
        if "dense_y" in state:
            self._dense = (float(state["dense_t"]), float(state["dense_h"]), restore(state["dense_y"], like),
                           restore(state["dense_f"], like))
        if self.power is not None:
            self.power.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("power.")}, like)
