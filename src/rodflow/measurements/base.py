"""The interface of a measurement: a function of a method's point at a step, with optional resumable state."""

from __future__ import annotations

from typing import Any

import torch


class Measurement:
    """Measured at a method's point every ``every`` steps; returns the metrics columns of that row.

    ``measure`` may use the problem's derivatives (its work is not counted in the method's cost; report it in
    a column). It must return a value that is converged or NaN with a reason column: a raised
    RuntimeError/ValueError/ArithmeticError is recorded as NaN in ``<name>`` with the reason in
    ``<name>_reason`` and the run goes on. Randomness should be derived from ``(seed, step)`` so a resumed run
    measures the same; state that cannot be (e.g. warm starts) goes in ``state_dict`` (numpy arrays and
    JSON-able scalars), which the checkpoint stores.
    """

    name = "measurement"

    def __init__(self, problem, seed: int):
        self.problem = problem
        self.seed = int(seed)

    def measure(self, w: torch.Tensor, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
