"""The process interface: GD and every continuous model of it advance in lock-step, one unit of GD time each.

A process is created with a problem and the learning rate, started from ``w0``, and then alternately
observed and advanced:

    proc = make("gradient_flow", problem, lr, **options)
    proc.start(w0)                      # time 0
    obs = proc.observe()                # what is recorded at the current integer time
    proc.advance()                      # time t -> t + 1
    ...

``observe()`` returns an :class:`Observation`: ``point`` (the process's estimate of GD's iterate ``w_t``),
scalars that become metrics columns (``loss``, ``loss_pred``, ...) and per-step arrays (``arrays``; parameter-space
ones in ``vectors``) that become ``result.aux[method][key]``. Work done by ``start``/``advance`` counts as the model's cost; work done by
``observe`` is measurement. ``state_dict``/``load_state_dict`` capture everything needed to continue a
run bit for bit after a restart.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import RodflowError
from ..problem import Problem

Tensor = torch.Tensor


@dataclasses.dataclass
class Observation:
    """What a process shows at an integer time: its ``point``, what that point estimates of GD
    (``estimates``: "iterate" w_t or "midpoint" (w_t + w_{t+1})/2), scalars, per-step arrays, and the points
    other processes may be compared with (``references``: by kind; default ``{estimates: point}``; GD adds its
    midpoint). ``arrays`` are recorded as given; ``vectors`` are parameter-space arrays (d values), recorded
    like the iterate: all, none or their projection, as the run's ``record_iterates`` says."""

    point: Tensor
    scalars: dict[str, float] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    estimates: str = "iterate"
    references: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    vectors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: the optimizer's preconditioner P at the point (d values or one; None: the identity or not known)
    preconditioner: Tensor | None = None

    def __post_init__(self):
        self.references.setdefault(self.estimates, self.point)


class Process(abc.ABC):
    """Base class of GD and the flows. Subclasses set ``name`` and implement the abstract methods.

    Every process is driven by the run's update rule ``self.rule`` (``rodflow.optimizers``; plain GD by default),
    given as ``optimizer`` (a rule or its name) by ``processes.make``."""

    name: ClassVar[str]
    #: What ``point`` estimates: "iterate" (w_t) or "midpoint" ((w_t + w_{t+1})/2).
    estimates: ClassVar[str] = "iterate"
    #: a metrics column holding the process's estimate of GD's oscillation amplitude, if it models one
    oscillation_column: ClassVar[str | None] = None
    #: a metrics column that is >= 1 once the process is at the edge of stability, if it has one
    edge_column: ClassVar[str | None] = None

    #: the update rules (optimizer names) it models; None: every rule
    optimizers: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, problem: Problem, lr: float, optimizer: Any = None, **options: Any):
        from .. import optimizers

        self.problem = problem
        self.lr = float(lr)
        self.t = 0
        self.rule = optimizers.make(optimizer if optimizer is not None else "gd")
        if self.optimizers is not None and self.rule.name not in self.optimizers:
            raise RodflowError(f"{self.name} models optimizer {', '.join(self.optimizers)} only, not "
                               f"{self.rule.name!r}: drop {self.name} from the methods or use optimizer 'gd'")

    def optimizer_scalars(self, state: dict[str, Tensor], step: float) -> dict[str, float]:
        """The optimizer's stability threshold on λ_max(P⁻¹H) at this state (column ``threshold``; not recorded
        for plain GD, whose threshold is 2/lr)."""
        if self.rule.name == "gd":
            return {}
        return {"threshold": float(self.rule.threshold(state, self.lr, step))}

    @abc.abstractmethod
    def start(self, w0: Tensor) -> None:
        """Set the state at time 0."""

    @abc.abstractmethod
    def advance(self) -> None:
        """Advance the state by one unit of GD time (increments ``self.t``)."""

    @abc.abstractmethod
    def point(self) -> Tensor:
        """The current estimate of GD's iterate at time ``self.t``."""

    def observe(self) -> Observation:
        """Loss and gradient norm at the point; subclasses add their own scalars and arrays."""
        w = self.point()
        loss, g = self.problem.loss_grad(w)
        loss = float(loss)
        return Observation(w, {"loss": loss, "loss_pred": loss, "grad_norm": float(g.norm())},
                           estimates=self.estimates)

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """NumPy arrays and Python scalars from which ``load_state_dict`` restores the exact state."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def nest(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """A sub-state (an integrator's, an update rule's) as ``prefix.key`` entries of a process state."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unnest(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The sub-state that :func:`nest` stored under ``prefix``."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def as_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().copy()


def as_tensor(x, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    return torch.from_numpy(np.array(x)).to(device=device, dtype=dtype)


def flatten_state(state: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The entries ``keys`` of an optimizer state as one vector (in that order)."""
    return torch.cat([state[k].reshape(-1) for k in keys])


def unflatten_state(vec: Tensor, sizes: dict[str, int], keys: tuple[str, ...]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten_state` for the given entry sizes."""
    out, i = {}, 0
    for k in keys:
        out[k] = vec[i:i + sizes[k]]
        i += sizes[k]
    return out
