"""The Dormand-Prince 5(4) pair with dense output (``integrator="dopri"``).

The separation follows diffrax: the *vector field* ``f(t, y)`` belongs to a process, the *solver* here is
the Dormand-Prince 5(4) pair (7 stages, first-same-as-last, so 6 new evaluations per accepted step), the
*step-size controller* is Hairer's PI controller on a mixed absolute/relative error norm, and *saving* is
decoupled from stepping: ``advance_to(T)`` steps past T if the dynamics allow and reads y(T) from the
pair's 4th-order continuous extension. A stiff vector field (a gradient flow whose fastest rate is η·S)
makes the controller settle on the stability limit of the method, h ≈ 3.3/(η S): the step adapts to the
current sharpness without being told it.

Coefficients are those published by Dormand & Prince (1980) and, for the continuous extension, by
Hairer, Nørsett & Wanner (Solving ODEs I, §II.6).
"""

from __future__ import annotations

import math
import torch

from .base import IntegrationError, Norm, Tensor, VectorField, check_work, restore, rms_norm, snapshot

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)  # 5th order, also stage 7's row
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)  # b - b_hat
_D = (
    -12715105075 / 11282082432,
    0.0,
    87487479700 / 32700410799,
    -10690763975 / 1880347072,
    701980252875 / 199316789632,
    -1453857185 / 822651844,
    69997945 / 29380423,
)


