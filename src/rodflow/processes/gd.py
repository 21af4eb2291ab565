"""The discrete process: gradient descent, or the run's update rule from ``rodflow.optimizers``."""

from __future__ import annotations

from .base import Observation, Process, as_numpy, as_tensor, nest, unnest
from . import register


@register("gd")
class GD(Process):
    """z_{t+1} = F(z_t) on z = (w, optimizer state) — for plain GD w_{t+1} = w_t − η∇L(w_t); records iterates,
    midpoints (w_t + w_{t+1})/2 and the step length.

    One gradient evaluation per step: the gradient at w_t is taken when the process arrives at w_t, so the
    midpoint of row t is known when row t is recorded.
    """

    def __init__(self, problem, lr, optimizer=None):
        super().__init__(problem, lr, optimizer)

    def start(self, w0):
        self.t = 0
        self.w = w0.clone()
        self.opt_state = self.rule.init(self.w)
        self._prepare()

    def _prepare(self):
        self.loss_t, self.g = self.problem.loss_grad(self.w)
        self.next_w, self.next_state = self.rule.step(self.w, self.opt_state, self.g, self.lr, self.t + 1)
        self.delta = self.next_w - self.w

    def advance(self):
        self.w = self.next_w
        self.opt_state = self.next_state
        self.t += 1
        self._prepare()

    def point(self):
        return self.w

    def observe(self) -> Observation:
        loss = float(self.loss_t)
        mid = self.midpoint()
        scalars = {"loss": loss, "loss_pred": loss, "grad_norm": float(self.g.norm()),
                   "half_step": float(self.delta.norm()) / 2}
        # the step from w_t uses the state updated with ∇L(w_t): its preconditioner and threshold
        scalars.update(self.optimizer_scalars(self.next_state, self.t + 1))
        return Observation(
            self.w, scalars,
            references={"iterate": self.w, "midpoint": mid},
            vectors={"midpoint": as_numpy(mid)},
            preconditioner=self.rule.preconditioner(self.next_state, self.t + 1),
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
