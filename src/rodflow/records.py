"""Run results in memory (`Result`) and on disk (the run directory).

A run directory holds:

    config.json          everything needed to re-run (and resume) the run, versions, git commit
    metrics.parquet      one row per (method, step); written when the run ends
    metrics.jsonl        the same rows, appended and flushed as each step completes (a killed run keeps them)
    arrays/<method>/<key>.npy   per-step arrays, row t = step t (``iterate``, ``midpoint``, ``eigs``, ...)
    status.json          per-method status: ``status`` as text (``ok``, ``diverged at step N (...)``,
                         ``failed at step N: ...``) and ``methods`` as fields (``kind``, ``step``, ``reason``)
    checkpoint.npz       process states at the last checkpoint, for ``--resume``
    plots/               figures
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RodflowError
from .status import Status, read_statuses, statuses_record

ITERATE = "iterate"
#: what a run directory holds (``Result.save(overwrite=True)`` clears these)
RUN_FILES = ("config.json", "metrics.parquet", "metrics.jsonl", "status.json", "checkpoint.npz", "arrays", "plots",
             "summary.csv", "summary.md", "compare.json")
#: columns every metrics row has
ROW_COLUMNS = ("loss", "loss_pred", "grad_norm", "sharpness", "dist_gd", "dist_gd_mid", "grad_evals", "hvps", "d3",
               "wall_s")


@dataclasses.dataclass
class Result:
    """What ``rodflow.simulate`` returns.

    ``metrics`` is a DataFrame with one row per (method, step); ``iterates[method]`` is an array
    (steps + 1, d) of the method's estimate of GD's iterate at each integer time (NaN after a process
    stopped); ``aux[method]`` holds the further per-step arrays; ``status[method]`` says how it ended.
    """

    metrics: pd.DataFrame
    iterates: dict[str, np.ndarray]
    aux: dict[str, dict[str, np.ndarray]]
    config: dict[str, Any]
    status: dict[str, Status]
    path: Path | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    @property
    def lr(self) -> float:
        return float(self.config["lr"])

    def method(self, name: str) -> pd.DataFrame:
        """The metrics rows of one method, indexed by step."""
        return self.metrics[self.metrics["method"] == name].set_index("step")

    def summary(self) -> pd.DataFrame:
        from .summary import summarize

        return summarize(self)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write this result as a run directory (see the module docstring) and return its path. A directory
        that already holds files is refused unless ``overwrite=True`` (then the run files there, plots
        included, are cleared first); the result's own directory is written in place."""
        if not isinstance(path, (str, os.PathLike)):
            raise RodflowError(f"save needs a directory path, got {type(path).__name__}")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RodflowError(f"{path} is a file, not a directory; save to a directory path")
        own = self.path is not None and path.resolve() == Path(self.path).resolve()
        if path.is_dir() and not own and any(path.iterdir()):
            if not overwrite:
                what = "a run" if (path / "config.json").is_file() else "files"
                raise RodflowError(f"{path} already holds {what}; pass overwrite=True to replace it, or save to "
                                   "another path")
            for name in RUN_FILES:
                target = path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        try:
            (path / "arrays").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RodflowError(f"cannot write the run directory {path} ({exc.strerror or type(exc).__name__}); "
                               "save to another path") from None
        write_json(path / "config.json", self.config)
        write_parquet(path / "metrics.parquet", self.metrics)
        for method in self.methods:
            folder = path / "arrays" / method
            folder.mkdir(parents=True, exist_ok=True)
            arrays = dict(self.aux.get(method, {}))
            if method in self.iterates:
                arrays[ITERATE] = self.iterates[method]
            for key, arr in arrays.items():
                target = folder / f"{key}.npy"
                if isinstance(arr, np.memmap) and Path(arr.filename).resolve() == target.resolve():
                    arr.flush()
                    continue
                tmp = target.with_suffix(".tmp.npy")
                np.save(tmp, np.asarray(arr))
                os.replace(tmp, target)
        write_json(path / "status.json", {"complete": True, **statuses_record(self.status)})
        self.path = path
        return path


