"""The interface of a measurement: a function of a method's point at a step, with optional resumable state."""

from __future__ import annotations

import math
from typing import Any

import torch


class Measurement:
    """Measured at a method's point every ``every`` steps; returns the metrics columns of that row.

    ``measure`` may use the problem's derivatives (its work is not counted in the method's cost, nor its wall
    time: the run records that as ``<name>_wall_s``). It must return values that are converged or NaN with a
    reason column ``<name>_reason``: a raised RuntimeError/ValueError/ArithmeticError is recorded as
    :meth:`failed` (NaN in ``<name>`` with the reason) and the run goes on. A returned NumPy array becomes a
    per-step array (``result.aux[method][key]``, row = step) instead of a column. Randomness should be derived
    from ``(seed, step)`` so a resumed run measures the same; state that cannot be (e.g. warm starts) goes in
    ``state_dict`` (numpy arrays and JSON-able scalars), which the checkpoint stores.

    Measurements that need more than the point override :meth:`record`, which sees the process's whole
    :class:`~rodflow.processes.base.Observation` and the reference process's (``None`` when there is none).
    """

    #: registry name; the prefix of the ``_reason`` and ``_wall_s`` columns
    name = "measurement"
    #: also measured at the step where the process diverges (e.g. distances); others are skipped there
    at_divergence = False
    #: warn (once per method) when a row gets a reason column
    warn = True
    #: time it apart from the model's wall time, as ``<name>_wall_s``
    timed = True
    #: measured every this many steps (0: never); set by the run from its settings
    every = 1
    #: prefix of its state in checkpoints (None: ``measure.<name>``; the built-ins keep their older names)
    state_key: str | None = None
    #: for built-ins: which run settings set it (they are refused in ``measurements=``)
    builtin: str | None = None

    def __init__(self, problem, seed: int):
        self.problem = problem
        self.seed = int(seed)

    def measure(self, w: torch.Tensor, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def record(self, observation, step: int, reference=None) -> dict[str, Any]:
        """The columns of one row; by default :meth:`measure` at the observation's point."""
        return self.measure(observation.point, step)

    def blank(self) -> dict[str, Any]:
        """What every row holds before (or instead of) a measurement: columns that must exist in every row."""
        return {}

    def failed(self, reason: str) -> dict[str, Any]:
        """The columns of a row whose measurement raised."""
        return {self.name: math.nan, f"{self.name}_reason": reason}

    def warning(self, method: str, step: int, reason: str, raised: bool) -> str:
        what = "failed" if raised else "did not converge"
        return f"{method}: {self.name} at step {step} {what} ({reason}); recorded as NaN (column {self.name}_reason)"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
