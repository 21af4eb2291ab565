"""RMSProp (``torch.optim.RMSprop(alpha, eps)``), per coordinate or scalar (one ν for all coordinates)."""

from __future__ import annotations

import dataclasses

import torch

from . import register
from .base import UpdateRule, check_bool, check_positive, check_unit, ema_rate, scalar


@register("rmsprop")
@dataclasses.dataclass(frozen=True)
class RMSProp(UpdateRule):
    """RMSProp: ν ← αν + (1 − α) g² (``scalar``: one ν fed by ‖g‖²), w ← w − η g/(√ν + ε).

    P = √ν + ε; stable with P frozen iff λ_max(P⁻¹H) < 2/η. Flows: dν/dt = ((1 − α)/α)(g² − ν) (science.md §6);
    the rod carries ν as a smooth auxiliary variable."""

    name = "rmsprop"
    preconditioned = True
    smooth = ("v",)
    alpha: float = 0.99
    eps: float = 1e-8
    scalar: bool = False

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_unit("alpha", self.alpha, self.name))
        object.__setattr__(self, "eps", check_positive("eps", self.eps, self.name))
        object.__setattr__(self, "scalar", check_bool("scalar", self.scalar, self.name))

    def _feed(self, g):
        return g.square().sum().reshape(1) if self.scalar else g * g

    def init(self, w):
        return {"v": scalar(0.0, w) if self.scalar else torch.zeros_like(w)}

    def update_state(self, state, g, step):
        if self.scalar:
            return {"v": state["v"] * self.alpha + (1.0 - self.alpha) * self._feed(g)}
        return {"v": torch.addcmul(state["v"] * self.alpha, g, g, value=1.0 - self.alpha)}

    def instantaneous(self):
        return ("v",) if self.alpha == 0 else ()

    def preconditioner(self, state, step):
        return state["v"].sqrt() + self.eps

    def increment(self, state, g, lr, step):
        return -lr * (g / self.preconditioner(state, step))

    def dstate_dt(self, state, g, step, keys):
        if "v" not in keys:
            return {}
        rate = (1.0 - self.alpha) * ema_rate(self.alpha, "alpha", self.name)
        return {"v": rate * (self._feed(g) - state["v"])}
