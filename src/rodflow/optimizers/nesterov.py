"""Nesterov momentum (``torch.optim.SGD(momentum=beta, nesterov=True)``): b ← βb + g, w ← w − η(g + βb)."""

from __future__ import annotations

import dataclasses

from . import register
from .momentum import HeavyBall


@register("nesterov")
@dataclasses.dataclass(frozen=True)
class Nesterov(HeavyBall):
    """Nesterov momentum: b ← βb + g, w ← w − η(g + βb) (torch's SGD(nesterov=True)).

    Stable on a quadratic iff ηλ < 2(1 + β)/(1 + 2β)."""

    name = "nesterov"

    def increment(self, state, g, lr, step):
        return -lr * (g + self.beta * state["b"])

    def threshold(self, state, lr, step):
        return 2.0 * (1.0 + self.beta) / ((1.0 + 2.0 * self.beta) * lr)