def load(path: str | os.PathLike) -> Result:
    """Read a run directory (finished, or killed part-way: then every completed step is there)."""
    if not isinstance(path, (str, os.PathLike)):
        raise RodflowError(f"load needs the path of a run directory, got {type(path).__name__}")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RodflowError(f"{path} is not a rodflow run directory (no config.json)")
    config = read_json(path / "config.json", "config.json")
    check_config_record(config, path)
    status_record = read_json(path / "status.json", "status.json") if (path / "status.json").is_file() else {}
    complete = bool(status_record.get("complete"))
    metrics, source = read_metrics(path, complete)
    status = read_statuses(status_record) if status_record else {}
    if complete:  # finished: a method whose rows stop short of its end is not ok (a lost or cut metrics file)
        for m, (first, last) in lacking(metrics, config, status).items():
            have = metrics.loc[metrics["method"] == m, "step"]
            status[m] = Status("incomplete", int(have.max()) if len(have) else None,
                               f"{source} lacks its rows for steps {first}..{last} though status.json says the run "
                               "is complete; restore the file or start the run again with --overwrite")
    else:  # killed or still running: what did not end yet is incomplete, not ok
        last = int(metrics["step"].max()) if len(metrics) else None
        if status_record or last is None or last < int(config["steps"]):
            why = f"the run stopped before step {config.get('steps')}; continue it with rodflow run --resume {path}"
        else:  # every step is there but status.json (written at checkpoints and at the end) is gone
            why = f"{path / 'status.json'} is missing; restore it, or rodflow run --resume {path} rewrites it"
        for m in config.get("methods", []):
            if m not in status or status[m].kind == "ok":
                status[m] = Status("incomplete", last, why)
    iterates, aux = {}, {}
    rows = int(config["steps"]) + 1
    for method in config["methods"]:
        folder = path / "arrays" / method
        arrays = {p.stem: load_array(p, rows) for p in sorted(folder.glob("*.npy"))
                  if not p.name.endswith(".tmp.npy")}
        if ITERATE in arrays:
            iterates[method] = arrays.pop(ITERATE)
        aux[method] = arrays
    return Result(metrics, iterates, aux, config, status, path)


