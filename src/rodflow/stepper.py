"""The stepper: GD and the flows in lock-step, every call guarded, divergence detected.

Each process is started, advanced one unit of GD time and observed; an exception from any of these stops that
process alone with ``Status("failed", step, reason)``, and a non-finite or exploding loss or point stops it with
``Status("diverged", step, reason)``. The work of ``start``/``advance`` (the problem's counters and wall time) is
the model's cost of the step; ``observe`` is measurement. Measurements and writing are the runner's
(``rodflow.simulate``), not the stepper's.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from . import processes
from .errors import RodflowError
from .problem import Problem
from .status import Status

# what a process call or a measurement may raise without ending the run (the others are bugs: they propagate)
MEASUREMENT_ERRORS = (RuntimeError, ValueError, ArithmeticError, torch.linalg.LinAlgError, NotImplementedError)


class Stepper:
    """The run's processes by method name, in the run's order, with their status and the cost of their last
    step."""

    def __init__(self, problem: Problem, methods: list[str], lr: float, options: dict[str, dict[str, Any]],
                 diverge_factor: float, optimizer: Any = None):
        from . import optimizers

        self.problem = problem
        self.methods = list(methods)
        self.rule = optimizers.make(optimizer if optimizer is not None else "gd")  # one rule drives every process
        self.procs = {m: processes.make(m, problem, lr, optimizer=self.rule, **options.get(m, {}))
                      for m in self.methods}
        self.status = {m: Status() for m in self.methods}
        self.active = {m: True for m in self.methods}
        self.diverge_factor = diverge_factor
        self.scale: dict[str, tuple[float, float]] = {}  # each method's initial |loss| and ‖w‖ (floored at 1)
        self.cost: dict[str, tuple[Any, float]] = {}

    def running(self) -> list[str]:
        return [m for m in self.methods if self.active[m]]

    def start(self, w0: torch.Tensor) -> None:
        for m in self.methods:
            self._guarded(m, 0, lambda p=self.procs[m]: p.start(w0))

    def advance(self, t: int) -> None:
        """Every running process from time t - 1 to t."""
        for m in self.running():
            self._guarded(m, t, self.procs[m].advance)

    def observe(self, m: str, t: int):
        """(observation, model work of the step, model wall time of the step); None when it fails."""
        spent, wall = self.cost.pop(m)
        try:
            obs = self.procs[m].observe()
        except MEASUREMENT_ERRORS as exc:  # the process cannot show its point: it fails alone
            self.stop(m, Status("failed", t, f"observe: {reason(exc)}"))
            return None
        return obs, spent, wall

    def stop(self, m: str, status: Status) -> None:
        self.active[m] = False
        self.status[m] = status

    def _guarded(self, m: str, t: int, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            with self.problem.counting() as spent:
                fn()
        except MEASUREMENT_ERRORS as exc:
            self.stop(m, Status("failed", t, reason(exc)))
            return
        self.cost[m] = (spent, time.perf_counter() - start)

    def diverged(self, m: str, t: int, loss: float, p: torch.Tensor) -> Status | None:
        """The divergence status of method m at step t (None: fine). Non-finite loss or point, or |loss| or ‖w‖
        beyond ``diverge_factor`` times the method's initial value (floored at 1)."""
        norm = float(p.norm())
        if t == 0 or m not in self.scale:
            self.scale[m] = (max(1.0, abs(loss)) if math.isfinite(loss) else 1.0, max(1.0, norm))
        loss_scale, w_scale = self.scale[m]
        factor = self.diverge_factor
        if not math.isfinite(loss) or not math.isfinite(norm):
            return Status("diverged", t, f"non-finite {'loss' if not math.isfinite(loss) else 'parameters'}")
        if abs(loss) > factor * loss_scale:
            return Status("diverged", t, f"|loss| {abs(loss):.3g} > {factor:g} x initial")
        if norm > factor * w_scale:
            return Status("diverged", t, f"‖w‖ {norm:.3g} > {factor:g} x initial")
        return None

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(bookkeeping for the checkpoint's meta, each running process's state)."""
        meta = {"status": {m: s.to_dict() for m, s in self.status.items()}, "active": dict(self.active),
                "scale": self.scale}
        return meta, {m: self.procs[m].state_dict() for m in self.running()}

    def load_state_dict(self, meta: dict[str, Any], states: dict[str, dict[str, Any]]) -> None:
        try:
            self.status = {m: Status.from_record(meta["status"][m]) for m in self.methods}
            self.active = {m: bool(meta["active"][m]) for m in self.methods}
        except KeyError as exc:
            raise RodflowError(f"the checkpoint has no state for method {exc.args[0]!r}; start the run again with "
                               "--overwrite") from None
        self.scale = {m: tuple(v) for m, v in meta["scale"].items()}
        for m in self.running():
            self.procs[m].load_state_dict(states.get(m, {}))

    def last_recorded(self, m: str, t: int) -> int:
        """The last step method m has a row for, given a checkpoint at step t (a failed process has none at its
        failing step; a diverged one has its diverging row)."""
        if self.active[m]:
            return t
        st = self.status[m]
        return -1 if st.step is None else st.step - (st.kind != "diverged")


def reason(exc: BaseException) -> str:
    """An exception as a one-line reason: ``Type: first line``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
