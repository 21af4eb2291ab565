"""Update rules for the discrete process, in the style of optax: ``init`` and ``update`` are pure.

An update rule maps the gradient to a parameter increment, with its own state:

    state = rule.init(w0)
    delta, state = rule.update(g, state, w, lr)      # w_next = w + delta

A new optimizer (Adam, ...) is one class here or in a new module with ``@register("name")``; the ``gd``
process takes it through its ``optimizer`` option without any change to the process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch

from .errors import RodflowError
from .registry import Registry, check_params

Tensor = torch.Tensor
State = dict[str, Tensor]

REGISTRY: Registry = Registry("optimizer")
register = REGISTRY.register


class UpdateRule(Protocol):
    def init(self, w: Tensor) -> State: ...

    def update(self, g: Tensor, state: State, w: Tensor, lr: float) -> tuple[Tensor, State]: ...


@register("gd")
@dataclasses.dataclass(frozen=True)
class GradientDescent:
    """Plain gradient descent: Δw = −η g."""

    def init(self, w: Tensor) -> State:
        return {}

    def update(self, g: Tensor, state: State, w: Tensor, lr: float) -> tuple[Tensor, State]:
        return -lr * g, state


@register("momentum")
@dataclasses.dataclass(frozen=True)
class HeavyBall:
    """Polyak heavy-ball momentum: v ← β v + g, Δw = −η v."""

    beta: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.beta < 1.0:
            raise RodflowError(f"momentum beta must be in [0, 1), got {self.beta}")

    def init(self, w: Tensor) -> State:
        return {"v": torch.zeros_like(w)}

    def update(self, g: Tensor, state: State, w: Tensor, lr: float) -> tuple[Tensor, State]:
        v = self.beta * state["v"] + g
        return -lr * v, {"v": v}


def make(name: str, **params: Any) -> UpdateRule:
    cls = REGISTRY.get(name)
    check_params("optimizer", name, cls, params)
    return cls(**params)
