"""Sweeps: a grid of ordinary runs, executed by a process pool, Ray or Slurm (submitit), with nothing lost.

A sweep config (TOML, see docs/sweeps.md) gives a base run (problem, its params, simulate's keywords), a
``[grid]`` of lists whose cartesian product is swept, and optional explicit ``[[runs]]``. Every run is
flattened to dotted keys (``lr``, ``params.zeta``, ``options.gradient_flow.rtol``), named by a readable slug
of the keys that vary plus a short hash of its whole spec, and executed as a normal run directory
``DIR/runs/<id>``. ``DIR/index.parquet`` holds one row per run (params, status, flattened summary metrics)
and is rewritten atomically as runs finish. A run whose directory says ``complete`` is never run again; any
other run is resumed from its checkpoint (or started) by ``resume=True``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .configfile import read_toml
from .errors import RodflowError
from .records import is_complete, read_json, write_json, write_parquet
from .runconfig import RunConfig
from .status import Status

SIMULATE_KEYS = tuple(f for f in RunConfig.fields()
                      if f not in ("options", "gfs_options", "measurements", "optimizer_options"))
"""RunConfig fields a sweep may set (every field; ``options`` per method as ``options.METHOD.KEY``,
``gfs_options`` as ``gfs_options.KEY``, ``optimizer_options`` as ``optimizer_options.KEY`` and ``measurements``
as ``measurements.NAME.KEY``)."""
TOP_KEYS = ("problem", *SIMULATE_KEYS)
ENGINES = ("local", "ray", "slurm")
DEFAULT_CHECKPOINT_EVERY = 50
TIMING_COLUMNS = ("wall_s", "run_wall_s")
INDEX = "index.parquet"
PENDING = "pending"


@dataclasses.dataclass
class Run:
    """One run of a sweep: its flat spec (dotted keys), id and directory name."""

    spec: dict[str, Any]
    varying: tuple[str, ...]
    id: str

    def _under(self, prefix: str) -> dict[str, Any]:
        """The spec's ``prefix.rest`` keys as ``{rest: value}``."""
        return {k[len(prefix) + 1:]: v for k, v in self.spec.items() if k.startswith(prefix + ".")}

    def _nested(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The spec's ``prefix.name.key`` keys as ``{name: {key: value}}``."""
        out: dict[str, dict[str, Any]] = {}
        for k, v in self._under(prefix).items():
            name, key = k.split(".", 1)
            out.setdefault(name, {})[key] = v
        return out

    def problem_params(self) -> dict[str, Any]:
        return self._under("params")

    def options(self) -> dict[str, dict[str, Any]]:
        return self._nested("options")

    def measurements(self) -> dict[str, dict[str, Any]]:
        return self._nested("measurements")

    def gfs_options(self) -> dict[str, Any]:
        return self._under("gfs_options")

    def simulate_kwargs(self) -> dict[str, Any]:
        kw = {k: self.spec[k] for k in SIMULATE_KEYS if k in self.spec}
        if self.gfs_options():
            kw["gfs_options"] = self.gfs_options()
        if self._under("optimizer_options"):
            kw["optimizer_options"] = self._under("optimizer_options")
        if self.measurements():
            kw["measurements"] = self.measurements()
        kw.setdefault("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
        opts = self.options()
        if opts:
            kw["options"] = opts
        return kw


@dataclasses.dataclass
class Sweep:
    """An expanded sweep: its name, the runs in order and the keys that vary across them."""

    name: str
    runs: list[Run]
    varying: list[str]
    config: dict[str, Any]


# ------------------------------------------------------------------------------------------------ parsing
def load_config(path: str | os.PathLike) -> Sweep:
    """Read and expand a sweep TOML file (or the config saved in a sweep directory)."""
    path = Path(path)
    if path.is_dir() and (path / "sweep.json").is_file():  # a sweep directory: the config it was made from
        return expand(sweep_info(path)["config"])
    return expand(read_toml(path, "sweep config", "see docs/sweeps.md"))


def expand(config: dict[str, Any]) -> Sweep:
    """Expand a parsed sweep config (the TOML as a dict) into its runs."""
    config = dict(config)
    name = str(config.pop("name", "sweep"))
    if not name or name in (".", "..") or "/" in name or "\\" in name or ".." in name or name != name.strip():
        raise RodflowError(f"sweep name {name!r} must be a plain directory name (no path separators or '..'); "
                           "choose another name, or give the directory with --out")
    grid = config.pop("grid", {}) or {}
    explicit = config.pop("runs", []) or []
    config.pop("engine", None)  # engine settings: read by run_sweep's caller, not part of a run
    config.pop("slurm", None)
    if not isinstance(grid, dict):
        raise RodflowError("[grid] must be a table of lists, e.g. [grid] lr = [0.1, 0.2]")
    if not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit):
        raise RodflowError("runs must be an array of tables: [[runs]] lr = 0.3 ...")
    base = _flatten(config, "base")
    if "problem" not in base:
        raise RodflowError('a sweep needs problem = "NAME" at the top of the config (see `rodflow problems`)')

    axes = []
    for k, v in _flatten(grid, "[grid]").items():
        if not isinstance(v, list) or not v:
            raise RodflowError(f"[grid] {k} must be a non-empty list of values, got {v!r}")
        axes.append((k, v))
    specs: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    if axes:
        keys = [k for k, _ in axes]
        if len(set(keys)) != len(keys):
            raise RodflowError(f"[grid] names a key twice: {', '.join(keys)}")
        for combo in itertools.product(*(v for _, v in axes)):
            specs.append(({**base, **dict(zip(keys, combo))}, tuple(keys)))
    for i, entry in enumerate(explicit):
        flat = _flatten(entry, f"[[runs]] #{i + 1}")
        specs.append(({**base, **flat}, tuple(flat)))
    if not specs:
        specs.append((dict(base), ()))

    runs, seen = [], set()
    varying: list[str] = []
    for spec, keys in specs:
        spec = _resolve(spec)
        keys = tuple(_resolve_key(k, spec) for k in keys)
        run = Run(spec, keys, run_id(spec, keys))
        if run.id in seen:
            continue  # the same run listed twice (e.g. a [[runs]] entry that is also a grid point)
        seen.add(run.id)
        runs.append(run)
        varying += [k for k in keys if k not in varying]
    varying = [k for k in varying if len({_canon(r.spec.get(k)) for r in runs}) > 1] or varying
    return Sweep(name, runs, varying, {"name": name, **config, "grid": grid, "runs": explicit})


def _flatten(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Dotted keys: nested ``params``/``options``/``gfs_options``/``optimizer_options`` tables become ``params.k`` /
    ``options.method.k`` / ``gfs_options.k`` / ``optimizer_options.k``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("params", "options", "gfs_options", "optimizer_options", "measurements") \
                and not isinstance(value, dict):
            raise RodflowError(f"{where}: {key} must be a table ([{key}] ... or {key}.KEY = ...), got "
                               f"{type(value).__name__} {value!r}")
        if key in ("gfs_options", "optimizer_options") and isinstance(value, dict):
            out.update({f"{key}.{k2}": v2 for k2, v2 in value.items()})
        elif key == "measurements" and isinstance(value, dict):
            for k2, v2 in value.items():
                if not isinstance(v2, dict):
                    raise RodflowError(f"{where}: measurements.{k2} must be a table of that measurement's options")
                out.update({f"measurements.{k2}.{k3}": v3 for k3, v3 in v2.items()})
        elif key in ("params", "options") and isinstance(value, dict):
            for k2, v2 in value.items():
                if key == "options":
                    if not isinstance(v2, dict):
                        raise RodflowError(f"{where}: options.{k2} must be a table of that method's options")
                    for k3, v3 in v2.items():
                        out[f"options.{k2}.{k3}"] = v3
                else:
                    out[f"params.{k2}"] = v2
        else:
            out[key] = value
    return out


def _resolve_key(key: str, spec: dict[str, Any]) -> str:
    """A bare problem parameter name (``zeta``) means ``params.zeta``; anything else must be known."""
    if key in TOP_KEYS or key.startswith(("params.", "options.", "gfs_options.", "optimizer_options.",
                                          "measurements.")):
        if key.startswith("options.") and key.count(".") < 2:
            raise RodflowError(f"{key!r}: options are set per method, as options.METHOD.KEY")
        if key.startswith("measurements.") and key.count(".") < 2:
            raise RodflowError(f"{key!r}: measurements are set as measurements.NAME.KEY (e.g. "
                               "measurements.hessian_trace.every)")
        return key
    if key == "options":
        raise RodflowError("options are set per method: options.METHOD.KEY (e.g. options.gradient_flow.rtol)")
    if key == "gfs_options":
        raise RodflowError("GFS options are set one by one: gfs_options.KEY (e.g. gfs_options.tol)")
    if key == "optimizer_options":
        raise RodflowError("optimizer options are set one by one: optimizer_options.KEY (e.g. optimizer_options.beta1)")
    from . import problems

    name = spec.get("problem")
    if isinstance(name, str) and name in problems.REGISTRY and key in problems.params(name):
        return f"params.{key}"
    candidates = list(TOP_KEYS) + (list(problems.params(name)) if isinstance(name, str) and name in problems.REGISTRY
                                   else [])
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RodflowError(
        f"sweep key {key!r} is neither a simulate keyword ({', '.join(TOP_KEYS)}) nor a parameter of problem "
        f"{name!r}{hint}; use params.NAME for problem parameters, options.METHOD.KEY for method options and "
        "optimizer_options.KEY for optimizer options"
    )


def _resolve(spec: dict[str, Any]) -> dict[str, Any]:
    out = {_resolve_key(k, spec): v for k, v in spec.items()}
    if isinstance(out.get("methods"), str):
        out["methods"] = [m.strip() for m in out["methods"].split(",") if m.strip()]
    if not isinstance(out.get("problem"), str):
        raise RodflowError(f"problem must be a problem name, got {out.get('problem')!r}")
    return dict(sorted(out.items()))


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_id(spec: dict[str, Any], keys: Iterable[str]) -> str:
    """``<slug>-<hash>``: a readable slug of the varying keys and 8 hex digits of the whole spec."""
    digest = hashlib.sha1(_canon(spec).encode()).hexdigest()[:8]
    parts = []
    for k in keys:
        v = spec.get(k)
        short = k.split(".")[-1]
        text = f"{v:g}" if isinstance(v, float) else (",".join(map(str, v)) if isinstance(v, list) else str(v))
        parts.append(f"{short}={text}")
    slug = re.sub(r"[^A-Za-z0-9=.,+-]+", "_", "_".join(parts))[:80].strip("_")
    return f"{slug}-{digest}" if slug else digest


# ---------------------------------------------------------------------------------------- one run
def init_worker(threads: int = 1) -> None:
    """Worker initializer: one intra-op thread (BLAS and torch) per worker; the worker dies with the sweep's
    parent process (Linux parent-death signal, and a parent-alive check everywhere) and leaves Ctrl-C to the
    parent, which cancels the sweep."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def execute(spec: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Run (or resume, or just read) one run directory; never raises: a failure becomes the row's status.

    Returns the run's index row without the sweep-level columns (id, dir).
    """
    import rodflow

    start = time.perf_counter()
    path = Path(run_dir)
    run = Run(dict(spec), (), "")
    action = "ran"
    try:
        if is_complete(path):
            result, action = rodflow.load(path), "skipped"
        elif (path / "config.json").is_file():
            result, action = rodflow.resume(path, progress=False), "resumed"
        else:
            problem = rodflow.problems.make(spec["problem"], dtype=spec.get("dtype", "float64"),
                                            device=spec.get("device"), **run.problem_params())
            result = rodflow.simulate(problem, out=path, progress=False, **run.simulate_kwargs())
        summary = result.summary()
        row: dict[str, Any] = {"status": run_status(result.status)}
        for rec in summary.to_dict("records"):
            m = rec.pop("method")
            for k, v in rec.items():
                row[f"{m}.{k}"] = v
    except Exception as exc:  # noqa: BLE001 - a failing run must never stop the others
        message = str(exc).splitlines()[0] if str(exc) else ""
        row = {"status": f"failed: {type(exc).__name__}: {message}" if not isinstance(exc, RodflowError)
               else f"failed: {message}"}
        action = "failed"
    row["run_wall_s"] = time.perf_counter() - start
    row["_action"] = action
    return row


def run_status(status: dict[str, str]) -> str:
    """A run's one-word status from its per-method statuses: done, diverged at step N, or failed: reason."""
    parsed = {m: Status.from_record(s) for m, s in status.items()}
    failed = [(m, s) for m, s in parsed.items() if s.kind == "failed"]
    if failed:
        return "failed: " + "; ".join(f"{m} {s}" for m, s in failed)
    steps = [s.step for s in parsed.values() if s.kind == "diverged" and s.step is not None]
    if steps:
        return f"diverged at step {min(steps)}"
    return "done"


# -------------------------------------------------------------------------------------------- engines
def _local(tasks, workers: int, **_) -> Iterable[tuple[int, dict[str, Any]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    remaining = dict(enumerate(tasks))
    while remaining:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker) as pool:
            broken = False
            try:
                futures = {pool.submit(execute, spec, d): i for i, (spec, d) in remaining.items()}
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        row = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                        row = {"status": f"failed: {type(exc).__name__}: {exc}", "_action": "failed"}
                    remaining.pop(i)
                    yield i, row
            except BaseException:  # Ctrl-C (or the caller stopped): cancel what is queued, stop what runs
                _cancel(pool)
                raise
        if broken and remaining:
            # a worker died (killed, out of memory): the pool is gone. The run it held cannot be told apart
            # from the others in flight, so run each remaining run alone; one that kills its worker again
            # is recorded as failed and the rest go on.
            for i, (spec, d) in list(remaining.items()):
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=init_worker) as pool:
                    try:
                        row = pool.submit(execute, spec, d).result()
                    except BrokenProcessPool:
                        row = {"status": "failed: its worker process died (killed or out of memory)",
                               "_action": "failed"}
                remaining.pop(i)
                yield i, row


def _die_with_parent() -> None:
    import signal
    import threading

    parent = os.getppid()
    try:  # Linux: the kernel kills this worker when its parent dies
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere (and as a second line): reparented means the parent is gone
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, daemon=True, name="rodflow-parent-watch").start()


def _cancel(pool) -> None:
    """Cancel a process pool's queued runs and terminate its workers at once (their runs keep their
    checkpoints; ``--resume`` continues them)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _ray_task(spec: dict[str, Any], run_dir: str) -> dict[str, Any]:
    init_worker()
    return execute(spec, run_dir)


def _ray(tasks, workers: int, address: str | None = None, cpus_per_task: float = 1, **_):
    ray = _optional("ray")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False)
            started = True
    try:
        remote = ray.remote(_ray_task).options(num_cpus=cpus_per_task, max_retries=0)
        refs = {remote.remote(spec, d): i for i, (spec, d) in enumerate(tasks)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    row = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crashed worker or node
                    row = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                           "_action": "failed"}
                yield refs[ref], row
    finally:
        if started:
            ray.shutdown()


def _submitit_task(spec: dict[str, Any], run_dir: str) -> dict[str, Any]:
    init_worker()
    return execute(spec, run_dir)


def _slurm(tasks, workers: int, folder: Path, cluster: str | None = None, slurm: dict | None = None, **_):
    submitit = _optional("submitit")
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=cluster)
    params = {"timeout_min": 60, "cpus_per_task": 1}
    params.update(slurm or {})
    executor.update_parameters(**params)
    queue = list(enumerate(tasks))
    window = workers if executor.cluster == "local" else len(queue)  # the cluster's scheduler queues the rest
    running: dict[Any, int] = {}
    while queue or running:
        while queue and len(running) < window:
            i, (spec, d) = queue.pop(0)
            running[executor.submit(_submitit_task, spec, d)] = i
        finished = [job for job in running if job.done()]
        if not finished:
            time.sleep(0.2)
            continue
        for job in finished:
            i = running.pop(job)
            try:
                row = job.result()
            except Exception as exc:  # noqa: BLE001 - the job itself failed (timeout, node failure)
                row = {"status": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                       "_action": "failed"}
            yield i, row


def _optional(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RodflowError(f"this engine needs {module}, which is not installed: pip install rodflow[sweep]") from None


# ---------------------------------------------------------------------------------------------- driver
def run_sweep(
    config: str | os.PathLike | Sweep,
    out: str | os.PathLike | None = None,
    engine: str = "local",
    workers: int = 2,
    resume: bool = False,
    address: str | None = None,
    cpus_per_task: float = 1,
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run every run of a sweep on ``engine`` and return the index (also written to ``out/index.parquet``).

    ``resume=True`` skips runs whose directory is complete and resumes the others from their checkpoints;
    without it, ``out`` must not already hold a sweep. ``cluster`` is submitit's (None: Slurm when available,
    "local" for a test); ``slurm`` are submitit parameters (e.g. slurm_partition, timeout_min).
    """
    sweep = config if isinstance(config, Sweep) else load_config(config)
    if engine not in ENGINES:
        raise RodflowError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise RodflowError(f"workers must be an integer >= 1, got {workers!r}")
    if out is None and not isinstance(config, Sweep) and (Path(config) / "sweep.json").is_file():
        out = Path(config)
    out = Path(out) if out is not None else Path("sweeps") / sweep.name
    if not resume and ((out / "sweep.json").exists() or (out / INDEX).exists()):
        raise RodflowError(f"{out} already holds a sweep: pass --resume to continue it, or choose another --out")
    _check_runs(sweep)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"name": sweep.name, "varying": sweep.varying, "config": sweep.config,
                                    "runs": [{"id": r.id, "spec": r.spec} for r in sweep.runs]})

    rows: dict[int, dict[str, Any]] = {i: _pending(r) for i, r in enumerate(sweep.runs)}
    todo: list[int] = []
    for i, run in enumerate(sweep.runs):
        d = out / "runs" / run.id
        try:
            done = resume and is_complete(d)
        except RodflowError:  # a damaged status: the run's own row will say so (execute reports it as failed)
            done = False
        if done:
            rows[i] = _row(run, execute(run.spec, str(d)))  # reads the finished run (fast)
        else:
            todo.append(i)
    log = open(out / "log.jsonl", "a", buffering=1)
    counts = {"done": 0, "diverged": 0, "failed": 0}
    for r in rows.values():
        if r["status"] != PENDING:
            counts[_kind(r["status"])] += 1
    _write_index(out, rows)
    for i in range(len(sweep.runs)):
        if i not in todo:
            log.write(json.dumps({"run": sweep.runs[i].id, "event": "skipped", "status": rows[i]["status"]}) + "\n")

    from tqdm.auto import tqdm

    bar = tqdm(total=len(sweep.runs), initial=len(sweep.runs) - len(todo), desc=f"sweep {sweep.name}",
               unit="run", disable=None if progress is None else not progress)
    bar.set_postfix(counts)
    tasks = [(sweep.runs[i].spec, str(out / "runs" / sweep.runs[i].id)) for i in todo]
    engines = {"local": _local, "ray": _ray, "slurm": _slurm}
    last_write = time.monotonic()
    results = engines[engine](tasks, workers=workers, address=address, cpus_per_task=cpus_per_task,
                              folder=out, cluster=cluster, slurm=slurm)
    try:
        for j, result in results:
            i = todo[j]
            run = sweep.runs[i]
            rows[i] = _row(run, result)
            counts[_kind(rows[i]["status"])] += 1
            log.write(json.dumps({"run": run.id, "event": result.get("_action", "ran"),
                                  "status": rows[i]["status"]}) + "\n")
            bar.update(1)
            bar.set_postfix(counts)
            if on_result is not None:
                on_result(run.id, rows[i])
            if time.monotonic() - last_write > 1.0 or len(sweep.runs) <= 200:
                _write_index(out, rows)
                last_write = time.monotonic()
    finally:
        # a Ctrl-C that lands here rather than inside the engine (while a row is written) cancels the runs in
        # flight at once too: closing the engine's generator runs its cancel guard now, not whenever the
        # generator happens to be collected
        close = getattr(results, "close", None)
        if close is not None:
            close()
        bar.close()
        log.close()
        _write_index(out, rows)
    return read_index(out)


