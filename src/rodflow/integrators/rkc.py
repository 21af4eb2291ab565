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

from .base import IntegrationError, Norm, Tensor, restore, rms_norm, snapshot
from .dense import hermite
from .spectral import PowerRadius


class ChebyshevRK:
    """Adaptive RKC2 for an autonomous dy/dt = f(y). ``step()`` takes one accepted step; ``nfev`` counts calls
    of f (power iterations included); ``norm(err, y0, y1) <= 1`` accepts a step (default: mixed RMS norm)."""

    def __init__(self, f: Callable[[Tensor], Tensor], y0: Tensor,
                 spectral_radius: Callable[[Tensor], float] | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 h0: float | None = None, max_stages: int = 400, radius_every: int = 25, radius_safety: float = 1.2,
                 norm: Norm | None = None, max_step: float = math.inf, t0: float = 0.0):
        if not (rtol > 0 and atol >= 0):
            raise ValueError("rtol must be > 0 and atol >= 0")
        if not max_step > 0:
            raise ValueError("max_step must be > 0")
        self.f, self.radius_fn = f, spectral_radius
        self.power = PowerRadius() if spectral_radius is None else None
        self.rtol, self.atol = rtol, atol
        self.norm = norm if norm is not None else rms_norm(rtol, atol)
        self.max_step = float(max_step)
        self.max_stages, self.radius_every, self.radius_safety = int(max_stages), int(radius_every), radius_safety
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
        # the step of a second-order method whose leading error term is ~h²·‖f'f‖ at the tolerance
        h = min(1.0 / max(self.rho, 1e-12), self.max_step)
        probe = self._f(self.y + h * self.fy)
        est = self.norm(h * (probe - self.fy), self.y, self.y)
        if not math.isfinite(est):
            return 1e-3 * h
        return h if est == 0 else max(min(10 * h, 0.5 * h / math.sqrt(est)), 1e-3 * h)

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
            s = 1 + int(math.ceil(math.sqrt(1.0 + 1.54 * h * self.rho)))
            if s > self.max_stages:  # cap the stages: shorten the step to what max_stages can carry
                s = self.max_stages
                h = min(h, 0.65 * (s - 1) ** 2 / self.rho)
            y1 = _rkc_step(self._f, self.y, self.fy, h, s)
            finite = bool(torch.isfinite(y1).all())
            if finite:
                f1 = self._f(y1)
                est = (12.0 * (self.y - y1) + 6.0 * h * (self.fy + f1)) / 15.0
                err = self.norm(est, self.y, y1)
                finite = math.isfinite(err)
            if finite and err <= 1.0:
                # predictive controller of the RKC paper (uses the previous step's error and size)
                fac = 0.8 * max(err, 1e-10) ** (-1.0 / 3.0)
                if self.err_old is not None and self.h_old:
                    fac = min(fac, fac * (h / self.h_old) * (self.err_old / max(err, 1e-10)) ** (1.0 / 3.0))
                self.err_old, self.h_old = max(err, 1e-10), h
                self._dense = (self.t, h, self.y, self.fy)
                self.t, self.y, self.fy = self.t + h, y1, f1
                self.h = h * min(10.0, max(0.1, fac))
                self.naccept += 1
                self.stages = s
                return
            self.nreject += 1
            if finite:
                self.rho = self._radius()
            self.h = h * (0.1 if not finite else max(0.1, 0.8 * err ** (-1.0 / 3.0)))

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
