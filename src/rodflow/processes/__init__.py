"""The process registry: GD and the continuous models of it (see ``base.Process``).

A new process is one new module here with a ``@register("name")`` subclass of ``Process``, plus its import
line below. Options are the keyword parameters of its ``__init__`` after ``problem`` and ``lr``.
"""

from __future__ import annotations

from typing import Any

from ..errors import RodflowError
from ..problem import Problem
from ..registry import Registry, check_params, check_values, parameters
from .base import Observation, Process

REGISTRY: Registry = Registry("method")


def register(name: str):
    """Class decorator: register a Process subclass under ``name`` (also its ``name`` attribute)."""

    def deco(cls):
        cls.name = name
        return REGISTRY.register(name)(cls)

    return deco


def names() -> list[str]:
    return REGISTRY.names()


def options(name: str) -> dict[str, Any]:
    """Options of a process and their defaults."""
    return parameters(REGISTRY.get(name).__init__, skip=SKIP)


SKIP = ("self", "problem", "lr", "optimizer")


def make(name: str, problem: Problem, lr: float, optimizer: Any = None, **opts: Any) -> Process:
    """Process ``name`` on ``problem`` with learning rate ``lr``, driven by the update rule ``optimizer`` (a
    ``rodflow.optimizers`` rule or name; default plain GD), with its own options."""
    cls = REGISTRY.get(name)
    check_params("method", name, cls.__init__, opts, skip=SKIP)
    try:  # the process's own checks and messages first
        proc = cls(problem, lr, optimizer=optimizer, **opts)
    except RodflowError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:  # a value of the wrong type: say which
        check_values("method", name, cls.__init__, opts, skip=SKIP)
        raise RodflowError(f"method {name!r}: bad option value ({type(exc).__name__}: {exc}); see "
                           f"rodflow.processes.options({name!r})") from None
    # what a process may take silently but should not: a seed of 1.5, True or -1, an integer option of 2.5
    check_values("method", name, cls.__init__, opts, skip=SKIP)
    return proc


# Built-in processes: one import line per module.
from . import gd  # noqa: E402,F401
from . import gradient_flow  # noqa: E402,F401
from . import central_flow  # noqa: E402,F401
from . import rod_flow  # noqa: E402,F401

__all__ = ["Observation", "Process", "REGISTRY", "make", "names", "options", "register", "RodflowError"]
