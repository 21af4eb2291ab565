"""Gradient flow dw/dt = −η ∇L(w), integrated adaptively (time in GD steps)."""

from __future__ import annotations

import torch

from ..integrators import DormandPrince
from .base import Process, as_numpy, as_tensor, nest, unnest
from . import register


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for the flows: tight in float64, a few hundred ulp in float32."""
    return (1e-8, 1e-10) if dtype == torch.float64 else (3e-5, 1e-7)


@register("gradient_flow")
class GradientFlow(Process):
    """Gradient flow by Dormand-Prince 5(4) with error control (one gradient per stage).

    The flow is stiff once η·S is large; the controller then holds h near the method's stability limit
    3.3/(η S), so the step follows the current sharpness. Iterates are read off the dense output at integer
    times, so steps longer than one GD step are taken where the dynamics allow.
    """

    def __init__(self, problem, lr, rtol: float | None = None, atol: float | None = None, max_step: float = 50.0):
        super().__init__(problem, lr)
        rt, at = default_tolerances(problem.dtype)
        self.rtol = rt if rtol is None else float(rtol)
        self.atol = at if atol is None else float(atol)
        self.max_step = float(max_step)

    def _field(self, t, w):
        return -self.lr * self.problem.grad(w)

    def start(self, w0):
        self.t = 0
        self.w = w0.clone()
        self.ode = DormandPrince(self._field, self.w, rtol=self.rtol, atol=self.atol, max_step=self.max_step)

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
        self.w = as_tensor(state["w"], self.problem.dtype)
        self.ode = DormandPrince(self._field, self.w, rtol=self.rtol, atol=self.atol, max_step=self.max_step)
        self.ode.load_state_dict(unnest("ode", state))