def _check_runs(sweep: Sweep) -> None:
    """Catch a typo in a sweep key before anything runs (problem, optimizer and their parameter names)."""
    from . import optimizers, problems, processes
    from .registry import check_params

    for run in sweep.runs:
        name = run.spec["problem"]
        check_params("problem", name, problems.REGISTRY.get(name), run.problem_params(), skip=("dtype",))
        rule = run.spec.get("optimizer", "gd")
        if isinstance(rule, str):
            check_params("optimizer", rule, optimizers.REGISTRY.get(rule), run._under("optimizer_options"))
        for key in ("lr", "steps"):  # simulate has no default for them
            if key not in run.spec:
                raise RodflowError(f"run {run.id} has no {key}: set {key} = ... at the top of the sweep config, in "
                                   "[grid] or in every [[runs]]")
        methods = run.spec.get("methods", list(RunConfig.__dataclass_fields__["methods"].default))
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise RodflowError(f"methods must be a list of method names or a comma-separated string (e.g. "
                               f"\"gd,gradient_flow\"), got {methods!r}")
        for m in methods:
            processes.REGISTRY.get(m)
        for m, opts in run.options().items():
            check_params("method", m, processes.REGISTRY.get(m).__init__, opts, skip=processes.SKIP)


def _kind(status: str) -> str:
    return "done" if status == "done" else ("diverged" if status.startswith("diverged") else "failed")


