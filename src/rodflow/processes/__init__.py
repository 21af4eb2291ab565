"""The process registry: GD and the continuous models of it (see ``base.Process``).

A new process is one new module here with a ``@register("name")`` subclass of ``Process``, plus its import
line below. Options are the keyword parameters of its ``__init__`` after ``problem`` and ``lr``.
"""

from __future__ import annotations

from typing import Any

from ..errors import RodflowError
from ..problem import Problem
from ..registry import Registry, check_params, parameters
from .base import Observation, Process

REGISTRY: Registry = Registry("method")
register = REGISTRY.register


def names() -> list[str]:
    return REGISTRY.names()


def options(name: str) -> dict[str, Any]:
    """Options of a process and their defaults."""
    return parameters(REGISTRY.get(name).__init__, skip=("self", "problem", "lr"))


def make(name: str, problem: Problem, lr: float, **opts: Any) -> Process:
    cls = REGISTRY.get(name)
    check_params("method", name, cls.__init__, opts, skip=("self", "problem", "lr"))
    return cls(problem, lr, **opts)


# Built-in processes: one import line per module.
from . import gd  # noqa: E402,F401
from . import gradient_flow  # noqa: E402,F401
from . import central_flow  # noqa: E402,F401
from . import rod_flow  # noqa: E402,F401

__all__ = ["Observation", "Process", "REGISTRY", "make", "names", "options", "register", "RodflowError"]
