"""Sweeps: expansion, the three engines agree, a diverging or failing run never stops the others, and a
sweep killed midway resumes to the same index as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import rodflow
from rodflow import RodflowError
from rodflow import sweep as sw

CONFIG = """
name = "quad"
problem = "quadratic"
steps = 200
methods = ["gd", "gradient_flow"]
sharpness_every = 50
checkpoint_every = 10

[params]
lambdas = [1.0, 4.0]

[grid]
lr = [0.1, 0.3, 0.6]   # 0.6 > 2/S = 0.5: GD diverges

[[runs]]
lr = -1.0              # invalid: this run fails, the others go on
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "quad.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def local(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    return out, sw.run_sweep(config, out=out, engine="local", workers=2, progress=False)


def _by_lr(index: pd.DataFrame, lr: float) -> pd.Series:
    return index[index["lr"] == lr].iloc[0]


# ------------------------------------------------------------------------------------------- expansion
def test_expand_grid_runs_keys_and_ids():
    cfg = {
        "name": "x", "problem": "sharp-valley", "steps": 10, "params": {"eps": 0.02},
        "grid": {"lr": [0.1, 0.2], "zeta": [1.0, 2.0], "options": {"gradient_flow": {"rtol": [1e-6, 1e-8]}}},
        "runs": [{"lr": 0.5, "params": {"zeta": 3.0}}, {"lr": 0.1, "zeta": 1.0, "options.gradient_flow.rtol": 1e-6}],
    }
    s = sw.expand(cfg)
    # 2 x 2 x 2 grid + 1 new explicit run (the second explicit run is a grid point: listed once)
    assert len(s.runs) == 9
    assert {r.spec["params.zeta"] for r in s.runs} == {1.0, 2.0, 3.0}
    assert all(r.spec["params.eps"] == 0.02 and r.spec["steps"] == 10 for r in s.runs)
    first = s.runs[0]
    assert first.simulate_kwargs()["options"] == {"gradient_flow": {"rtol": 1e-6}}
    assert first.problem_params() == {"eps": 0.02, "zeta": 1.0}
    assert first.id.startswith("lr=0.1_zeta=1_rtol=1e-06-")
    ids = [r.id for r in s.runs]
    assert len(set(ids)) == len(ids)
    assert ids == [r.id for r in sw.expand(cfg).runs]  # deterministic
    assert set(s.varying) == {"lr", "params.zeta", "options.gradient_flow.rtol"}
    # the id hashes the whole spec: a different base gives different ids for the same slug
    other = sw.expand({**cfg, "steps": 11}).runs[0]
    assert other.id.split("-")[0] == first.id.split("-")[0] and other.id != first.id
    # no grid, no runs: one run, the base
    assert len(sw.expand({"problem": "quadratic"}).runs) == 1


def test_expand_bad_input_is_one_line(tmp_path):
    with pytest.raises(RodflowError, match="neither a simulate keyword"):
        sw.expand({"problem": "quadratic", "grid": {"zeta": [1.0]}})
    with pytest.raises(RodflowError, match="non-empty list"):
        sw.expand({"problem": "quadratic", "grid": {"lr": 0.1}})
    with pytest.raises(RodflowError, match="problem ="):
        sw.expand({"grid": {"lr": [0.1]}})
    bad = tmp_path / "bad.toml"
    bad.write_text("problem = \n")
    with pytest.raises(RodflowError, match="not valid TOML"):
        sw.load_config(bad)
    with pytest.raises(RodflowError, match="not found"):
        sw.load_config(tmp_path / "missing.toml")
    with pytest.raises(RodflowError, match="has no parameter 'zetaa'"):
        sw.run_sweep(sw.expand({"problem": "sharp-valley", "grid": {"params.zetaa": [1.0]}}), out=tmp_path / "s")
    with pytest.raises(RodflowError, match="unknown engine"):
        sw.run_sweep(sw.expand({"problem": "quadratic"}), out=tmp_path / "s", engine="dask")


