"""The measurement registry: quantities recorded at a method's point every N steps (beside the built-in
distance to GD, sharpness and GFS sharpness).

A new measurement is one new module here with a ``@register("name")`` subclass of ``Measurement``, plus its
import line below. Its options are the keyword parameters of its ``__init__`` after ``problem`` and ``seed``;
every measurement also takes ``every`` (record every N steps). A run asks for it with
``simulate(..., measurements={"hessian_trace": {"every": 10, "samples": 32}})`` (CLI: ``--measure
hessian_trace.every=10``); its columns are the metrics columns it returns.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import RodflowError
from ..problem import Problem
from ..registry import Registry, check_params, parameters
from .base import Measurement

REGISTRY: Registry = Registry("measurement")
register = REGISTRY.register


def names() -> list[str]:
    return REGISTRY.names()


def options(name: str) -> dict[str, Any]:
    """Options of a measurement and their defaults (``every`` included)."""
    return {"every": 1, **parameters(REGISTRY.get(name).__init__, skip=("self", "problem", "seed"))}


def split_every(name: str, opts: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """(every, the measurement's own options) with ``every`` checked."""
    from ..runconfig import count

    opts = dict(opts)
    every = count(f"{name} every", opts.pop("every", 1), minimum=1)
    return every, opts


def make(name: str, problem: Problem, seed: int, **opts: Any) -> Measurement:
    cls = REGISTRY.get(name)
    check_params("measurement", name, cls.__init__, opts, skip=("self", "problem", "seed"))
    return cls(problem, seed, **opts)


def check(problem: Problem, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The run's measurement specs, each built once so bad names and options fail before the run."""
    if not isinstance(specs, Mapping):
        raise RodflowError("measurements must map a measurement name to its options, e.g. "
                           "{'hessian_trace': {'every': 10}}")
    out = {}
    for name, opts in specs.items():
        if not isinstance(opts, Mapping):
            raise RodflowError(f"measurement {name!r}: options must be a mapping, e.g. {{'every': 10}}")
        _, own = split_every(name, opts)
        make(name, problem, 0, **own)
        out[name] = dict(opts)
    return out


# Built-in measurements: one import line per module.
from . import hessian_trace  # noqa: E402,F401
