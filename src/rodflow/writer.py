"""The run's writer: rows and per-step arrays in memory and, with a run directory, on disk as they come
(``metrics.jsonl`` appended and flushed per row, arrays as memmaps), the checkpoint file, the lock, and the
final ``metrics.parquet``/``status.json``. What is written where is described in ``rodflow.records``.

The writer knows nothing about processes or measurements: the runner (``rodflow.simulate``) hands it rows,
arrays and checkpoint states (flat ``name -> array or scalar`` maps) and gets them back on resume.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RodflowError
from .records import (ITERATE, lacking, load_array, metrics_frame, read_json, read_jsonl_rows, read_metrics,
                      write_json, write_parquet)
from .status import statuses_record

LOCK = ".lock"
STALE = ("metrics.parquet", "metrics.jsonl", "checkpoint.npz", "status.json")


class Writer:
    """Rows and arrays of one run; ``out=None`` keeps them in memory only."""

    def __init__(self, out: Path | None, methods: list[str], steps: int, d: int, record_iterates: bool | int,
                 seed: int):
        self.out = out
        self.methods = methods
        self.steps = steps
        self.record_iterates = record_iterates
        self.rows: list[dict[str, Any]] = []
        self.arrays: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
        self.projection = None
        if not isinstance(record_iterates, bool):  # a fixed Gaussian projection to k dimensions
            rng = np.random.default_rng(seed + 12345)
            self.projection = (rng.standard_normal((record_iterates, d)) / math.sqrt(record_iterates)).astype(np.float32)
        self.jsonl = None
        self._lock: Path | None = None

    # -------------------------------------------------------------------------------------- directory
    def open(self, config: dict[str, Any], resuming: bool) -> None:
        """Check the directory is writable, take its lock; a new run clears a previous run's files and writes
        config.json (a resumed one keeps them: :meth:`resume_from` reads them)."""
        out = self.out
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".rodflow-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RodflowError(f"cannot write the run directory {out} ({exc.strerror or type(exc).__name__}); "
                               "choose another out / --out") from None
        self._lock = take_lock(out)
        if not resuming:
            try:
                self._clear(with_checkpoint=True)
                write_json(out / "config.json", config)
            except BaseException:
                self.close()
                raise

    def start_rows(self) -> None:
        if self.out is not None:
            self.jsonl = open(self.out / "metrics.jsonl", "a", buffering=1)

    def _clear(self, with_checkpoint: bool) -> None:
        for stale in STALE:
            if with_checkpoint or stale != "checkpoint.npz":
                (self.out / stale).unlink(missing_ok=True)
        shutil.rmtree(self.out / "arrays", ignore_errors=True)  # a previous run's per-step arrays

    def close(self) -> None:
        """Close the rows file and release the lock (idempotent)."""
        if self.jsonl is not None and not self.jsonl.closed:
            self.jsonl.close()
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    # ------------------------------------------------------------------------------------ rows, arrays
    def add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(row) + "\n")

    def store(self, m: str, t: int, arrays: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> None:
        """Row t of method m's per-step arrays; ``vectors`` (parameter-space arrays) follow ``record_iterates``
        (all, none, or their k-dimensional projection)."""
        rows = dict(arrays)
        if self.record_iterates is not False:
            for key, value in vectors.items():
                value = np.asarray(value)
                rows[key] = value if self.projection is None else self.projection @ value.astype(np.float32)
        for key, value in rows.items():
            value = np.asarray(value)
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
                store = load_array(target, self.steps + 1, mmap_mode="r+")
            else:
                need = float(np.prod(shape, dtype=float)) * np.dtype(dtype).itemsize
                free = shutil.disk_usage(folder).free
                if need > 0.9 * free:  # a memmap is filled with NaN: it would fill the disk, then fail
                    raise RodflowError(_too_big(m, key, shape, dtype, None, free))
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

    def flush(self) -> None:
        """Rows and memmapped arrays to disk (before a checkpoint refers to them)."""
        for arrays in self.arrays.values():
            for arr in arrays.values():
                if isinstance(arr, np.memmap):
                    arr.flush()
        if self.jsonl is not None and not self.jsonl.closed:
            self.jsonl.flush()
            os.fsync(self.jsonl.fileno())

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint(self, step: int, meta: dict[str, Any], states: dict[str, Any], statuses) -> None:
        """Write checkpoint.npz (``states``: flat names -> arrays or JSON-able scalars; ``meta``: the runner's
        bookkeeping) atomically, after the rows and arrays it covers; then status.json."""
        self.flush()
        blobs: dict[str, np.ndarray] = {}
        meta = {**meta, "step": step, "arrays": {m: sorted(a) for m, a in self.arrays.items()}, "scalars": {}}
        for name, value in states.items():
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
        write_json(self.out / "status.json", {"complete": False, "last_checkpoint": step, **statuses_record(statuses)})

    def status_record(self) -> dict[str, Any]:
        path = self.out / "status.json"
        return read_json(path, "status.json") if path.is_file() else {}

    def reload_complete(self, config: dict[str, Any], statuses) -> None:
        """A finished run: its rows (metrics.parquet, its record; metrics.jsonl when that is gone) and arrays as
        written (``finish`` then writes the same files again). Rows that stop short of a method's end are a
        one-line error: a cut file is never rebuilt into a shorter result marked complete."""
        metrics, source = read_metrics(self.out, complete=True)
        short = lacking(metrics, config, statuses)
        if short:
            m, (first, last) = next(iter(short.items()))
            raise RodflowError(f"{source} lacks {m}'s rows for steps {first}..{last} though status.json says the run "
                               "is complete; restore the file (metrics.parquet or metrics.jsonl) or start the run "
                               "again with --overwrite")
        self.rows = [clean(r) for r in metrics.to_dict("records")]
        self._open_arrays()

    def read_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(meta, states) of checkpoint.npz, or None when the run was killed before its first checkpoint (then
        what it wrote is dropped: the run starts over). A damaged file is a one-line error."""
        path = self.out / "checkpoint.npz"
        if not path.is_file():
            self._clear(with_checkpoint=False)
            return None
        try:
            with np.load(path) as data:
                blobs = {k: data[k] for k in data.files}
            meta = json.loads(str(blobs.pop("__meta__")))
            int(meta["step"])
        except Exception as exc:  # zipfile, pickle, JSON and key errors: the file is not a whole checkpoint
            raise RodflowError(f"{path} is damaged ({type(exc).__name__}); resume cannot continue: start the run "
                               "again with --overwrite (rodflow.load still reads the rows written so far)") from None
        states = {**blobs, **meta.pop("scalars")}
        return meta, states

    def resume_from(self, t: int, last_row: dict[str, int], array_keys: dict[str, list[str]]) -> None:
        """Keep the rows up to the checkpoint at step t (rewritten without the later ones) and reopen the
        arrays. ``last_row[m]``: the last step method m must have a row for; a missing row or array the
        checkpoint covers is a one-line error (never a silent NaN)."""
        rows = [r for r in read_jsonl_rows(self.out / "metrics.jsonl") if r["step"] <= t]
        have = {(r["method"], r["step"]) for r in rows}
        for m in self.methods:
            missing = [s for s in range(0, min(t, last_row.get(m, -1)) + 1) if (m, s) not in have]
            if missing:
                raise RodflowError(f"{self.out / 'metrics.jsonl'} lacks {m}'s rows for steps {missing[0]}.. that the "
                                   f"checkpoint at step {t} covers; restore the file or start the run again with "
                                   "--overwrite")
        for m, keys in array_keys.items():
            for key in keys:
                if not (self.out / "arrays" / m / f"{key}.npy").is_file():
                    raise RodflowError(f"{self.out / 'arrays' / m / (key + '.npy')} is missing but the checkpoint at "
                                       f"step {t} has it; restore it or start the run again with --overwrite")
        self.rows = rows
        tmp = self.out / "metrics.jsonl.tmp"
        with open(tmp, "w") as fh:
            for r in rows:
                fh.write(json.dumps(clean(r)) + "\n")
        os.replace(tmp, self.out / "metrics.jsonl")
        self._open_arrays()

    def _open_arrays(self) -> None:
        for m in self.methods:
            for p in (self.out / "arrays" / m).glob("*.npy"):
                if not p.name.endswith(".tmp.npy"):
                    self.arrays[m][p.stem] = load_array(p, self.steps + 1, mmap_mode="r+")

    # ----------------------------------------------------------------------------------------- finish
    def finish(self, statuses) -> tuple[Any, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """(metrics frame, iterates, other arrays); with a run directory, also metrics.parquet and status.json."""
        metrics = metrics_frame([clean(r) for r in self.rows])
        iterates = {m: self.arrays[m][ITERATE] for m in self.methods if ITERATE in self.arrays[m]}
        aux = {m: {k: v for k, v in self.arrays[m].items() if k != ITERATE} for m in self.methods}
        if self.out is not None:
            self.flush()
            if self.jsonl is not None:
                self.jsonl.close()
            write_parquet(self.out / "metrics.parquet", metrics)
            write_json(self.out / "status.json", {"complete": True, **statuses_record(statuses)})
        return metrics, iterates, aux


def take_lock(out: Path) -> Path:
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
            if pid is not None and pid != os.getpid() and alive(pid, wait=3.0):
                raise RodflowError(f"{out} is being written by process {pid}; wait for it to finish or stop it "
                                   f"(a stale lock: delete {path})") from None
            path.unlink(missing_ok=True)  # the writer is gone: its lock is stale
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return path
    raise RodflowError(f"cannot take the lock {path}; another writer keeps creating it")


def alive(pid: int, wait: float = 0.0) -> bool:
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


def _too_big(m: str, key: str, shape, dtype, exc: BaseException | None, free: float | None = None) -> str:
    size = float(np.prod(shape, dtype=float)) * np.dtype(dtype).itemsize
    why = type(exc).__name__ if exc is not None else f"{free / 2**30:.3g} GiB free on the disk"
    return (f"cannot allocate {m}'s per-step array {key!r} of shape {tuple(shape)} ({size / 2**30:.3g} GiB: "
            f"{why}); use fewer steps, record_iterates=False or an integer k (--iterates none|k)")


def clean(row: dict[str, Any]) -> dict[str, Any]:
    """Drop the NaN fillers pandas adds for columns a row never had (so JSONL rows stay as written)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v) and k not in ALWAYS)}


#: columns every row keeps even when NaN
ALWAYS = {"loss", "loss_pred", "grad_norm", "sharpness", "dist_gd", "dist_gd_mid"}