@pytest.mark.parametrize("change,match", [
    ({"methods": 5}, "methods must be a list of method names"),
    ({"methods": "gd,teleport"}, "unknown method 'teleport'"),
    ({"methods": "gd,central_flow", "options": {"central_flow": {"sede": 1}}}, "has no parameter 'sede'"),
    ({"options": {"rod": {"rtol": 1e-3}}}, "unknown method 'rod'"),
    ({"lr": None}, "has no lr"),
    ({"params": 5}, "params must be a table"),
    ({"name": "../../escape"}, "must be a plain directory name"),
    ({"name": "a/b"}, "must be a plain directory name"),
])
def test_bad_sweep_keys_are_refused_before_anything_runs(tmp_path, change, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"name": "s", "problem": "quadratic", "lr": 0.1, "steps": 3, "methods": "gd", "sharpness_every": 0,
              **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(RodflowError, match=match) as info:
        sw.run_sweep(sw.expand(config), workers=1, progress=False)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.rglob("*.json")), list(tmp_path.rglob("*"))  # nothing written, nothing escaped


def test_bad_values_fail_their_run_in_one_line(tmp_path):
    config = {"name": "v", "problem": "quadratic", "steps": 3, "methods": "gd,central_flow", "sharpness_every": 0,
              "runs": [{"lr": "0.1"}, {"lr": 0.1, "options": {"central_flow": {"seed": "abc"}}}, {"lr": 0.1}]}
    index = sw.run_sweep(sw.expand(config), out=tmp_path / "s", workers=1, progress=False)
    status = list(index["status"])
    assert status[0] == "failed: lr must be a positive number, got '0.1'"
    assert status[1].startswith("failed: method 'central_flow': seed must be an integer")
    assert status[2] == "done"


def test_a_damaged_sweep_json_says_how_to_recover_without_overwrite(tmp_path):
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(RodflowError) as info:
        sw.sweep_info(tmp_path)
    assert "--overwrite" not in str(info.value) and "start the sweep again" in str(info.value)


def test_missing_engine_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(RodflowError, match=r"pip install rodflow\[sweep\]"):
        sw._optional("submitit")


def test_run_status_from_method_statuses():
    assert sw.run_status({"gd": "ok", "gradient_flow": "ok"}) == "done"
    assert sw.run_status({"gd": "diverged at step 28 (x)", "f": "diverged at step 40 (y)"}) == "diverged at step 28"
    assert sw.run_status({"gd": "ok", "f": "failed at step 3: ValueError: z"}).startswith("failed: f failed at step 3")


# --------------------------------------------------------------------------------------------- local
def test_local_engine_records_every_run_as_a_normal_run(local):
    out, index = local
    assert len(index) == 4
    assert_frame_equal(index, pd.read_parquet(out / "index.parquet"))
    assert not list(out.glob("*.tmp"))
    # every run directory is a normal run, identical to running simulate directly
    for lr in (0.1, 0.3, 0.6):
        row = _by_lr(index, lr)
        direct = rodflow.simulate(rodflow.problems.make("quadratic", lambdas=[1.0, 4.0]), lr=lr, steps=200,
                                  sharpness_every=50, progress=False)
        stored = rodflow.load(out / row["dir"])
        assert stored.status == direct.status
        np.testing.assert_array_equal(stored.iterates["gd"], direct.iterates["gd"])
        summary = direct.summary().set_index("method")
        for m in ("gd", "gradient_flow"):
            for col in ("status", "final_loss", "final_sharpness", "dist_mean", "grad_evals"):
                a, b = row[f"{m}.{col}"], summary.loc[m, col]
                assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), (lr, m, col)
    # GD at lr = 0.6 > 2/4 diverges; the run is recorded with its step and the flow still ran to the end
    assert _by_lr(index, 0.1)["status"] == "done" and _by_lr(index, 0.3)["status"] == "done"
    div = _by_lr(index, 0.6)
    direct_step = int(rodflow.load(out / div["dir"]).status["gd"].split("at step ")[1].split()[0])
    assert div["status"] == f"diverged at step {direct_step}"
    assert div["gradient_flow.status"] == "ok" and div["gradient_flow.steps"] == 200
    failed = _by_lr(index, -1.0)
    assert failed["status"].startswith("failed: lr must be a positive")
    assert np.isnan(failed["gd.final_loss"])
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sorted(e["event"] for e in events) == ["failed", "ran", "ran", "ran"]


