"""Fault injection: every run file corrupted, truncated or deleted, runs killed and interrupted. Nothing written
before a fault is lost, a resumed run equals an uninterrupted one, and what cannot be recovered is a one-line
error naming the file and what to do — never a partial result marked complete."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rodflow
from rodflow.errors import RodflowError

KW = dict(lr=0.3, steps=40, methods=["gd", "gradient_flow", "rod_flow"], sharpness_every=5, progress=False)


def problem():
    return rodflow.problems.make("sharp-valley")


@pytest.fixture(scope="module")
def whole():
    return rodflow.simulate(problem(), **KW)


def killed(tmp_path, killed_at_gd_step, step=23, every=10, name="run"):
    out = tmp_path / name
    with killed_at_gd_step(step):
        rodflow.simulate(problem(), **KW, out=out, checkpoint_every=every)
    return out


def same(a, b):
    for m in KW["methods"]:
        cols = ["loss", "loss_pred", "sharpness", "dist_gd", "grad_evals"]
        np.testing.assert_array_equal(a.method(m)[cols].to_numpy(float), b.method(m)[cols].to_numpy(float))
        np.testing.assert_array_equal(a.iterates[m], b.iterates[m])
        assert a.status[m] == b.status[m]


def one_line(exc_info, *words):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text


def test_a_killed_run_reads_as_incomplete_and_resumes_to_the_whole(tmp_path, killed_at_gd_step, whole):
    out = killed(tmp_path, killed_at_gd_step)
    partial = rodflow.load(out)
    assert all(s.kind == "incomplete" for s in partial.status.values()), partial.status
    assert "--resume" in partial.status["gd"].reason and partial.status["gd"].step == 22
    assert (partial.summary()["status"].str.startswith("incomplete")).all()
    same(rodflow.resume(out), whole)


def test_torn_last_line_is_trimmed_and_a_bad_middle_line_is_an_error(tmp_path, killed_at_gd_step, whole):
    out = killed(tmp_path, killed_at_gd_step)
    path = out / "metrics.jsonl"
    with open(path, "a") as fh:
        fh.write('{"method": "gd", "step": 23, "lo')  # a write cut by the kill
    same(rodflow.resume(out), whole)

    out = killed(tmp_path, killed_at_gd_step, name="bad")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[10] = lines[10][:15]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(RodflowError) as info:
        rodflow.resume(out)
    one_line(info, "metrics.jsonl line 11 is corrupt", "--overwrite")
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing rewritten
    with pytest.raises(RodflowError):
        rodflow.load(out)


def test_random_truncations_of_metrics_resume_exactly_or_refuse(tmp_path, killed_at_gd_step, whole):
    rng = np.random.default_rng(5)
    for i in range(6):
        out = killed(tmp_path, killed_at_gd_step, name=f"t{i}")
        data = (out / "metrics.jsonl").read_bytes()
        cut = int(rng.integers(len(data) // 3, len(data)))
        (out / "metrics.jsonl").write_bytes(data[:cut])
        try:
            resumed = rodflow.resume(out)
        except RodflowError as exc:  # rows the checkpoint covers are gone: refused, never silently different
            assert "lacks" in str(exc) and "\n" not in str(exc)
            continue
        same(resumed, whole)


def test_missing_or_damaged_arrays_and_checkpoints_are_refused(tmp_path, killed_at_gd_step):
    out = killed(tmp_path, killed_at_gd_step)
    (out / "arrays" / "rod_flow" / "iterate.npy").unlink()
    with pytest.raises(RodflowError) as info:
        rodflow.resume(out)
    one_line(info, "iterate.npy is missing", "--overwrite")

    for damage in (b"", b"PK\x03\x04 truncated"):
        out = killed(tmp_path, killed_at_gd_step, name=f"c{len(damage)}")
        (out / "checkpoint.npz").write_bytes(damage)
        with pytest.raises(RodflowError) as info:
            rodflow.resume(out)
        one_line(info, "checkpoint.npz is damaged", "--overwrite")
        assert len(rodflow.load(out).method("gd")) >= 23  # the rows written so far stay readable

    out = killed(tmp_path, killed_at_gd_step, name="arr")
    (out / "arrays" / "gd" / "iterate.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RodflowError) as info:
        rodflow.load(out)
    one_line(info, "iterate.npy is damaged")


@pytest.mark.parametrize("name,content", [("config.json", b"{not json"), ("status.json", b"\xff\xfe"),
                                          ("config.json", b"[1, 2]")])
def test_corrupt_json_files_are_one_line_errors(tmp_path, killed_at_gd_step, name, content):
    out = killed(tmp_path, killed_at_gd_step)
    (out / name).write_bytes(content)
    for action in (rodflow.resume, rodflow.load):
        with pytest.raises(RodflowError) as info:
            action(out)
        one_line(info, f"{name} in {out} is corrupt")


def test_restart_without_a_checkpoint_writes_no_duplicate_rows(tmp_path, killed_at_gd_step, whole):
    out = killed(tmp_path, killed_at_gd_step, step=12, every=1000)  # killed before any checkpoint
    assert not (out / "checkpoint.npz").exists()
    resumed = rodflow.resume(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len({(r["method"], r["step"]) for r in rows}) == 3 * 41
    same(resumed, whole)


def test_bad_places_and_sizes_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    p = problem()
    for out in (tmp_path / "file", tmp_path / "file" / "under"):
        with pytest.raises(RodflowError) as info:
            rodflow.simulate(p, lr=0.3, steps=2, out=out, progress=False)
        one_line(info, "cannot write the run directory")
    with pytest.raises(RodflowError) as info:
        rodflow.simulate(p, lr=0.3, steps=10 ** 14, out=tmp_path / "huge", progress=False)
    one_line(info, "cannot allocate", "GiB", "record_iterates")
    with pytest.raises(RodflowError) as info:
        rodflow.simulate(p, lr=0.3, steps=2, neigs=3, progress=False)
    one_line(info, "neigs 3 exceeds the problem's 2 parameters")
    with pytest.raises(RodflowError) as info:
        rodflow.problems.make("sharp-valley", eps=True)
    one_line(info, "eps must be a number, got True")
    with pytest.raises(RodflowError) as info:
        rodflow.simulate(p, lr=0.3, steps=2, methods=["gd", "central_flow"],
                         options={"central_flow": {"substeps": "abc"}}, progress=False)
    one_line(info, "substeps must be a positive integer")
    (tmp_path / "bad.toml").write_bytes(b"name = \"\xff\"\n")
    from rodflow.compare import load_config

    with pytest.raises(RodflowError) as info:
        load_config(tmp_path / "bad.toml")
    one_line(info, "is not UTF-8 text")


def test_resume_with_conflicting_flags_is_refused(tmp_path, capsys, monkeypatch):
    from rodflow.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["run", "--problem", "quadratic", "--steps", "3", "--no-progress", "--no-plots", "--out", "r"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["run", "--resume", "r", "--steps", "10", "--lr", "0.2", "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "drop --lr, --steps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_checkpoints_says_how_to_resume_and_resumes_to_the_whole(tmp_path, sig):
    args = ["run", "--problem", "sharp-valley", "--lr", "0.3", "--steps", "6000", "--methods", "gd,gradient_flow",
            "--sharpness-every", "0", "--no-progress", "--no-plots", "--checkpoint-every", "100000", "--out", "r"]
    cmd = [sys.executable, "-m", "rodflow.cli", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    jsonl = tmp_path / "r" / "metrics.jsonl"
    while time.monotonic() < deadline and (not jsonl.is_file() or jsonl.stat().st_size < 20000):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "checkpoint written. Continue with: rodflow run --resume r" in err and "Traceback" not in err
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["complete"] is False and status["last_checkpoint"] > 0
    resumed = rodflow.resume(tmp_path / "r")
    straight = rodflow.simulate(problem(), lr=0.3, steps=6000, methods=["gd", "gradient_flow"], sharpness_every=0,
                                progress=False)
    for m in ("gd", "gradient_flow"):
        np.testing.assert_array_equal(resumed.iterates[m], straight.iterates[m])
        np.testing.assert_array_equal(resumed.method(m)["loss"], straight.method(m)["loss"])


def test_a_finite_loss_with_a_nan_gradient_ends_every_method_with_a_status(tmp_path):
    import torch

    def loss(w):  # finite (the first branch), but the unselected branch's NaN reaches the gradient
        return torch.where(w[0] < 0.5, w @ w, torch.sqrt(w[0] - 0.5))

    p = rodflow.Problem.from_loss(loss, torch.tensor([0.2, 1.0], dtype=torch.float64), check=False)
    with pytest.warns(rodflow.RodflowWarning):
        r = rodflow.simulate(p, lr=0.1, steps=10, methods=["gd", "gradient_flow", "central_flow", "rod_flow"],
                             out=tmp_path / "r", progress=False)
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["complete"] is True
    assert r.status["gd"].kind == "diverged" and r.status["gd"].step == 1
    assert r.method("gd")["sharpness_reason"].iloc[0] == "non-finite Hessian-vector products"
    for m in ("gradient_flow", "central_flow", "rod_flow"):
        assert r.status[m].kind in ("failed", "diverged"), (m, r.status[m])
    assert np.isnan(r.method("gd")["sharpness"].iloc[0]) and r.method("gd")["sharpness_reason"].iloc[0]


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, killed_at_gd_step, whole):
    out = killed(tmp_path, killed_at_gd_step)
    assert not (out / ".lock").exists()  # released even when the run dies
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(RodflowError) as info:
            rodflow.resume(out)
        one_line(info, f"is being written by process {sleeper.pid}")
        with pytest.raises(RodflowError):
            rodflow.simulate(problem(), **KW, out=out)
        assert (out / "checkpoint.npz").exists()  # the refused writer deleted nothing
    finally:
        sleeper.kill()
        sleeper.wait()
    same(rodflow.resume(out), whole)  # the writer is gone: its lock is stale and taken over
    assert not (out / ".lock").exists()


def _children(pid):
    from pathlib import Path

    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(") ")[-1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _running(pid):
    from pathlib import Path

    try:
        return "State:\tZ" not in (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_sweep_workers_die_with_their_parent_and_ctrl_c_cancels_at_once(tmp_path, sig):
    (tmp_path / "s.toml").write_text('name = "k"\nproblem = "sharp-valley"\nsteps = 300000\nmethods = "gd"\n'
                                     'sharpness_every = 0\n[grid]\nlr = [0.1, 0.2, 0.3, 0.35]\n')
    out = tmp_path / "o"
    # Ctrl-C as a terminal delivers it: to a process that handles SIGINT (a test run started in the background
    # of a non-interactive shell ignores it, and its children inherit that; the sweep then ran on)
    proc = subprocess.Popen([sys.executable, "-m", "rodflow.cli", "sweep", str(tmp_path / "s.toml"), "--out", str(out),
                             "--workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list(out.glob("runs/*/metrics.jsonl"))) < 2:
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert workers, "the sweep started no worker"
    proc.send_signal(sig)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert time.monotonic() - start < 15 and proc.returncode == 130
        assert "queued runs cancelled" in err and "--resume" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(w) for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if _running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers outlived the sweep's parent: {alive}"


# ------------------------------------------------------------------------------------ finished runs damaged
QUICK = dict(lr=0.1, steps=20, methods=["gd", "gradient_flow"], progress=False)


def quick_run(path, **kw):
    return rodflow.simulate(rodflow.problems.make("quadratic"), **QUICK, out=path, **kw)


def test_a_finished_run_with_a_cut_metrics_file_is_never_rebuilt_shorter_or_complete(tmp_path, killed_at_gd_step):
    import pandas as pd

    out = tmp_path / "r"
    quick_run(out)
    record = pd.read_parquet(out / "metrics.parquet")
    assert len(record) == 2 * 21
    data = (out / "metrics.jsonl").read_bytes()
    for damage in (data[:-50], b"", None):  # the last line cut, the file emptied, the file deleted
        if damage is None:
            (out / "metrics.jsonl").unlink()
        else:
            (out / "metrics.jsonl").write_bytes(damage)
        resumed = rodflow.resume(out)  # the parquet is the finished record: nothing lost
        assert len(resumed.metrics) == 2 * 21
        pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), record)
        assert json.loads((out / "status.json").read_text())["complete"] is True

    (out / "metrics.parquet").unlink()  # the record gone and the rows cut: not complete, and refused
    (out / "metrics.jsonl").write_bytes(data[:len(data) // 3])
    loaded = rodflow.load(out)
    assert all(s.kind == "incomplete" and "lacks its rows" in s.reason for s in loaded.status.values()), loaded.status
    assert not loaded.summary()["status"].eq("ok").any()
    with pytest.raises(RodflowError) as info:
        rodflow.resume(out)
    one_line(info, "metrics.jsonl lacks gd's rows for steps", "..20", "--overwrite")
    assert not (out / "metrics.parquet").exists()

    # a killed run whose status.json was set complete by hand
    killed_dir = tmp_path / "k"
    with killed_at_gd_step(8):
        quick_run(killed_dir, checkpoint_every=5)
    status = json.loads((killed_dir / "status.json").read_text())
    (killed_dir / "status.json").write_text(json.dumps({**status, "complete": True}))
    assert all(s.kind == "incomplete" for s in rodflow.load(killed_dir).status.values())
    with pytest.raises(RodflowError) as info:
        rodflow.resume(killed_dir)
    one_line(info, "lacks", "though status.json says the run is complete")
    assert not (killed_dir / "metrics.parquet").exists()


@pytest.mark.parametrize("finished", [False, True])
def test_truncated_or_misshaped_arrays_are_refused_naming_the_file(tmp_path, killed_at_gd_step, finished, capsys):
    from rodflow.cli import main

    def fresh(name):
        out = tmp_path / name
        if finished:
            quick_run(out)
        else:
            with killed_at_gd_step(8):
                quick_run(out, checkpoint_every=5)
        return out

    out = fresh("cut")
    target = out / "arrays" / "gd" / "iterate.npy"
    with open(target, "r+b") as fh:
        fh.truncate(target.stat().st_size - 40)
    size = target.stat().st_size
    complete_before = json.loads((out / "status.json").read_text())["complete"]
    for action in (rodflow.resume, rodflow.load):
        with pytest.raises(RodflowError) as info:
            action(out)
        one_line(info, str(target), "is damaged")
    assert target.stat().st_size == size  # never extended with zeros
    assert json.loads((out / "status.json").read_text())["complete"] is complete_before

    out = fresh("rows")
    target = out / "arrays" / "gd" / "iterate.npy"
    np.save(target, np.load(target)[:5])
    for action in (rodflow.resume, rodflow.load):
        with pytest.raises(RodflowError) as info:
            action(out)
        one_line(info, str(target), "5 rows")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "5 rows" in err and len(err.strip().splitlines()) == 1


def test_config_without_a_field_and_empty_or_unsigned_runs_read_without_tracebacks(tmp_path, capsys):
    from rodflow.cli import main

    out = tmp_path / "r"
    quick_run(out)
    config = json.loads((out / "config.json").read_text())
    (out / "status.json").unlink()  # every step there, the status gone: incomplete because of that, said so
    loaded = rodflow.load(out)
    assert all("status.json is missing" in s.reason and "stopped before" not in s.reason
               for s in loaded.status.values()), loaded.status

    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "lr"}))
    for action in (rodflow.resume, rodflow.load):
        with pytest.raises(RodflowError) as info:
            action(out)
        one_line(info, f"{out / 'config.json'} has no lr")

    empty = tmp_path / "empty"  # a run killed before its first row
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(config))
    (empty / "metrics.jsonl").write_text("")
    table = rodflow.load(empty).summary()
    assert list(table["method"]) == ["gd", "gradient_flow"] and table["status"].str.startswith("incomplete").all()
    for command in ("summary", "plot"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, str(empty)])
        assert exit_info.value.code == 0, capsys.readouterr().err
