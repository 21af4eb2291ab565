"""Plain gradient descent (``torch.optim.SGD()``): w ← w − η g."""

from __future__ import annotations

import dataclasses

from . import register
from .base import UpdateRule


@register("gd")
@dataclasses.dataclass(frozen=True)
class GradientDescent(UpdateRule):
    """Plain gradient descent: w ← w − η g; stable on a quadratic iff ηλ < 2."""

    name = "gd"

    def increment(self, state, g, lr, step):
        return -lr * g