def test_resume_of_a_finished_sweep_skips_everything(config, local, tmp_path):
    out, index = local
    with pytest.raises(RodflowError, match="already holds a sweep"):
        sw.run_sweep(config, out=out)  # no --resume: refuse to touch it
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.parquet")}
    # a sweep directory stands for its own config
    again = sw.run_sweep(out, resume=True, workers=1, progress=False)
    after = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.parquet")}
    assert before == after  # finished runs were not run again
    assert_frame_equal(sw.comparable(again), sw.comparable(index))
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[-4:].count("skipped") == 3  # the failed run is attempted again (it has no finished directory)


def test_damaged_sweep_files_are_one_line_errors_and_resume_rebuilds_the_index(config, local, tmp_path):
    import shutil

    src, index = local
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    (out / sw.INDEX).write_bytes(b"PAR1 torn")
    with pytest.raises(RodflowError, match="index.parquet is damaged.*--resume"):
        sw.read_index(out)
    again = sw.run_sweep(out, resume=True, workers=1, progress=False)  # rebuilt from the run directories
    assert_frame_equal(sw.comparable(again), sw.comparable(index))
    # a damaged run status fails that run only, with a line naming the file; the other runs are kept
    rid = again["id"][again["status"] == "done"].iloc[0]
    (out / "runs" / rid / "status.json").write_text('{"complete": tr')
    third = sw.run_sweep(out, resume=True, workers=1, progress=False)
    bad = third[third["id"] == rid]["status"].iloc[0]
    assert bad.startswith("failed: status.json") and "corrupt" in bad and "\n" not in bad
    assert (third["status"] == "done").sum() == (index["status"] == "done").sum() - 1
    (out / "sweep.json").write_text("{not json")
    with pytest.raises(RodflowError, match="sweep.json .*corrupt"):
        sw.sweep_info(out)
    with pytest.raises(RodflowError, match="sweep.json .*corrupt"):
        sw.load_config(out)


