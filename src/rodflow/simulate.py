"""`simulate`: run GD and its continuous models in lock-step from one start, and record everything.

Data flow of one run: the problem is cast to the run's dtype; every method's process starts at ``w0``;
then for t = 0..steps each active process is observed (loss, point, its own scalars and arrays), measured
(distance to GD at the same step, top Hessian eigenvalues every ``sharpness_every`` steps, warm-started per
method), recorded (a metrics row and a row of each per-step array), checked for divergence, and advanced one
unit of GD time. With ``out``, rows reach the run directory as each step completes and process states are
checkpointed so ``resume`` continues to the same result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import processes, problems
from .devices import precise, resolve_device
from .errors import RodflowError, RodflowWarning
from .runconfig import DEFAULT_METHODS, RunConfig
from .status import Status, read_statuses, statuses_record
from .linalg.eigs import SharpnessTracker
from .problem import Problem, resolve_dtype
from .records import (
    ITERATE,
    Result,
    metrics_frame,
    read_json,
    read_jsonl_rows,
    read_jsonl,
    write_json,
    write_parquet,
)

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
) -> Result:
    """Run ``methods`` on ``problem`` with learning rate ``lr`` for ``steps`` GD steps.

    Every setting is a field of :class:`rodflow.RunConfig` (defaults there: methods ("gd", "gradient_flow"),
    sharpness_every 1, neigs 1, record_iterates True, dtype "float64", seed 0, checkpoint_seconds 30,
    diverge_factor 1e8, gfs_every 0); pass them as keywords, or ``config=RunConfig(...)`` (keywords given as
    well override its fields).
    ``sharpness_every=N`` computes the top ``neigs`` Hessian eigenvalues at every method's point every N
    steps (0: never). ``record_iterates`` is True (full iterates), False (none) or an integer k (a fixed
    Gaussian random projection to k dimensions, for large models; distances to GD are always exact).
    ``options`` maps a method to its options (``rodflow.processes.options(name)`` lists them). With ``out``,
    a run directory is written as the run goes (see ``rodflow.records``). ``progress=None`` shows a bar
    when stderr is a terminal. ``gfs_every=N`` records the GFS sharpness φ (``rodflow.gfs``) of every method's
    point every N steps (0: never) as metrics columns ``gfs_sharpness``, ``gfs_converged``, ``gfs_error``, ...;
    ``gfs_options`` are passed to the GFS solver (``rodflow.gfs.GFSOptions``: tol, max_grad_evals, ...).
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
                                   measurements=measurements, device=device).items() if v is not None}
    if config is None:
        for required in ("lr", "steps"):
            if required not in given:
                raise RodflowError(f"simulate needs {required}= (or config=rodflow.RunConfig(lr=..., steps=...))")
        config = RunConfig(**given)
    elif not isinstance(config, RunConfig):
        raise RodflowError(f"config must be a rodflow.RunConfig, got {type(config).__name__}")
    else:
        config = config.replace(**given)
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
    RunConfig.from_json(config)  # an unknown or missing field is a one-line error, before anything runs
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
    """One run: processes, measurements, buffers and (optionally) the run directory."""

    def __init__(self, problem: Problem, config: dict[str, Any], out: Path | None, resuming: bool = False):
        self.problem = problem
        self.config = config
        self.out = out
        self.methods: list[str] = config["methods"]
        self.steps: int = config["steps"]
        self.procs = {
            m: processes.make(m, problem, config["lr"], **config["options"].get(m, {})) for m in self.methods
        }
        self.trackers = {
            m: SharpnessTracker(problem, config["neigs"], config["eig_tol"], seed=config["seed"] * 7919 + i)
            for i, m in enumerate(self.methods)
        }
        self.gfs: dict[str, Any] = {}
        self.measures = self._measurements()
        self.status = {m: Status() for m in self.methods}
        self._warned: set[str] = set()
        self.active = {m: True for m in self.methods}
        self.scale: dict[str, tuple[float, float]] = {}
        self.arrays: dict[str, dict[str, np.ndarray]] = {m: {} for m in self.methods}
        self.rows: list[dict[str, Any]] = []
        self._cost: dict[str, tuple[Any, float]] = {}
        self.projection = self._projection()
        self.next_step = 0
        self.jsonl = None
        self.last_checkpoint = time.monotonic()
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
                probe = out / ".rodflow-write-test"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise RodflowError(f"cannot write the run directory {out} ({exc.strerror or type(exc).__name__}); "
                                   "choose another out / --out") from None
            self._lock = _lock(out)
            try:
                if resuming:
                    self._load_checkpoint()
                else:
                    for stale in ("metrics.parquet", "metrics.jsonl", "checkpoint.npz", "status.json"):
                        (out / stale).unlink(missing_ok=True)
                    shutil.rmtree(out / "arrays", ignore_errors=True)  # a previous run's per-step arrays
                    write_json(out / "config.json", config)
                self.jsonl = open(out / "metrics.jsonl", "a", buffering=1)
            except BaseException:
                self._unlock()
                raise

    # ---------------------------------------------------------------------------------------------- loop
    def execute(self, progress: bool | None) -> Result:
        from tqdm.auto import tqdm

        w0 = self.problem.w0
        bar = None
        if progress is not False:
            bar = tqdm(total=self.steps + 1, initial=self.next_step, disable=False if progress else None,
                       desc=self.problem.name, unit="step", leave=False)
        restore = self._catch_signals()
        try:
            if self.next_step == 0:
                for m in self.methods:
                    self._guarded(m, 0, lambda p=self.procs[m]: p.start(w0))
                self._record_all(0)
                self.next_step = 1
                if bar:
                    bar.update(1)
                self._maybe_stop(0)
            for t in range(self.next_step, self.steps + 1):
                for m in self.methods:
                    if self.active[m]:
                        self._guarded(m, t, self.procs[m].advance)
                self._record_all(t)
                self.next_step = t + 1
                if bar:
                    bar.update(1)
                self._maybe_checkpoint(t)
                self._maybe_stop(t)
            return self._finish()
        finally:
            restore()
            if bar:
                bar.close()
            self._unlock()

    def _unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.unlink(missing_ok=True)
            self._lock = None

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
        if self.jsonl is not None:
            self.jsonl.close()
        raise Interrupted(self._stop, t, self.out)

    def _guarded(self, m: str, t: int, fn) -> None:
        """Run one process call; a failure stops that process only, with the reason recorded."""
        start = time.perf_counter()
        try:
            with self.problem.counting() as spent:
                fn()
        except MEASUREMENT_ERRORS as exc:
            self.active[m] = False
            self.status[m] = Status("failed", t, _reason(exc))
            return
        self._cost[m] = (spent, time.perf_counter() - start)

    def _record_all(self, t: int) -> None:
        """Record every active method at step t; GD (first) is the reference the others are compared with."""
        reference = None
        for m in self.methods:
            if not self.active[m]:
                continue
            obs = self._record(m, t, reference)
            if m == "gd":
                reference = obs.references if obs is not None and self.active["gd"] else None

    def _record(self, m: str, t: int, reference: dict[str, torch.Tensor] | None):
        proc = self.procs[m]
        spent, dyn_wall = self._cost.pop(m)
        start = time.perf_counter()
        try:
            obs = proc.observe()  # measurement: not counted in the model's cost
        except MEASUREMENT_ERRORS as exc:  # the process cannot show its point: it fails alone
            self.active[m] = False
            self.status[m] = Status("failed", t, f"observe: {_reason(exc)}")
            return None
        p = obs.point
        row: dict[str, Any] = {"method": m, "step": t}
        row.update(obs.scalars)
        if m == "gd":  # the reference itself: distance 0 to its iterate, half a step to its midpoint
            reference = obs.references
        row["dist_gd"] = float((p - reference["iterate"]).norm()) if reference is not None else math.nan
        row["dist_gd_mid"] = (float((p - reference["midpoint"]).norm())
                              if reference is not None and "midpoint" in reference else math.nan)
        diverged = self._diverged(m, t, row["loss"], p)
        every = self.config["sharpness_every"]
        k = self.config["neigs"]
        eigs = np.full(k, np.nan)
        row["sharpness"] = math.nan
        if every and t % every == 0 and not diverged:
            s0 = time.perf_counter()
            try:
                res = self.trackers[m](p)
            except MEASUREMENT_ERRORS as exc:  # a failing measurement fails alone: NaN with the reason
                res = None
                row["eig_converged"] = 0.0
                row["sharpness_reason"] = _reason(exc)
                self._warn_unconverged(m, t, row["sharpness_reason"], "failed")
            if res is not None:
                row["sharpness_hvps"] = res.hvps
                row["eig_converged"] = float(res.converged)
                row["eig_residual"] = float(res.residuals.max()) / max(float(res.values.abs().max()), 1e-300)
                if res.converged:
                    eigs[: res.values.numel()] = res.values.double().cpu().numpy()
                    row["sharpness"] = float(eigs[0])
                else:  # an unconverged Rayleigh quotient is not a measurement: NaN, with the reason
                    row["sharpness_reason"] = res.reason
                    self._warn_unconverged(m, t, res.reason)
            row["sharpness_wall_s"] = time.perf_counter() - s0
        if k > 1:
            for i in range(k):
                row[f"eig_{i + 1}"] = float(eigs[i])
        gfs_every = self.config.get("gfs_every", 0)
        if gfs_every and t % gfs_every == 0 and not diverged:
            g0 = time.perf_counter()
            try:
                phi = self._gfs_solver(m)(p)
                row.update(phi.as_row())
                if phi.reason:
                    row["gfs_reason"] = phi.reason
            except MEASUREMENT_ERRORS as exc:  # fails alone, like the sharpness
                row.update(gfs_sharpness=math.nan, gfs_converged=0.0, gfs_reason=_reason(exc),
                           gfs_wall_s=time.perf_counter() - g0)
        measured_wall = self._measure(m, t, p, row) if not diverged else 0.0
        row["grad_evals"] = spent.grad_evals
        row["hvps"] = spent.hvps
        row["d3"] = spent.d3
        row["wall_s"] = (dyn_wall + (time.perf_counter() - start) - row.get("sharpness_wall_s", 0.0)
                        - row.get("gfs_wall_s", 0.0) - measured_wall)
        arrays = dict(obs.arrays)
        if self.config["record_iterates"] is not False:
            arrays[ITERATE] = p.detach().cpu().numpy()
        if every:
            arrays["eigs"] = eigs
        self._store(m, t, arrays)
        self.rows.append(row)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(row) + "\n")
        if diverged:
            self.active[m] = False
            self.status[m] = diverged
        return obs

    def _measurements(self) -> dict[str, dict[str, tuple[int, Any]]]:
        from . import measurements as registry

        out: dict[str, dict[str, tuple[int, Any]]] = {}
        for i, m in enumerate(self.methods):
            out[m] = {}
            for name, opts in self.config.get("measurements", {}).items():
                every, own = registry.split_every(name, opts)
                out[m][name] = (every, registry.make(name, self.problem, self.config["seed"] * 7919 + i, **own))
        return out

    def _measure(self, m: str, t: int, p: torch.Tensor, row: dict[str, Any]) -> float:
        """The plug-in measurements due at step t (each fails alone); their wall time, not the model's."""
        total = 0.0
        for name, (every, measurement) in self.measures[m].items():
            if t % every:
                continue
            start = time.perf_counter()
            try:
                row.update(measurement.measure(p, t))
            except MEASUREMENT_ERRORS as exc:
                row[name] = math.nan
                row[f"{name}_reason"] = _reason(exc)
            row[f"{name}_wall_s"] = time.perf_counter() - start
            total += row[f"{name}_wall_s"]
        return total

    def _warn_unconverged(self, m: str, t: int, reason: str, what: str = "did not converge") -> None:
        if m not in self._warned:
            self._warned.add(m)
            warnings.warn(f"{m}: the sharpness at step {t} {what} ({reason}); recorded as NaN "
                          "(column sharpness_reason; count in the summary's sharpness_nan)", RodflowWarning,
                          stacklevel=2)

    def _diverged(self, m: str, t: int, loss: float, p: torch.Tensor) -> Status | None:
        norm = float(p.norm())
        if t == 0 or m not in self.scale:
            self.scale[m] = (max(1.0, abs(loss)) if math.isfinite(loss) else 1.0, max(1.0, norm))
        loss_scale, w_scale = self.scale[m]
        factor = self.config["diverge_factor"]
        if not math.isfinite(loss) or not math.isfinite(norm):
            return Status("diverged", t, f"non-finite {'loss' if not math.isfinite(loss) else 'parameters'}")
        if abs(loss) > factor * loss_scale:
            return Status("diverged", t, f"|loss| {abs(loss):.3g} > {factor:g} x initial")
        if norm > factor * w_scale:
            return Status("diverged", t, f"‖w‖ {norm:.3g} > {factor:g} x initial")
        return None

    # ------------------------------------------------------------------------------------------ storage
    def _projection(self) -> np.ndarray | None:
        k = self.config["record_iterates"]
        if isinstance(k, bool):
            return None
        rng = np.random.default_rng(self.config["seed"] + 12345)
        return (rng.standard_normal((k, self.problem.d)) / math.sqrt(k)).astype(np.float32)

    def _store(self, m: str, t: int, arrays: dict[str, np.ndarray]) -> None:
        d = self.problem.d
        for key, value in arrays.items():
            value = np.asarray(value)
            if value.shape == (d,) and d > 1:  # parameter-space arrays follow record_iterates
                if self.config["record_iterates"] is False:
                    continue
                if self.projection is not None:
                    value = self.projection @ value.astype(np.float32)
            store = self.arrays[m].get(key)
            if store is None:
                store = self._allocate(m, key, value)
            store[t] = value

    def _allocate(self, m: str, key: str, value: np.ndarray) -> np.ndarray:
        shape = (self.steps + 1, *value.shape)
        dtype = np.result_type(value.dtype, np.float32) if value.dtype.kind in "fc" else np.float64
        if self.out is not None:
            folder = self.out / "arrays" / m
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{key}.npy"
            if target.exists():
                store = np.load(target, mmap_mode="r+")
            else:
                try:
                    store = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)
                except (OSError, ValueError, MemoryError) as exc:
                    raise RodflowError(_too_big(m, key, shape, dtype, exc)) from None
                store[:] = np.nan
        else:
            try:
                store = np.full(shape, np.nan, dtype=dtype)
            except (MemoryError, ValueError) as exc:
                raise RodflowError(_too_big(m, key, shape, dtype, exc)) from None
        self.arrays[m][key] = store
        return store

    def _gfs_solver(self, m: str):
        if m not in self.gfs:
            from .gfs import GFSSolver

            opts = {"seed": self.config["seed"], **self.config.get("gfs_options", {})}
            self.gfs[m] = GFSSolver(self.problem, **opts)
        return self.gfs[m]

    # -------------------------------------------------------------------------------------- checkpoints
    def _maybe_checkpoint(self, t: int) -> None:
        if self.out is None or t == self.steps:
            return
        every = self.config["checkpoint_every"]
        due = (t % every == 0) if every else time.monotonic() - self.last_checkpoint >= self.config["checkpoint_seconds"]
        if due:
            self._checkpoint(t)

    def _checkpoint(self, t: int) -> None:
        for arrays in self.arrays.values():
            for arr in arrays.values():
                if isinstance(arr, np.memmap):
                    arr.flush()
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())
        blobs: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"step": t, "status": {m: s.to_dict() for m, s in self.status.items()},
                                "active": self.active, "arrays": {m: sorted(a) for m, a in self.arrays.items()},
                                "scale": self.scale, "scalars": {}}
        for m in self.methods:
            for prefix, state in (("proc", self.procs[m].state_dict() if self.active[m] else {}),
                                  ("eig", self.trackers[m].state_dict()),
                                  ("gfs", self.gfs[m].state_dict() if m in self.gfs else {}),
                                  *((f"measure.{name}", meas.state_dict())
                                    for name, (_, meas) in self.measures[m].items())):
                for key, value in state.items():
                    name = f"{m}/{prefix}/{key}"
                    if isinstance(value, np.ndarray):
                        blobs[name] = value
                    else:
                        meta["scalars"][name] = value
        blobs["__meta__"] = np.array(json.dumps(meta))
        tmp = self.out / "checkpoint.tmp.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, **blobs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.out / "checkpoint.npz")
        write_json(self.out / "status.json", {"complete": False, "last_checkpoint": t,
                                              **statuses_record(self.status)})
        self.last_checkpoint = time.monotonic()

    def _start_over(self) -> None:
        """A run killed before its first checkpoint restarts from step 0: drop what it wrote."""
        for stale in ("metrics.parquet", "metrics.jsonl", "status.json"):
            (self.out / stale).unlink(missing_ok=True)
        shutil.rmtree(self.out / "arrays", ignore_errors=True)

    def _load_checkpoint(self) -> None:
        path = self.out / "checkpoint.npz"
        status_path = self.out / "status.json"
        status_record = read_json(status_path, "status.json") if status_path.is_file() else {}
        if status_record.get("complete"):
            self.next_step = self.steps + 1  # already finished: _finish reloads it
            self.rows = read_jsonl(self.out / "metrics.jsonl").to_dict("records")
            for m in self.methods:
                for p in (self.out / "arrays" / m).glob("*.npy"):
                    self.arrays[m][p.stem] = np.load(p, mmap_mode="r+")
            self.status = read_statuses(status_record)
            return
        if not path.is_file():  # killed before the first checkpoint: start over, from nothing
            self._start_over()
            return
        try:
            with np.load(path) as data:
                blobs = {k: data[k] for k in data.files}
            meta = json.loads(str(blobs.pop("__meta__")))
            t = int(meta["step"])
        except Exception as exc:  # zipfile, pickle, JSON and key errors: the file is not a whole checkpoint
            raise RodflowError(f"{path} is damaged ({type(exc).__name__}); resume cannot continue: start the run "
                               "again with --overwrite (rodflow.load still reads the rows written so far)") from None
        self.status = {m: Status.from_record(s) for m, s in meta["status"].items()}
        self.active = meta["active"]
        self.scale = {m: tuple(v) for m, v in meta["scale"].items()}
        states: dict[tuple[str, str], dict[str, Any]] = {}
        for name, value in list(blobs.items()) + list(meta["scalars"].items()):
            m, prefix, key = name.split("/", 2)
            states.setdefault((m, prefix), {})[key] = value
        for m in self.methods:
            if self.active[m]:
                self.procs[m].load_state_dict(states.get((m, "proc"), {}))
            self.trackers[m].load_state_dict(states.get((m, "eig"), {}), device=self.problem.device)
            if (m, "gfs") in states:  # the GFS solver's warm starts: φ after resume is bitwise the same
                self._gfs_solver(m).load_state_dict(states[(m, "gfs")])
            for name, (_, meas) in self.measures[m].items():
                meas.load_state_dict(states.get((m, f"measure.{name}"), {}))
        rows = [r for r in read_jsonl_rows(self.out / "metrics.jsonl") if r["step"] <= t]
        have = {(r["method"], r["step"]) for r in rows}
        for m in self.methods:  # every method active at the checkpoint has its row for every step up to it
            st = self.status[m]
            last = t if meta["active"].get(m) else (-1 if st.step is None else st.step - (st.kind != "diverged"))
            missing = [s for s in range(0, min(t, last) + 1) if (m, s) not in have]
            if missing:
                raise RodflowError(f"{self.out / 'metrics.jsonl'} lacks {m}'s rows for steps {missing[0]}.. that the "
                                   f"checkpoint at step {t} covers; restore the file or start the run again with "
                                   "--overwrite")
        for m, keys in meta.get("arrays", {}).items():
            for key in keys:
                if not (self.out / "arrays" / m / f"{key}.npy").is_file():
                    raise RodflowError(f"{self.out / 'arrays' / m / (key + '.npy')} is missing but the checkpoint at "
                                       f"step {t} has it; restore it or start the run again with --overwrite")
        self.rows = rows
        tmp = self.out / "metrics.jsonl.tmp"
        with open(tmp, "w") as fh:
            for r in rows:
                fh.write(json.dumps(_clean(r)) + "\n")
        os.replace(tmp, self.out / "metrics.jsonl")
        for m in self.methods:
            for p in (self.out / "arrays" / m).glob("*.npy"):
                if not p.name.endswith(".tmp.npy"):
                    self.arrays[m][p.stem] = np.load(p, mmap_mode="r+")
        self.next_step = t + 1

    # ------------------------------------------------------------------------------------------- finish
    def _finish(self) -> Result:
        metrics = metrics_frame([_clean(r) for r in self.rows])
        iterates = {m: self.arrays[m][ITERATE] for m in self.methods if ITERATE in self.arrays[m]}
        aux = {m: {k: v for k, v in self.arrays[m].items() if k != ITERATE} for m in self.methods}
        result = Result(metrics, iterates, aux, self.config, dict(self.status), self.out)
        if self.out is not None:
            if self.jsonl is not None:
                self.jsonl.close()
            for arrays in self.arrays.values():
                for arr in arrays.values():
                    if isinstance(arr, np.memmap):
                        arr.flush()
            write_parquet(self.out / "metrics.parquet", metrics)
            write_json(self.out / "status.json", {"complete": True, **statuses_record(self.status)})
        return result


