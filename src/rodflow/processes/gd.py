"""The discrete process: gradient descent, or any update rule from ``rodflow.optimizers``."""

from __future__ import annotations

from typing import Any

from .. import optimizers
from .base import Observation, Process, as_numpy, as_tensor, nest, unnest
from . import register


@register("gd")
class GD(Process):
    """w_{t+1} = w_t + update(∇L(w_t)); records iterates, midpoints (w_t + w_{t+1})/2 and the step length.

    One gradient evaluation per step: the gradient at w_t is taken when the process arrives at w_t, so the
    midpoint of row t is known when row t is recorded.
    """

    def __init__(self, problem, lr, optimizer: str = "gd", optimizer_params: dict[str, Any] | None = None):
        super().__init__(problem, lr)
        self.rule = optimizers.make(optimizer, **(optimizer_params or {}))

    def start(self, w0):
        self.t = 0
        self.w = w0.clone()
        self.opt_state = self.rule.init(self.w)
        self._prepare()

    def _prepare(self):
        self.loss_t, self.g = self.problem.loss_grad(self.w)
        self.delta, self.next_state = self.rule.update(self.g, self.opt_state, self.w, self.lr)

    def advance(self):
        self.w = self.w + self.delta
        self.opt_state = self.next_state
        self.t += 1
        self._prepare()

    def point(self):
        return self.w

    def observe(self) -> Observation:
        loss = float(self.loss_t)
        mid = self.midpoint()
        return Observation(
            self.w,
            {"loss": loss, "loss_pred": loss, "grad_norm": float(self.g.norm()),
             "half_step": float(self.delta.norm()) / 2},
            references={"iterate": self.w, "midpoint": mid},
            vectors={"midpoint": as_numpy(mid)},
        )

    def midpoint(self):
        return self.w + 0.5 * self.delta

    def state_dict(self):
        state = {"t": self.t, "w": as_numpy(self.w)}
        state.update(nest("opt", {k: as_numpy(v) for k, v in self.opt_state.items()}))
        return state

    def load_state_dict(self, state):
        dtype = self.problem.dtype
        self.t = int(state["t"])
        self.w = as_tensor(state["w"], dtype, self.problem.device)
        self.opt_state = {k: as_tensor(v, dtype, self.problem.device) for k, v in unnest("opt", state).items()}
        self._prepare()
