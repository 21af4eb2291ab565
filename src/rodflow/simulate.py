"""`simulate`: run GD and its continuous models in lock-step from one start, and record everything.

A run has three parts (``docs/architecture.md``): the stepper (``rodflow.stepper``: the processes, every call
guarded, divergence), the measurements (``rodflow.measurements``: distance to the reference process, sharpness,
GFS sharpness and plug-ins, each failing alone) and the writer (``rodflow.writer``: rows, per-step arrays, run
directory, checkpoints). The runner here drives them: for t = 0..steps every running process is advanced one
unit of GD time (started at t = 0), observed, measured and recorded; with ``out``, rows reach the run directory
as each step completes and states are checkpointed so ``resume`` continues to the same result.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import problems
from .devices import precise, resolve_device
from .errors import RodflowError, RodflowWarning
from .measurements.base import Measurement
from .problem import Problem, resolve_dtype
from .records import ITERATE, Result, check_config_record, read_json
from .runconfig import RunConfig
from .status import read_statuses
from .stepper import MEASUREMENT_ERRORS, Stepper, reason
from .writer import Writer

def simulate(
    problem: Problem,
    lr: float | None = None,
    steps: int | None = None,
    methods: Sequence[str] | None = None,
    sharpness_every: int | None = None,
    neigs: int | None = None,
    record_iterates: bool | int | None = None,
    dtype: str | None = None,
    seed: int | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    progress: bool | None = None,
    eig_tol: float | None = None,
    diverge_factor: float | None = None,
    gfs_every: int | None = None,
    gfs_options: dict[str, Any] | None = None,
    device: str | None = None,
    config: RunConfig | None = None,
    measurements: dict[str, dict[str, Any]] | None = None,
    reference: str | None = None,
    optimizer: str | None = None,
    optimizer_options: dict[str, Any] | None = None,
) -> Result:
    """Run ``methods`` on ``problem`` with learning rate ``lr`` for ``steps`` GD steps.

    Every setting is a field of :class:`rodflow.RunConfig` (defaults there: methods ("gd", "gradient_flow"),
    sharpness_every 1, neigs 1, record_iterates True, dtype "float64", seed 0, checkpoint_seconds 30,
    diverge_factor 1e8, gfs_every 0); pass them as keywords, or ``config=RunConfig(...)`` (keywords given as
    well override its fields).
    ``sharpness_every=N`` computes the top ``neigs`` Hessian eigenvalues at every method's point every N
    steps (0: never). ``record_iterates`` is True (full iterates), False (none) or an integer k (a fixed
    Gaussian random projection to k dimensions, for large models; distances to GD are always exact).
    ``options`` maps a method to its options (``rodflow.processes.options(name)`` lists them).
    ``optimizer`` ("gd", "momentum", "nesterov", "rmsprop", "adam", "nadam"; ``rodflow.optimizers``) with
    ``optimizer_options`` (e.g. ``{"beta1": 0.9}``) is the update rule of GD *and* of every flow: gradient flow
    becomes its stable flow, central flow holds λ_max(P⁻¹H) at its threshold, rod flow is the rod of its map. With ``out``,
    a run directory is written as the run goes (see ``rodflow.records``). ``progress=None`` shows a bar
    when stderr is a terminal. ``gfs_every=N`` records the GFS sharpness φ (``rodflow.gfs``) of every method's
    point every N steps (0: never) as metrics columns ``gfs_sharpness``, ``gfs_converged``, ``gfs_error``, ...;
    ``gfs_options`` are passed to the GFS solver (``rodflow.gfs.GFSOptions``: tol, max_grad_evals, ...).
    ``reference`` (default "gd") is the method whose iterate and midpoint the columns ``dist_gd`` and
    ``dist_gd_mid`` of every method measure the distance to (a run without it has no distances).
    ``measurements`` adds plug-in measurements (``rodflow.measurements``), e.g.
    ``{"hessian_trace": {"every": 10, "samples": 32}}``: their columns join the metrics.
    ``device`` ("cpu", "cuda", "cuda:1", "mps", "auto"; default: the problem's) is where every d-sized tensor
    lives; records and checkpoints are written from the CPU. On CUDA the run executes with TF32 off and
    deterministic algorithms on (``rodflow.devices.precise``).
    """
    given = {k: v for k, v in dict(lr=lr, steps=steps, methods=methods, sharpness_every=sharpness_every,
                                   neigs=neigs, record_iterates=record_iterates, dtype=dtype, seed=seed,
                                   options=options, checkpoint_every=checkpoint_every,
                                   checkpoint_seconds=checkpoint_seconds, eig_tol=eig_tol,
                                   diverge_factor=diverge_factor, gfs_every=gfs_every, gfs_options=gfs_options,
                                   measurements=measurements, device=device, reference=reference,
                                   optimizer=optimizer, optimizer_options=optimizer_options).items()
             if v is not None}
    if config is None:
        for required in ("lr", "steps"):
            if required not in given:
                raise RodflowError(f"simulate needs {required}= (or config=rodflow.RunConfig(lr=..., steps=...))")
        config = RunConfig(**given)
    elif not isinstance(config, RunConfig):
        raise RodflowError(f"config must be a rodflow.RunConfig, got {type(config).__name__}")
    else:
        config = config.replace(**given)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise RodflowError(f"out must be a directory path, got {type(out).__name__} {out!r}")
    config = config.checked(problem)
    if "central_flow" in config.methods:
        problem.check_third_derivative()  # user problems: central flow needs correct third derivatives
    torch_device = resolve_device(config.device)
    problem = problem.to(resolve_dtype(config.dtype), torch_device)
    with precise(torch_device):
        run = _Run(problem, config.to_json(problem), Path(out) if out is not None else None)
        return run.execute(progress)


def resume(path: str | os.PathLike, problem: Problem | None = None, progress: bool | None = None,
           device: str | None = None) -> Result:
    """Continue the run in ``path`` from its last checkpoint; it ends exactly as an uninterrupted run.

    Registered problems are rebuilt from ``config.json``; a custom problem must be passed again. The run
    continues on the device in ``config.json`` unless ``device`` moves it (e.g. a GPU run finished on a CPU:
    from then on the rounding is that device's, so it is no longer bit-identical to an uninterrupted run).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RodflowError(f"{path} is not a rodflow run directory (no config.json); check the path")
    config = read_json(path / "config.json", "config.json")
    check_config_record(config, path)
    RunConfig.from_json(config, what=str(path / "config.json"))  # a bad field: a one-line error, before any work
    if problem is None:
        spec = config["problem"]
        if not spec.get("registered"):
            raise RodflowError(
                f"run {path} used the custom problem {spec['name']!r}: pass it again, rodflow.resume(path, problem=...)"
            )
        problem = problems.make(spec["name"], **spec["params"])
    torch_device = resolve_device(device if device is not None else config.get("device", "cpu"))
    problem = problem.to(config["dtype"], torch_device)
    if problem.d != config["problem"]["d"]:
        raise RodflowError(f"the problem has {problem.d} parameters but the run has {config['problem']['d']}")
    with precise(torch_device):
        run = _Run(problem, config, path, resuming=True)
        return run.execute(progress)


class _Run:
    """One run: the stepper (processes), each method's measurements, and the writer, driven step by step."""

    def __init__(self, problem: Problem, config: dict[str, Any], out: Path | None, resuming: bool = False):
        from . import measurements as registry

        self.problem = problem
        self.config = config
        self.out = out
        self.methods: list[str] = config["methods"]
        self.steps: int = config["steps"]
        self.reference: str = config.get("reference", "gd")
        from . import optimizers

        rule = optimizers.make(config.get("optimizer", "gd"), **config.get("optimizer_options", {}))
        self.stepper = Stepper(problem, self.methods, config["lr"], config["options"], config["diverge_factor"],
                               optimizer=rule)
        self.measures: dict[str, list[Measurement]] = {}
        for i, m in enumerate(self.methods):
            self.measures[m] = []
            for name, every, opts in registry.run_specs(config):
                meas = registry.REGISTRY.get(name)(problem, config["seed"] * 7919 + i, **opts)
                meas.every = every
                self.measures[m].append(meas)
        self._warned: set[tuple[str, str]] = set()
        self.writer = Writer(out, self.methods, self.steps, problem.d, config["record_iterates"], config["seed"])
        self.next_step = 0
        self.last_checkpoint = time.monotonic()
        if out is not None:
            self.writer.open(config, resuming)
            try:
                if resuming:
                    self._resume()
                self.writer.start_rows()
            except BaseException:
                self.writer.close()
                raise

    # ---------------------------------------------------------------------------------------------- loop
    def execute(self, progress: bool | None) -> Result:
        from tqdm.auto import tqdm

        bar = None
        if progress is not False:
            bar = tqdm(total=self.steps + 1, initial=self.next_step, disable=False if progress else None,
                       desc=self.problem.name, unit="step", leave=False)
        restore = self._catch_signals()
        try:
            for t in range(self.next_step, self.steps + 1):
                if t == 0:
                    self.stepper.start(self.problem.w0)
                else:
                    self.stepper.advance(t)
                self._record_all(t)
                self.next_step = t + 1
                if bar:
                    bar.update(1)
                if t > 0:
                    self._maybe_checkpoint(t)
                self._maybe_stop(t)
            metrics, iterates, aux = self.writer.finish(self.stepper.status)
            return Result(metrics, iterates, aux, self.config, dict(self.stepper.status), self.out)
        finally:
            restore()
            if bar:
                bar.close()
            self.writer.close()

    def _catch_signals(self):
        """With a run directory, SIGINT/SIGTERM stop the run at the end of the current step, after a checkpoint
        (a second SIGINT stops at once). Only in a main process's main thread (not in sweep workers)."""
        import multiprocessing
        import signal
        import threading

        self._stop: int | None = None
        if self.out is None or threading.current_thread() is not threading.main_thread() \
                or multiprocessing.parent_process() is not None:
            return lambda: None

        def handler(signum, frame):
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore():
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _maybe_stop(self, t: int) -> None:
        if self._stop is None or t >= self.steps:
            return
        self._checkpoint(t)
        self.writer.close()
        raise Interrupted(self._stop, t, self.out)

    # ------------------------------------------------------------------------------------------ a step
    def _record_all(self, t: int) -> None:
        """Record every running method at step t; the reference process (recorded first) is what the others'
        distances are measured to."""
        reference = None
        for m in self.methods:
            if not self.stepper.active[m]:
                continue
            obs = self._record(m, t, reference)
            if m == self.reference:
                reference = obs.references if obs is not None and self.stepper.active[m] else None

    def _record(self, m: str, t: int, reference: dict[str, torch.Tensor] | None):
        start = time.perf_counter()
        observed = self.stepper.observe(m, t)  # measurement: not counted in the model's cost
        if observed is None:
            return None
        obs, spent, dyn_wall = observed
        if m == self.reference:  # the reference itself: distance 0 to its iterate (GD: half a step to its midpoint)
            reference = obs.references
        p = obs.point
        row: dict[str, Any] = {"method": m, "step": t, **obs.scalars}
        arrays = dict(obs.arrays)
        vectors = {**obs.vectors, ITERATE: p.detach().cpu().numpy()}
        measured_wall = 0.0
        diverged = None
        for first in (True, False):  # the measurements made at a diverging step, then the divergence check
            if not first:
                diverged = self.stepper.diverged(m, t, row["loss"], p)
            for meas in self.measures[m]:
                if meas.at_divergence != first:
                    continue
                row.update(meas.blank())
                if meas.every and t % meas.every == 0 and not diverged:
                    measured_wall += self._measure(m, t, meas, obs, reference, row)
        for key in [k for k, v in row.items() if isinstance(v, np.ndarray)]:
            arrays[key] = row.pop(key)
        row["grad_evals"] = spent.grad_evals
        row["hvps"] = spent.hvps
        row["d3"] = spent.d3
        row["wall_s"] = dyn_wall + (time.perf_counter() - start) - measured_wall
        self.writer.store(m, t, arrays, vectors)
        self.writer.add_row(row)
        if diverged:
            self.stepper.stop(m, diverged)
        return obs

    def _measure(self, m: str, t: int, meas: Measurement, obs, reference, row: dict[str, Any]) -> float:
        """One measurement into the row (a failure is its NaN with the reason); its wall time when timed apart."""
        start = time.perf_counter()
        try:
            out = meas.record(obs, t, reference)
            raised = False
        except MEASUREMENT_ERRORS as exc:  # a failing measurement fails alone
            out = meas.failed(reason(exc))
            raised = True
        elapsed = time.perf_counter() - start
        row.update(out)
        why = out.get(f"{meas.name}_reason")
        if why and meas.warn and (m, meas.name) not in self._warned:
            self._warned.add((m, meas.name))
            warnings.warn(meas.warning(m, t, why, raised), RodflowWarning, stacklevel=2)
        if not meas.timed:
            return 0.0
        row[f"{meas.name}_wall_s"] = elapsed
        return elapsed

    # -------------------------------------------------------------------------------------- checkpoints
    def _maybe_checkpoint(self, t: int) -> None:
        if self.out is None or t == self.steps:
            return
        every = self.config["checkpoint_every"]
        due = (t % every == 0) if every else time.monotonic() - self.last_checkpoint >= self.config["checkpoint_seconds"]
        if due:
            self._checkpoint(t)

    def _checkpoint(self, t: int) -> None:
        meta, proc_states = self.stepper.state_dict()
        states: dict[str, Any] = {}
        for m in self.methods:
            parts = [("proc", proc_states.get(m, {}))]
            parts += [(_state_key(meas), meas.state_dict()) for meas in self.measures[m]]
            for prefix, state in parts:
                states.update({f"{m}/{prefix}/{key}": value for key, value in state.items()})
        self.writer.checkpoint(t, meta, states, self.stepper.status)
        self.last_checkpoint = time.monotonic()

    def _resume(self) -> None:
        record = self.writer.status_record()
        if record.get("complete"):
            self.next_step = self.steps + 1  # already finished: the rows and arrays as written
            self.stepper.status = read_statuses(record)
            self.writer.reload_complete(self.config, self.stepper.status)
            return
        checkpoint = self.writer.read_checkpoint()
        if checkpoint is None:  # killed before the first checkpoint: start over, from nothing
            return
        meta, flat = checkpoint
        t = int(meta["step"])
        states: dict[tuple[str, str], dict[str, Any]] = {}
        for name, value in flat.items():
            m, prefix, key = name.split("/", 2)
            states.setdefault((m, prefix), {})[key] = value
        self.stepper.load_state_dict(meta, {m: states.get((m, "proc"), {}) for m in self.methods})
        for m in self.methods:
            for meas in self.measures[m]:
                meas.load_state_dict(states.get((m, _state_key(meas)), {}))
        self.writer.resume_from(t, {m: self.stepper.last_recorded(m, t) for m in self.methods},
                                meta.get("arrays", {}))
        self.next_step = t + 1


def _state_key(meas: Measurement) -> str:
    """A measurement's prefix in checkpoints (the built-ins keep the names older checkpoints used)."""
    return meas.state_key or f"measure.{meas.name}"


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM at the end of step ``step``, with a checkpoint in ``path``."""

    def __init__(self, signum: int, step: int, path: Path | None):
        super().__init__(f"interrupted after step {step}")
        self.signum, self.step, self.path = signum, step, path


