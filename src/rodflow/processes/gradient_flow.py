"""Gradient flow dw/dt = −η ∇L(w), integrated adaptively (time in GD steps)."""

from __future__ import annotations

import math

import torch

from .. import integrators
from ..errors import RodflowError
from .base import Process, as_numpy, as_tensor, nest, unnest
from . import register

DEFAULT_INTEGRATOR = "rkc"
# (rtol, atol) per integrator and dtype. dopri: tight (its cost is set by stability, not by the tolerance);
# rkc: the loosest tolerance that meets the accuracy rule of docs/performance.md (B2a, B8: a flow's mean
# distance to GD and its loss error within 1% of a tight solve's) on the benchmark cases (rtol 1e-4 missed it
# by up to 2.2% for gradient flow, 4.5% for rod flow). float32: no tighter than a few hundred ulp.
_TOLERANCES = {
    "dopri": {torch.float64: (1e-8, 1e-10), torch.float32: (3e-5, 1e-7)},
    "rkc": {torch.float64: (1e-5, 1e-7), torch.float32: (3e-5, 1e-7)},
}


def default_tolerances(dtype: torch.dtype, integrator: str = "dopri") -> tuple[float, float]:
    """(rtol, atol) of a flow's integrator for this dtype."""
    return _TOLERANCES[integrator][dtype]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def integration_options(method: str, dtype: torch.dtype, integrator, rtol, atol, max_step):
    """A flow's (integrator, rtol, atol, max_step): the name checked, tolerances defaulted per integrator and
    dtype, and every number validated (one-line errors) before any work is done."""
    integrator = integrators.check_name(integrator, method)
    rt, at = default_tolerances(dtype, integrator)
    rtol = rt if rtol is None else rtol
    atol = at if atol is None else atol
    check_tolerances(method, rtol, atol, max_step)
    return integrator, float(rtol), float(atol), float(max_step)


def check_tolerances(method: str, rtol: float, atol: float, max_step: float) -> None:
    """One-line errors for tolerances an integrator cannot use (before any work is done)."""
    if not (_number(rtol) and math.isfinite(rtol) and rtol > 0):
        raise RodflowError(f"{method} rtol must be a finite number > 0, got {rtol!r}")
    if not (_number(atol) and math.isfinite(atol) and atol >= 0):
        raise RodflowError(f"{method} atol must be a finite number >= 0, got {atol!r}")
    if not (_number(max_step) and max_step > 0):
        raise RodflowError(f"{method} max_step must be a number > 0, got {max_step!r}")


@register("gradient_flow")
class GradientFlow(Process):
    """Gradient flow by an adaptive integrator with error control (one gradient per field evaluation).

    ``integrator="rkc"`` (default): Runge-Kutta-Chebyshev, whose stage count follows the stiffness η·S that it
    estimates itself, so its steps are set by accuracy; ``"dopri"``: Dormand-Prince 5(4), whose step is held
    near its stability limit 3.3/(η S) once the flow is stiff. Either way iterates are read off the dense output
    at integer times, and steps longer than one GD step are taken where the dynamics allow.
    """

    def __init__(self, problem, lr, integrator: str = DEFAULT_INTEGRATOR, rtol: float | None = None,
                 atol: float | None = None, max_step: float = 50.0):
        super().__init__(problem, lr)
        self.integrator, self.rtol, self.atol, self.max_step = integration_options(
            "gradient_flow", problem.dtype, integrator, rtol, atol, max_step)

    def _field(self, t, w):
        return -self.lr * self.problem.grad(w)

    def _ode(self, w):
        return integrators.make(self.integrator, self._field, w, rtol=self.rtol, atol=self.atol,
                                max_step=self.max_step)

    def start(self, w0):
        self.t = 0
        self.w = w0.clone()
        self.ode = self._ode(self.w)

    def advance(self):
        self.t += 1
        self.w = self.ode.advance_to(float(self.t))

    def point(self):
        return self.w

    def state_dict(self):
        state = {"t": self.t, "w": as_numpy(self.w)}
        state.update(nest("ode", self.ode.state_dict()))
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.w = as_tensor(state["w"], self.problem.dtype, self.problem.device)
        self.ode = self._ode(self.w)  # then every field of the integrator is replaced:
        self.ode.load_state_dict(unnest("ode", state))
