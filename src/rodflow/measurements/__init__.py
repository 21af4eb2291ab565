"""The measurement registry: quantities recorded at a method's point every N steps.

Built in, configured by run settings (``RunConfig`` fields) rather than ``measurements=``: ``distance`` (to the
``reference`` process), ``sharpness`` (``sharpness_every``, ``neigs``, ``eig_tol``), ``preconditioned_sharpness``
(``optimizer`` with a preconditioner, at ``sharpness_every``) and ``gfs`` (``gfs_every``,
``gfs_options``). A new measurement is one new module here with a ``@register("name")`` subclass of ``Measurement``, plus its
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
        builtin = REGISTRY.get(name).builtin
        if builtin:
            raise RodflowError(f"measurement {name!r} is built in: {builtin}")
        if not isinstance(opts, Mapping):
            raise RodflowError(f"measurement {name!r}: options must be a mapping, e.g. {{'every': 10}}")
        _, own = split_every(name, opts)
        make(name, problem, 0, **own)
        out[name] = dict(opts)
    return out


def run_specs(config: Mapping[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, every, options) of every measurement a run makes, in row order: the built-ins from the run's
    settings (a config.json record), then the ``measurements`` it asks for."""
    specs = [("distance", 1, {}),
             ("sharpness", int(config["sharpness_every"]), {"k": int(config["neigs"]), "tol": config["eig_tol"]})]
    if int(config["sharpness_every"]) and config.get("optimizer", "gd") != "gd":
        from ..optimizers import REGISTRY as rules

        if rules.get(config["optimizer"]).preconditioned:
            specs.append(("preconditioned_sharpness", int(config["sharpness_every"]), {"tol": config["eig_tol"]}))
    if config.get("gfs_every"):
        specs.append(("gfs", int(config["gfs_every"]),
                      {"options": {"seed": config["seed"], **config.get("gfs_options", {})}}))
    for name, opts in config.get("measurements", {}).items():
        every, own = split_every(name, opts)
        specs.append((name, every, own))
    return specs


# Measurements: one import line per module.
from . import distance, gfs_sharpness, hessian_trace, preconditioned_sharpness, sharpness  # noqa: E402,F401
