"""Heavy-ball momentum (``torch.optim.SGD(momentum=beta)``): b ← βb + g, w ← w − ηb."""

from __future__ import annotations

import dataclasses

import torch

from . import register
from .base import UpdateRule, check_unit, ema_rate


@register("momentum")
@dataclasses.dataclass(frozen=True)
class HeavyBall(UpdateRule):
    """Heavy-ball momentum: b ← βb + g, w ← w − ηb (torch's SGD(momentum=beta)).

    b = 0 before the first step, so b₁ = g as in torch.

    Continuous dynamics of the post-update buffer: db/dt = (g − (1 − β) b)/β; slaved: b = g/(1 − β), so the
    stable flow is gradient flow at η/(1 − β). Stable on a quadratic iff
    ηλ < 2(1 + β)."""

    name = "momentum"
    fast = ("b",)
    beta: float = 0.9

    def __post_init__(self):
        object.__setattr__(self, "beta", check_unit("beta", self.beta, self.name))

    def init(self, w):
        return {"b": torch.zeros_like(w)}

    def update_state(self, state, g, step):
        return {"b": state["b"] * self.beta + g}

    def increment(self, state, g, lr, step):
        return -lr * state["b"]

    def dstate_dt(self, state, g, step, keys):
        if "b" not in keys:
            return {}
        return {"b": (g - (1.0 - self.beta) * state["b"]) * ema_rate(self.beta, "beta", self.name)}

    def instantaneous(self):
        return ("b",) if self.beta == 0 else ()

    def quasi_static(self, state, g, step):
        return {**state, "b": g / (1.0 - self.beta)}

    def threshold(self, state, lr, step):
        return 2.0 * (1.0 + self.beta) / lr