def _pending(run: Run) -> dict[str, Any]:
    return _row(run, {"status": PENDING})


def _row(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": run.id, "dir": f"runs/{run.id}"}
    for k, v in run.spec.items():
        row[k] = ",".join(v) if k == "methods" and isinstance(v, list) else v
    row.update({k: v for k, v in result.items() if not k.startswith("_")})
    return row


def _write_index(out: Path, rows: dict[int, dict[str, Any]]) -> None:
    frame = pd.DataFrame([rows[i] for i in sorted(rows)])
    for col in frame.columns:
        values = [v for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        kinds = {"num" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
                 for v in values}
        if len(kinds) > 1 or kinds & {"list", "dict", "tuple"}:
            frame[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else
                          (v if isinstance(v, str) else json.dumps(v)) for v in frame[col]]
    write_parquet(out / INDEX, frame)


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """The index of a sweep directory (one row per run)."""
    path = Path(path)
    if not (path / INDEX).is_file():
        raise RodflowError(f"{path} is not a sweep directory (no {INDEX}); run `rodflow sweep CONFIG --out {path}`")
    try:
        return pd.read_parquet(path / INDEX)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise RodflowError(f"{path / INDEX} is damaged ({type(exc).__name__}); run `rodflow sweep {path} --resume` "
                           "to rebuild it from the run directories") from None


def sweep_info(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not (path / "sweep.json").is_file():
        raise RodflowError(f"{path} is not a sweep directory (no sweep.json)")
    info = read_json(path / "sweep.json", "sweep.json", hint="restore it, or start the sweep again in another --out")
    if not isinstance(info.get("config"), dict):
        raise RodflowError(f"sweep.json in {path} is corrupt (no config table); restore it or start the sweep again")
    return info


def comparable(index: pd.DataFrame) -> pd.DataFrame:
    """The index without its timing columns (what must agree between engines, or a resumed sweep)."""
    drop = [c for c in index.columns if c.split(".")[-1] in TIMING_COLUMNS]
    frame = index.drop(columns=drop)
    for col in frame.columns:  # a column of counts is float when some run has none (failed, pending)
        if pd.api.types.is_integer_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col]):
            frame[col] = frame[col].astype("float64")
    return frame