class DormandPrince:
    """Adaptive Dormand-Prince 5(4) integration of dy/dt = f(t, y) with dense output.

    ``rtol``/``atol`` bound the local error per step in the RMS norm over components (``norm`` replaces that
    norm: ``norm(err, y0, y1) <= 1`` accepts a step); ``max_step`` caps h. ``nfev`` counts calls of f.
    """

    def __init__(
        self,
        f: VectorField,
        y0: Tensor,
        t0: float = 0.0,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        h0: float | None = None,
        max_step: float = math.inf,
        max_steps_per_call: int = 1_000_000,
        safety: float = 0.9,
        fac_min: float = 0.2,
        fac_max: float = 10.0,
        beta: float = 0.04,
        norm: Norm | None = None,
    ):
        if not (rtol > 0 and atol >= 0):
            raise ValueError("rtol must be > 0 and atol >= 0")
        self.f = f
        self.norm = norm if norm is not None else rms_norm(rtol, atol)
        self.rtol, self.atol = rtol, atol
        self.max_step = max_step
        self.max_steps_per_call = max_steps_per_call
        self.safety, self.fac_min, self.fac_max, self.beta = safety, fac_min, fac_max, beta
        self.expo = 0.2 - 0.75 * beta
        self.nfev = 0
        self.naccept = 0
        self.nreject = 0
        self.t = float(t0)
        self.y = y0.clone()
        self.fy = self._f(self.t, self.y)
        self.err_old = 1e-4
        self.h = self._initial_step() if h0 is None else float(h0)
        self._dense: tuple[float, float, list[Tensor]] | None = None  # (t_prev, h_prev, coefficients)

    # ------------------------------------------------------------------------------------------------ api
    def advance_to(self, T: float) -> Tensor:
        """y(T) for T ≥ the last requested time; steps forward only as far as needed."""
        steps, t0, nfev0 = 0, self.t, self.nfev
        while self.t < T:
            self._step()
            steps += 1
            if steps > self.max_steps_per_call:
                raise IntegrationError(f"more than {self.max_steps_per_call} steps to reach t={T}")
            check_work(self.nfev, nfev0, t0, self.t, T)
        if self.t == T or self._dense is None:
            return self.y.clone()
        t_prev, h_prev, coef = self._dense
        if T < t_prev:
            raise IntegrationError(f"cannot go back to t={T}: the integrator is at t={t_prev}")
        return _interpolate(coef, (T - t_prev) / h_prev)

    def step(self) -> None:
        """One accepted step (rejected attempts are retried with a smaller h)."""
        self._step()

    # ------------------------------------------------------------------------------------------ stepping
    def _f(self, t: float, y: Tensor) -> Tensor:
        self.nfev += 1
        return self.f(t, y)

    def _norm(self, x: Tensor, y0: Tensor, y1: Tensor) -> float:
        return self.norm(x, y0, y1)

    def _initial_step(self) -> float:
        y0, f0 = self.y, self.fy
        d0 = self._norm(y0, y0, y0)
        d1 = self._norm(f0, y0, y0)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, self.max_step)
        f1 = self._f(self.t + h0, y0 + h0 * f0)
        d2 = self._norm(f1 - f0, y0, y0) / h0
        if not math.isfinite(d2):
            return h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
        return min(100 * h0, h1, self.max_step)

    def _step(self) -> None:
        while True:
            h = min(self.h, self.max_step)
            if h <= 1e-12 * max(1.0, abs(self.t)):
                raise IntegrationError(f"step size underflow (h={h:.3g}) at t={self.t:.6g}")
            t, y = self.t, self.y
            k = [self.fy]
            for i in range(1, 6):
                yi = y + h * sum(a * kj for a, kj in zip(_A[i], k) if a != 0.0)
                k.append(self._f(t + _C[i] * h, yi))
            y1 = y + h * sum(b * kj for b, kj in zip(_B, k) if b != 0.0)
            k.append(self._f(t + h, y1))
            err_vec = h * sum(e * kj for e, kj in zip(_E, k) if e != 0.0)
            err = self._norm(err_vec, y, y1)
            finite = math.isfinite(err) and bool(torch.isfinite(y1).all())
            if finite and err <= 1.0:
                fac11 = max(err, 1e-10) ** self.expo
                fac = fac11 / self.err_old**self.beta
                fac = min(1 / self.fac_min, max(1 / self.fac_max, fac / self.safety))
                self.err_old = max(err, 1e-4)
                coef = self._dense_coefficients(y, y1, h, k)
                self._dense = (t, h, coef)
                self.t, self.y, self.fy = t + h, y1, k[6]
                self.h = h / fac
                self.naccept += 1
                return
            self.nreject += 1
            if not finite:
                self.h = h * self.fac_min
            else:
                self.h = h / min(1 / self.fac_min, max(err, 1e-10) ** self.expo / self.safety)

    @staticmethod
    def _dense_coefficients(y0: Tensor, y1: Tensor, h: float, k: list[Tensor]) -> list[Tensor]:
        r2 = y1 - y0
        r3 = h * k[0] - r2
        r4 = r2 - h * k[6] - r3
        r5 = h * sum(d * kj for d, kj in zip(_D, k) if d != 0.0)
        return [y0, r2, r3, r4, r5]

    # --------------------------------------------------------------------------------------- checkpoints
    def field_changed(self) -> None:
        """The field was changed from here on: re-evaluate it at the current point (the first stage of the next
        step; one evaluation)."""
        self.fy = self._f(self.t, self.y)

    def state_dict(self) -> dict:
        state = {
            "t": self.t,
            "y": snapshot(self.y),
            "fy": snapshot(self.fy),
            "h": self.h,
            "err_old": self.err_old,
            "nfev": self.nfev,
            "naccept": self.naccept,
            "nreject": self.nreject,
        }
        if self._dense is not None:
            state["dense_t"], state["dense_h"] = self._dense[0], self._dense[1]
            state["dense_coef"] = snapshot(torch.stack(self._dense[2]))
        return state

    def load_state_dict(self, state: dict) -> None:
        like = self.y  # the state comes back in the dtype and on the device the integrator was built with
        self.t = float(state["t"])
        self.y = restore(state["y"], like)
        self.fy = restore(state["fy"], like)
        self.h = float(state["h"])
        self.err_old = float(state["err_old"])
        self.nfev, self.naccept, self.nreject = (int(state[k]) for k in ("nfev", "naccept", "nreject"))
        if "dense_coef" in state:
            coef = list(restore(state["dense_coef"], like).unbind(0))
            self._dense = (float(state["dense_t"]), float(state["dense_h"]), coef)
        else:
            self._dense = None


def _interpolate(coef: list[Tensor], theta: float) -> Tensor:
    r1, r2, r3, r4, r5 = coef
    s = 1.0 - theta
    return r1 + theta * (r2 + s * (r3 + theta * (r4 + s * r5)))