LOCK = ".lock"


def _lock(out: Path) -> Path:
    """Take the run directory's lock (a file holding the writer's PID); a live other writer is a one-line error,
    a dead one's lock (a killed run) is taken over."""
    path = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and pid != os.getpid() and _alive(pid, wait=3.0):
                raise RodflowError(f"{out} is being written by process {pid}; wait for it to finish or stop it "
                                   f"(a stale lock: delete {path})") from None
            path.unlink(missing_ok=True)  # the writer is gone: its lock is stale
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return path
    raise RodflowError(f"cannot take the lock {path}; another writer keeps creating it")


def _alive(pid: int, wait: float = 0.0) -> bool:
    """Whether process ``pid`` is running (a zombie is not); a process that exits within ``wait`` seconds
    (e.g. a sweep worker dying with its parent) counts as gone."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:  # exists, owned by someone else
            running = True
        if running:
            try:
                with open(f"/proc/{pid}/status") as fh:
                    running = not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
            except OSError:
                pass  # no /proc (macOS) or it just exited
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM at the end of step ``step``, with a checkpoint in ``path``."""

    def __init__(self, signum: int, step: int, path: Path | None):
        super().__init__(f"interrupted after step {step}")
        self.signum, self.step, self.path = signum, step, path


# what a process step or a measurement may raise without ending the run (the others are bugs: they propagate)
MEASUREMENT_ERRORS = (RuntimeError, ValueError, ArithmeticError, torch.linalg.LinAlgError, NotImplementedError)


def _too_big(m: str, key: str, shape, dtype, exc: BaseException) -> str:
    size = float(np.prod(shape, dtype=float)) * np.dtype(dtype).itemsize
    return (f"cannot allocate {m}'s per-step array {key!r} of shape {tuple(shape)} ({size / 2**30:.3g} GiB: "
            f"{type(exc).__name__}); use fewer steps, record_iterates=False or an integer k (--iterates none|k)")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Drop the NaN fillers pandas adds for columns a row never had (so JSONL rows stay as written)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v) and k not in _ALWAYS)}


_ALWAYS = {"loss", "loss_pred", "grad_norm", "sharpness", "dist_gd", "dist_gd_mid"}
