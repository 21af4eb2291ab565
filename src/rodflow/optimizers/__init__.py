"""Update rules (optimizers): one rule drives GD and every flow of a run (``base.UpdateRule``, science.md §6).

``make("adam", beta1=0.9)`` builds one; ``names()`` and ``options(name)`` list them. A new optimizer is one
module here with a ``@register("name")`` subclass of ``UpdateRule``, plus its import line below.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RodflowError
from ..registry import Registry, check_params
from .base import State, UpdateRule

REGISTRY: Registry = Registry("optimizer")
register = REGISTRY.register


def names() -> list[str]:
    return REGISTRY.names()


def options(name: str) -> dict[str, Any]:
    """An optimizer's options and their defaults."""
    return {f.name: f.default for f in dataclasses.fields(REGISTRY.get(name))}


def make(name: str | UpdateRule = "gd", **params: Any) -> UpdateRule:
    """The update rule ``name`` with its options (a rule object is returned as it is)."""
    if isinstance(name, UpdateRule):
        if params:
            raise RodflowError("optimizer options go with an optimizer name, not with a rule object")
        return name
    if not isinstance(name, str):
        raise RodflowError(f"optimizer must be a name ({', '.join(names())}), got {name!r}")
    cls = REGISTRY.get(name)
    check_params("optimizer", name, cls, params)
    return cls(**params)


def threshold_text(config, lr: float) -> str:
    """How a run's summary line states its stability threshold: 2/η for plain GD, else the optimizer's (on
    λ_max(P⁻¹H) for a rule with a preconditioner). ``config``: a config.json record."""
    import torch

    name = config.get("optimizer", "gd")
    if name == "gd":
        return f"2/η = {2 / lr:.4g}"
    rule = make(name, **config.get("optimizer_options", {}))
    if rule.preconditioned:
        return f"optimizer {rule}, threshold on λ_max(P⁻¹H) (column threshold)"
    return f"optimizer {rule}, threshold {rule.threshold(rule.init(torch.zeros(1)), lr, 1e6):.4g}"


# Built-in optimizers: one import line per module.
from . import gd, momentum, nesterov, rmsprop, adam, nadam  # noqa: E402,F401

__all__ = ["REGISTRY", "State", "UpdateRule", "make", "names", "options", "register", "threshold_text"]
