"""`RunConfig`: every setting of a run, in one frozen, typed record.

``simulate``, ``resume``, ``compare`` configs, sweeps and the CLI all read their options from here: a new field
is added once (with its default and its check) and every entry point accepts it, a sweep can vary it, and
``config.json`` stores it. Unknown keys fail with the valid ones and a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

import numpy as np

from .errors import RodflowError

DEFAULT_METHODS = ("gd", "gradient_flow")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings of one run (the problem is separate: it is an object, stored in config.json as its spec).

    lr, steps: GD's step size and the number of GD steps. methods: GD and the flows (``rodflow methods``);
    options: per-method options. optimizer/optimizer_options: the update rule that drives GD and every flow
    (``rodflow.optimizers``: gd, momentum, nesterov, rmsprop, adam, nadam). reference: the process every
    method's distances (``dist_gd``, ``dist_gd_mid``)
    are measured to (default GD; its row is first). sharpness_every/neigs/eig_tol: the top ``neigs`` Hessian eigenvalues every N
    steps (0: never). gfs_every/gfs_options: the GFS sharpness every N steps. measurements: further
    measurements by name with their options (``rodflow.measurements``; e.g. ``{"hessian_trace": {"every": 10}}``).
    record_iterates: True, False or
    a projection dimension k. dtype/device: where the run computes. seed: eigensolver starts, projections,
    GFS. checkpoint_every/checkpoint_seconds: how often a run directory is checkpointed. diverge_factor: a
    process stops when its loss or ‖w‖ exceeds this multiple of the initial one.
    """

    lr: float
    steps: int
    methods: tuple[str, ...] = DEFAULT_METHODS
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    optimizer: str = "gd"
    optimizer_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference: str = "gd"
    sharpness_every: int = 1
    neigs: int = 1
    eig_tol: float | None = None
    gfs_every: int = 0
    gfs_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    measurements: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    record_iterates: bool | int = True
    dtype: str = "float64"
    device: str | None = None
    seed: int = 0
    checkpoint_every: int | None = None
    checkpoint_seconds: float = 30.0
    diverge_factor: float = 1e8

    # ------------------------------------------------------------------------------------------- build
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], ignore: tuple[str, ...] = (), what: str = "run config") -> "RunConfig":
        """A config from a mapping (config.json, a TOML table, a sweep's row); keys in ``ignore`` are skipped,
        any other unknown key is a one-line error with the valid keys and the closest match."""
        check_keys(data, cls.fields() + tuple(ignore), what)
        kwargs = {k: v for k, v in data.items() if k in cls.fields()}
        if isinstance(kwargs.get("methods"), list):
            kwargs["methods"] = tuple(kwargs["methods"])
        for required in ("lr", "steps"):
            if required not in kwargs:
                raise RodflowError(f"{what} needs {required}")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "RunConfig":
        check_keys(changes, self.fields(), "RunConfig.replace")
        return dataclasses.replace(self, **changes)

    def checked(self, problem) -> "RunConfig":
        """This config with every value checked against ``problem`` and normalised (types, method order);
        a bad value is a one-line error naming the field."""
        from . import processes
        from .devices import resolve_device
        from .problem import Problem, dtype_name, resolve_dtype

        if not isinstance(problem, Problem):
            raise RodflowError(f"problem must be a rodflow.Problem (rodflow.problems.make or Problem.from_loss), "
                               f"got {type(problem).__name__}")
        lr = positive_float("lr", self.lr)
        steps = count("steps", self.steps, minimum=0)
        methods = self.methods
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
            raise RodflowError(f"methods must be method names, a list or a comma-separated string (e.g. "
                               f"\"gd,gradient_flow\"; see rodflow.processes.names()), got {methods!r}")
        methods = list(methods)
        if not methods:
            raise RodflowError("methods is empty; choose from: " + ", ".join(processes.names()))
        for m in methods:
            processes.REGISTRY.get(m)
        if len(set(methods)) != len(methods):
            raise RodflowError(f"methods lists a method twice: {', '.join(methods)}")
        reference = self.reference
        if not isinstance(reference, str) or reference not in processes.names():
            raise RodflowError(f"reference must be a method name ({', '.join(processes.names())}), got {reference!r}")
        if reference in methods:  # the reference first: the others are compared with it at every step
            methods = [reference] + [m for m in methods if m != reference]
        elif reference != "gd":  # (a run without GD has no distances by default; a named reference must run)
            raise RodflowError(f"reference {reference!r} is not among the methods {', '.join(methods)}; add it")
        record = self.record_iterates
        if not isinstance(record, bool):
            record = count("record_iterates", record, minimum=1)
        if not isinstance(self.options or {}, Mapping):
            raise RodflowError("options must map a method to its options, e.g. {'rod_flow': {'rtol': 1e-4}}")
        bad = [m for m, o in dict(self.options or {}).items() if not isinstance(o, Mapping)]
        if bad:
            raise RodflowError(f"options[{bad[0]!r}] must map that method's options to values, e.g. "
                               f"{{'rtol': 1e-4}}, got {dict(self.options)[bad[0]]!r}")
        options = {m: dict(o) for m, o in dict(self.options or {}).items()}
        for m, opts in options.items():
            if m not in methods:
                raise RodflowError(f"options given for {m!r}, which is not among the methods {', '.join(methods)}")
        moved = [k for k in ("optimizer", "optimizer_params") if k in options.get("gd", {})]
        if moved:
            raise RodflowError(f"gd.{moved[0]} is now the run's optimizer, for GD and every flow: use --optimizer "
                               "NAME --optimizer-opt KEY=VALUE (simulate(optimizer=..., optimizer_options={...}))")
        from . import optimizers

        if not isinstance(self.optimizer_options or {}, Mapping):
            raise RodflowError("optimizer_options must map an option to its value, e.g. {'beta1': 0.9}")
        optimizer_options = dict(self.optimizer_options or {})
        bad = [k for k in optimizer_options if not isinstance(k, str)]
        if bad:
            raise RodflowError(f"optimizer_options keys must be option names (strings), got {bad[0]!r}")
        name = self.optimizer
        if isinstance(name, optimizers.UpdateRule):  # a rule object: its name and options are what config.json keeps
            if optimizer_options:
                raise RodflowError("give either an optimizer rule object or a name with optimizer_options, not both")
            name, optimizer_options = name.name, {k: v for k, v in name.options().items()
                                                  if v != optimizers.options(name.name)[k]}
        rule = optimizers.make(name, **optimizer_options)
        optimizer_options = {k: rule.options()[k] for k in optimizer_options}  # plain Python values for config.json
        for m in methods:  # validates option names and values, and that each method models the optimizer
            processes.make(m, problem, lr, optimizer=rule, **options.get(m, {}))
        if not isinstance(self.gfs_options or {}, Mapping):
            raise RodflowError("gfs_options must map a GFS option to its value, e.g. {'tol': 1e-3}")
        gfs_options = dict(self.gfs_options or {})
        if gfs_options:
            from .gfs import gfs_options as check_gfs_options

            # unknown or invalid options fail before the run; config.json keeps the normalised values
            checked = check_gfs_options(problem, **gfs_options)
            gfs_options = {k: getattr(checked, k) for k in gfs_options}
        neigs = count("neigs", self.neigs, minimum=1)
        if neigs > problem.d:
            raise RodflowError(f"neigs {neigs} exceeds the problem's {problem.d} parameters; use neigs <= {problem.d}")
        from . import measurements as registry

        measured = registry.check(problem, self.measurements or {})
        device = problem.device if self.device is None else resolve_device(self.device)
        return dataclasses.replace(
            self, lr=lr, steps=steps, methods=tuple(methods), options=options, reference=reference,
            optimizer=rule.name, optimizer_options=optimizer_options,
            sharpness_every=count("sharpness_every", self.sharpness_every, minimum=0),
            neigs=neigs,
            eig_tol=None if self.eig_tol is None else positive_float("eig_tol", self.eig_tol),
            gfs_every=count("gfs_every", self.gfs_every, minimum=0), gfs_options=gfs_options, measurements=measured,
            record_iterates=record, dtype=dtype_name(resolve_dtype(self.dtype)), device=str(device),
            seed=seed_value("seed", self.seed),
            checkpoint_every=None if self.checkpoint_every is None else count("checkpoint_every",
                                                                              self.checkpoint_every, minimum=1),
            checkpoint_seconds=nonnegative_float("checkpoint_seconds", self.checkpoint_seconds),
            diverge_factor=positive_float("diverge_factor", self.diverge_factor))

    # ------------------------------------------------------------------------------------------ record
    def to_json(self, problem=None) -> dict[str, Any]:
        """The config.json record: every field, the problem's spec and the environment."""
        from .records import environment, jsonable

        out: dict[str, Any] = {}
        if problem is not None:
            from . import problems as registry

            registered = problem.name in registry.names() and problem._rebuild is not None
            out["problem"] = {"name": problem.name, "params": problem.params, "d": problem.d,
                              "registered": registered}
        for f in self.fields():
            value = getattr(self, f)
            out[f] = list(value) if f == "methods" else value
        for key in ("gfs_options", "measurements", "optimizer_options"):
            if not out[key]:
                del out[key]  # as config.json always had gfs_options: only when given
        out["environment"] = environment()
        return jsonable(out)

    @classmethod
    def from_json(cls, record: Mapping[str, Any], what: str = "config.json") -> "RunConfig":
        """The config of a run directory's config.json (older runs: missing fields take their defaults);
        ``what`` names the file in errors."""
        return cls.from_dict(record, ignore=("problem", "environment"), what=what)


def check_keys(data: Mapping[str, Any], valid, what: str) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RodflowError(f"{what} has unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def positive_float(name: str, value) -> float:
    if isinstance(value, (bool, str, bytes)):  # "0.1" from a config file is a slip, not a number
        raise RodflowError(f"{name} must be a positive number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RodflowError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise RodflowError(f"{name} must be a positive finite number, got {value!r}")
    return x


def nonnegative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)) or float(value) < 0:
        raise RodflowError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise RodflowError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise RodflowError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


#: seeds are integers in 0..MAX_SEED (each run derives further seeds from them, which must fit 64 bits)
MAX_SEED = 2**32 - 1


def seed_value(name: str, value) -> int:
    """A seed: an integer in 0..MAX_SEED, or a one-line error naming it."""
    ok = not isinstance(value, bool) and (isinstance(value, (int, np.integer))
                                          or isinstance(value, float) and value.is_integer())
    if not ok or not 0 <= int(value) <= MAX_SEED:
        raise RodflowError(f"{name} must be an integer in 0..{MAX_SEED}, got {value!r}")
    return int(value)