def test_report_figures_and_table(local):
    from typer.testing import CliRunner

    from rodflow.cli import app

    out, index = local
    res = CliRunner().invoke(app, ["sweep-report", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("sharpness", "distance", "cost"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    for rid in index["id"]:
        assert rid in res.output
    # the table's S·η/2 column is final sharpness times η/2
    from rodflow.sweep_report import sweep_table

    table = sweep_table(index, sw.sweep_info(out))
    row = table[table["id"] == _by_lr(index, 0.3)["id"]].iloc[0]
    assert row["gd S·η/2"] == pytest.approx(_by_lr(index, 0.3)["gd.final_sharpness"] * 0.15)


# -------------------------------------------------------------------------------------- ray, submitit
def _two_runs(tmp_path: Path) -> Path:
    """The same sweep without the run at lr = 0.1 and the failing one (fewer processes to start)."""
    path = tmp_path / "two.toml"
    path.write_text(CONFIG.split("[[runs]]")[0].replace("lr = [0.1, 0.3, 0.6]", "lr = [0.3, 0.6]"))
    return path


def _same_rows(index: pd.DataFrame, reference: pd.DataFrame) -> None:
    expected = reference[reference["id"].isin(index["id"])].reset_index(drop=True)
    assert len(expected) == len(index) == 2
    assert_frame_equal(sw.comparable(index), sw.comparable(expected))


@pytest.mark.slow
def test_ray_engine_on_a_local_instance_gives_the_same_index(local, tmp_path):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    index = sw.run_sweep(_two_runs(tmp_path), out=tmp_path / "ray", engine="ray", workers=2, progress=False)
    assert not ray.is_initialized()  # the instance it started is shut down
    _same_rows(index, local[1])


@pytest.mark.slow
def test_submitit_engine_in_local_mode_gives_the_same_index(local, tmp_path):
    pytest.importorskip("submitit")
    index = sw.run_sweep(_two_runs(tmp_path), out=tmp_path / "sub", engine="slurm", cluster="local", workers=2,
                         slurm={"timeout_min": 10}, progress=False)
    assert list((tmp_path / "sub" / "submitit").glob("*_result.pkl"))  # submitit really ran the jobs
    _same_rows(index, local[1])


# ------------------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_index(config, local, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rodflow.cli import main; main()", "sweep", str(config), "--out", str(out), "--workers", "1",
         "--no-progress"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    midway = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            runs = [d for d in (out / "runs").glob("*")] if (out / "runs").is_dir() else []
            done = [d for d in runs if _complete(d)]
            partial = [d for d in runs if not _complete(d) and (d / "checkpoint.npz").is_file()]
            if done and partial:
                os.killpg(proc.pid, signal.SIGKILL)
                midway = partial[0]
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert midway is not None, f"the sweep never reached a run midway: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    killed_index = pd.read_parquet(out / "index.parquet")
    assert (killed_index["status"] == "pending").any()  # it really stopped part-way
    still_partial = not _complete(midway)

    resumed = sw.run_sweep(config, out=out, resume=True, workers=1, progress=False)
    assert_frame_equal(sw.comparable(resumed), sw.comparable(local[1]))
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    if still_partial:  # the run caught midway continued from its checkpoint rather than starting over
        assert {"run": midway.name, "event": "resumed", "status": _status_of(resumed, midway.name)} in events


def _complete(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("complete", False)
    except (OSError, ValueError):
        return False


def _status_of(index: pd.DataFrame, rid: str) -> str:
    return index[index["id"] == rid].iloc[0]["status"]


# ------------------------------------------------------------------------------------ a worker that dies
@pytest.mark.slow
def test_a_killed_worker_fails_only_its_run_and_resume_recovers_it(local, tmp_path):
    """SIGKILL the local worker holding a run midway, and again when that run is retried alone: the run is
    recorded as failed, the other run finishes, and --resume brings the failed run back from its checkpoint."""
    import multiprocessing
    import threading

    cfg = tmp_path / "two.toml"
    cfg.write_text(CONFIG.split("[[runs]]")[0].replace("lr = [0.1, 0.3, 0.6]", "lr = [0.1, 0.3]"))
    out = tmp_path / "dying"
    victim = sw.load_config(cfg).runs[0]
    victim_dir = out / "runs" / victim.id
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 120
        while len(killed) < 2 and time.monotonic() < deadline:
            children = [p for p in multiprocessing.active_children() if p.pid not in killed]
            ready = (victim_dir / "checkpoint.npz").is_file() if not killed else True
            if children and ready and not _complete(victim_dir):
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(children[0].pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    index = sw.run_sweep(cfg, out=out, workers=1, progress=False)
    thread.join()
    assert len(killed) == 2
    row = index[index["id"] == victim.id].iloc[0]
    assert row["status"] == "failed: its worker process died (killed or out of memory)"
    other = index[index["id"] != victim.id].iloc[0]
    assert other["status"] == "done"
    resumed = sw.run_sweep(cfg, out=out, workers=1, resume=True, progress=False)
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"run": victim.id, "event": "resumed", "status": "done"} in events
    expected = local[1][local[1]["id"].isin(resumed["id"])].reset_index(drop=True)
    assert_frame_equal(sw.comparable(resumed), sw.comparable(expected))