def check_config_record(config: dict[str, Any], path: Path) -> None:
    """The fields every reader of a run directory needs (methods, lr, steps), or a one-line error naming the
    file."""
    where = Path(path) / "config.json"
    fix = "restore it or start the run again with --overwrite"
    for key in ("methods", "lr", "steps"):
        if key not in config:
            raise RodflowError(f"{where} has no {key}; {fix}")
    methods, lr, steps = config["methods"], config["lr"], config["steps"]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise RodflowError(f"{where} has methods {methods!r}, not a list of method names; {fix}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise RodflowError(f"{where} has lr {lr!r}, not a positive number; {fix}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise RodflowError(f"{where} has steps {steps!r}, not an integer >= 0; {fix}")


def read_metrics(path: Path, complete: bool) -> tuple[pd.DataFrame, Path]:
    """(rows, the file they came from): a finished run's metrics.parquet (its record; metrics.jsonl when the
    parquet is gone), else metrics.jsonl."""
    parquet = path / "metrics.parquet"
    if complete and parquet.is_file():
        try:
            return pd.read_parquet(parquet), parquet
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise RodflowError(f"{parquet} is damaged ({type(exc).__name__}); delete it to read "
                               "the run from metrics.jsonl") from None
    return read_jsonl(path / "metrics.jsonl"), path / "metrics.jsonl"


def last_step(status: Status | None, steps: int) -> int:
    """The last step a method of a finished run has a row for: ``steps`` when it ended ok, its step when it
    diverged (the diverging row is kept), the step before when it failed (no row at the failing step)."""
    if status is None or status.kind == "ok":
        return steps
    if status.step is None or status.kind == "incomplete":
        return -1
    return status.step - (status.kind != "diverged")


def lacking(metrics: pd.DataFrame, config: dict[str, Any], status: dict[str, Status]) -> dict[str, tuple[int, int]]:
    """Methods of a finished run whose rows do not cover steps 0..their last step: method -> (first missing
    step, last step)."""
    out = {}
    for m in config["methods"]:
        last = last_step(status.get(m), int(config["steps"]))
        have = set(metrics.loc[metrics["method"] == m, "step"].tolist()) if len(metrics) else set()
        missing = [s for s in range(last + 1) if s not in have]
        if missing:
            out[m] = (missing[0], last)
    return out


def read_json(path: Path, what: str, hint: str = "restore it or start the run again with --overwrite") -> dict[str, Any]:
    """A JSON object file of a run directory, or a one-line error naming the file and what to do (``hint``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RodflowError(f"{path} is missing; the run directory is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RodflowError(f"{what} in {Path(path).parent} is corrupt ({type(exc).__name__} at byte "
                           f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))}); {hint}") from None
    if not isinstance(data, dict):
        raise RodflowError(f"{what} in {Path(path).parent} is corrupt (not a JSON object); {hint}")
    return data


def is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether a run directory's status.json says the run finished (a missing one: no; a damaged one is a
    one-line error naming it)."""
    status = Path(run_dir) / "status.json"
    return status.is_file() and bool(read_json(status, "status.json").get("complete"))


def load_array(path: Path, rows: int | None = None, mmap_mode: str | None = None) -> np.ndarray:
    """A per-step array file, checked whole (header, size, and ``rows`` rows when given) before it is read or
    memory-mapped (a memmap opened for writing would silently extend a truncated file with zeros)."""
    fix = "delete it (that array is then missing) or start the run again with --overwrite"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(fh))
            offset = fh.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError, EOFError) as exc:
        raise RodflowError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                           f"{fix}") from None
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or size != need:
        what = "holds Python objects" if dtype.hasobject else f"has {size} bytes where its header needs {need}"
        raise RodflowError(f"{path} is damaged (it {what}); {fix}")
    if rows is not None and (len(shape) == 0 or shape[0] != rows):
        have = shape[0] if len(shape) else 0
        raise RodflowError(f"{path} is damaged (it has {have} rows where the run's steps 0..{rows - 1} need {rows}); {fix}")
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as exc:
        raise RodflowError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                           f"{fix}") from None


def read_jsonl(path: Path) -> pd.DataFrame:
    """The rows of metrics.jsonl. A torn last line (a kill mid-write) is dropped; a bad line with rows after it
    is corruption, not a kill, and is a one-line error (reading on would silently lose the rows after it)."""
    return metrics_frame(read_jsonl_rows(path))


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    bad = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if bad is not None:
            raise RodflowError(f"{path} line {bad} is corrupt and rows follow it; restore the file or start the run "
                               "again with --overwrite")
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict) or "method" not in row or "step" not in row:
                raise ValueError("not a metrics row")
            rows.append(row)
        except (UnicodeDecodeError, ValueError):
            bad = number  # the torn tail of a killed write, if nothing follows
    return rows


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:  # no row yet (a run killed at once): the columns every row has, so readers need no special case
        return pd.DataFrame({"method": pd.Series(dtype=str), "step": pd.Series(dtype="int64"),
                             **{c: pd.Series(dtype=float) for c in ROW_COLUMNS}})
    frame["step"] = frame["step"].astype("int64")
    return frame.sort_values(["method", "step"], kind="stable").reset_index(drop=True)


def write_json(path: Path, obj: Any) -> None:
    """Crash-safe: a temporary file, flushed to disk, renamed over the old one (readers see old or new)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Crash-safe like :func:`write_json`."""
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def jsonable(obj: Any) -> Any:
    """obj with tuples and NumPy values turned into JSON types (so config round-trips exactly)."""
    return json.loads(json.dumps(obj, default=_json_default))


def environment() -> dict[str, Any]:
    import platform

    import torch

    from . import __version__

    info = {
        "rodflow": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
    }
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5
            )
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
