"""Distance to the reference process (GD unless the run names another): ``dist_gd`` from a method's point to the
reference's iterate at the same step, ``dist_gd_mid`` to its midpoint (when the reference has one)."""

from __future__ import annotations

import math
from typing import Any

from . import register
from .base import Measurement


@register("distance")
class Distance(Measurement):
    """Built in: every step (also at the step a process diverges). The reference's own row holds its distance
    to itself (0 to its iterate; GD: half its step to its midpoint). NaN when the run has no reference."""

    name = "distance"
    at_divergence = True
    warn = False
    timed = False  # two vector norms: part of the row, not a measurement worth its own wall-time column
    builtin = "set by the run setting reference"

    def blank(self) -> dict[str, Any]:
        return {"dist_gd": math.nan, "dist_gd_mid": math.nan}

    def record(self, observation, step: int, reference=None) -> dict[str, Any]:
        if reference is None:
            return {}
        p = observation.point
        return {kind: float((p - reference[key]).norm()) for kind, key in (("dist_gd", "iterate"),
                                                                             ("dist_gd_mid", "midpoint"))
                if key in reference}
