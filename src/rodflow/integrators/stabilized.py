"""What the stabilised explicit integrators (``rkc``, ``srk4``) share: the stiffness estimate, the first step,
the step-size loop with its predictive controller, dense output by cubic Hermite interpolation and checkpoints.

A subclass says how many stages a step of size h needs (``_stages``: it may shorten h) and how one attempt goes
(``_attempt``: the new point, its field value and the error norm of the step, ≤ 1 to accept);
``estimate_power`` is the power of h in the local error estimate (the controller's exponent is its
reciprocal), and ``grow``/``shrink`` bound the step-size change per step.
"""

from __future__ import annotations

import math
from typing import Callable

from .base import IntegrationError, Norm, Tensor, check_work, restore, rms_norm, snapshot
from .dense import hermite
from .spectral import PowerRadius


class Stabilized:
    """Adaptive stabilised explicit Runge-Kutta for an autonomous dy/dt = f(y). ``step()`` takes one accepted
    step; ``nfev`` counts calls of f (power iterations included); ``norm(err, y0, y1) <= 1`` accepts a step
    (default: mixed RMS norm); ``spectral_radius(y)``, when given, replaces the power-iteration estimate."""

    estimate_power: int = 3  # the local error estimate is O(h^estimate_power)
    grow, shrink = 10.0, 0.1

    def __init__(self, f: Callable[[Tensor], Tensor], y0: Tensor,
                 spectral_radius: Callable[[Tensor], float] | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 h0: float | None = None, radius_every: int = 25, radius_safety: float = 1.2,
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

    # ------------------------------------------------------------------------------------- subclass hooks
    def _stages(self, h: float) -> tuple[float, int]:
        """(h, stage parameter) of a step of size h: the stages its stability needs (h shortened if needed)."""
        raise NotImplementedError

    def _attempt(self, h: float, stages: int) -> tuple[Tensor, Tensor | None, float]:
        """(y1, f(y1), error norm) of one attempted step; f(y1) None and the norm NaN if y1 is not finite."""
        raise NotImplementedError

    def _stage_count(self, stages: int) -> int:
        return stages

    # ------------------------------------------------------------------------------------------- shared
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
        q = 1.0 / self.estimate_power
        while True:
            h = min(self.h, self.max_step)
            if not h > 1e-12 * max(1.0, abs(self.t)):
                raise IntegrationError(f"step size underflow (h={h:.3g}) at t={self.t:.6g}")
            if not math.isfinite(self.rho):
                raise IntegrationError(f"the spectral radius estimate is not finite at t={self.t:.6g}")
            h, stages = self._stages(h)
            y1, f1, err = self._attempt(h, stages)
            finite = f1 is not None and math.isfinite(err)
            if finite and err <= 1.0:
                # predictive controller of the RKC paper (uses the previous step's error and size)
                fac = 0.8 * max(err, 1e-10) ** (-q)
                if self.err_old is not None and self.h_old:
                    fac = min(fac, fac * (h / self.h_old) * (self.err_old / max(err, 1e-10)) ** q)
                self.err_old, self.h_old = max(err, 1e-10), h
                self._dense = (self.t, h, self.y, self.fy)
                self.t, self.y, self.fy = self.t + h, y1, f1
                self.h = h * min(self.grow, max(self.shrink, fac))
                self.naccept += 1
                self.stages = self._stage_count(stages)
                return
            self.nreject += 1
            if finite:
                self.rho = self._radius()
            self.h = h * (0.1 if not finite else max(self.shrink, 0.8 * err ** (-q)))

    def advance_to(self, T: float) -> Tensor:
        """y(T) for T ≥ the last requested time: steps forward only as far as needed, then interpolates."""
        t0, nfev0 = self.t, self.nfev
        while self.t < T:
            self.step()
            check_work(self.nfev, nfev0, t0, self.t, T, self.rho)
        if self.t == T or self._dense is None:
            return self.y.clone()
        t_prev, h_prev, y_prev, f_prev = self._dense
        if T < t_prev:
            raise IntegrationError(f"cannot go back to t={T}: the integrator is at t={t_prev}")
        return hermite(y_prev, f_prev, self.y, self.fy, h_prev, (T - t_prev) / h_prev)

    def field_changed(self) -> None:
        """The field was changed from here on (a process refreshed a parameter of it at a read time): re-evaluate
        the field at the current point, which the next step starts from (one evaluation)."""
        self.fy = self._f(self.y)

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

