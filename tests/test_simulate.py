"""simulate: lock-step runs, divergence, closed forms, records, resume, determinism, bad input."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import rodflow
from rodflow import Problem, RodflowError, problems

TIMING = [c for c in ("wall_s", "sharpness_wall_s")]


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c.endswith("wall_s")])


def test_api_shapes_and_columns():
    p = problems.make("sharp-valley")
    r = rodflow.simulate(p, lr=0.3, steps=20, methods=("gd", "gradient_flow"), sharpness_every=1, neigs=1,
                         record_iterates=True, dtype="float64", seed=0)
    for col in ("method", "step", "loss", "sharpness", "grad_evals", "hvps", "wall_s", "dist_gd"):
        assert col in r.metrics
    assert len(r.metrics) == 2 * 21
    assert r.iterates["gd"].shape == (21, 2) and r.iterates["gradient_flow"].shape == (21, 2)
    w = r.iterates["gd"]
    assert np.allclose(r.aux["gd"]["midpoint"][:-1], 0.5 * (w[:-1] + w[1:]), rtol=0, atol=1e-15)
    assert np.allclose(w[0], p.w0.numpy())
    # GD costs one gradient per step; distances are measured against GD at the same step
    gd = r.method("gd")
    assert (gd["grad_evals"].iloc[1:] == 1).all() and (gd["dist_gd"] == 0).all()
    gf = r.method("gradient_flow")
    assert np.allclose(gf["dist_gd"], np.linalg.norm(r.iterates["gradient_flow"] - w, axis=1))
    assert r.status == {"gd": "ok", "gradient_flow": "ok"}


def test_sharpness_every_and_neigs():
    p = problems.make("quadratic", lambdas=[1.0, 3.0, 7.0])
    r = rodflow.simulate(p, lr=0.1, steps=6, sharpness_every=3, neigs=2)
    gd = r.method("gd")
    assert gd["sharpness"].notna().tolist() == [True, False, False, True, False, False, True]
    assert gd["eig_1"].dropna().tolist() == pytest.approx([7.0] * 3)
    assert gd["eig_2"].dropna().tolist() == pytest.approx([3.0] * 3)
    assert r.aux["gd"]["eigs"].shape == (7, 2)
    r0 = rodflow.simulate(p, lr=0.1, steps=0, sharpness_every=1)
    assert r0.method("gd")["sharpness"].tolist() == pytest.approx([7.0])


def test_gd_diverges_past_threshold_with_reason_and_others_finish():
    p = problems.make("quadratic", lambdas=[1.0, 10.0])
    # 2/η = 8 < 10: GD's second coordinate is multiplied by |1 − 1.25| ... grows by |1-ηλ| = 0.25? use η=0.25
    lr = 0.25  # |1 − η·10| = 1.5 > 1: GD diverges, gradient flow does not
    r = rodflow.simulate(p, lr=lr, steps=200, sharpness_every=0)
    assert r.status["gd"].startswith("diverged at step ")
    n = int(r.status["gd"].split()[3])
    assert 0 < n < 200
    gd = r.method("gd")
    assert gd.index.max() == n  # everything up to the divergence is kept
    assert np.isfinite(r.iterates["gd"][:n]).all() and np.isnan(r.iterates["gd"][n + 1:]).all()
    assert r.status["gradient_flow"] == "ok" and r.method("gradient_flow").index.max() == 200
    # before it diverged, GD's iterates are the exact recurrence
    expected = (1 - lr * np.array([1.0, 10.0]))[None, :] ** np.arange(n)[:, None]
    assert np.allclose(r.iterates["gd"][:n], expected, rtol=1e-12)


def test_non_finite_loss_is_divergence():
    p = Problem.from_loss(lambda w: (w**2).sum() + torch.log(1.5 - w[0]), torch.tensor([1.2, 0.0], dtype=torch.float64))
    r = rodflow.simulate(p, lr=0.9, steps=50, sharpness_every=0, methods=("gd",))
    assert "diverged at step" in r.status["gd"]


@pytest.mark.parametrize("integrator,rel_bound,abs_bound", [("dopri", 1e-6, 1e-8), ("rkc", 5e-4, 5e-5),
                                                           ("srk4", 2e-4, 5e-5)])
@pytest.mark.parametrize("lambdas,lr", [([0.5, 2.0, 5.0], 0.1), ([1.0, 30.0, 300.0], 0.05)])
def test_gradient_flow_matches_closed_form(lambdas, lr, integrator, rel_bound, abs_bound):
    """Every integrator at its default tolerances (dopri rtol 1e-8; rkc rtol 1e-5, second order: measured
    relative errors 1.7e-4 and 3.4e-4, growing with t as the decaying components' relative error accumulates;
    absolute 3.0e-5 and 3.7e-5 on |w_i| ≤ 2, from the first steps, whose local error is rtol·|w|; srk4 rtol
    3e-4, fourth order: 1.7e-5 and 7.0e-5, absolute 2.4e-5, in 201 and 452 evaluations against rkc's 846, 1433)."""
    lam = np.array(lambdas)
    p = problems.make("quadratic", lambdas=lambdas, w0=[1.0, -2.0, 0.5])
    steps = 60
    r = rodflow.simulate(p, lr=lr, steps=steps, methods=("gradient_flow",), sharpness_every=0,
                         options={"gradient_flow": {"integrator": integrator}})
    t = np.arange(steps + 1)[:, None]
    exact = np.array([1.0, -2.0, 0.5])[None, :] * np.exp(-lr * lam[None, :] * t)
    got = r.iterates["gradient_flow"]
    # relative error of the iterate at every integer time (read off the dense output between steps)
    rel = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert rel.max() <= rel_bound
    assert np.max(np.abs(got - exact)) <= abs_bound
    # DOPRI's steps adapt to the stiffness: cost per unit time grows with ηS, far below a fixed step of 1/(100 ηS).
    # (RKC is accuracy-limited on these pure exponential decays: 846 and 1433 evaluations here against DOPRI's
    # 782 and 2270; its cost advantage on stiff flows is tested in test_integrators.py.)
    if integrator == "dopri":
        evals = r.method("gradient_flow")["grad_evals"].sum()
        assert evals < 6 * steps * max(1.0, lr * lam.max()) * 2.5


def test_save_load_round_trip(tmp_path):
    p = problems.make("self-stabilization")
    r = rodflow.simulate(p, lr=0.1, steps=30, neigs=2)
    path = r.save(tmp_path / "run")
    back = rodflow.load(path)
    pd.testing.assert_frame_equal(back.metrics, r.metrics)
    for m in r.methods:
        np.testing.assert_array_equal(back.iterates[m], r.iterates[m])
        assert back.aux[m].keys() == r.aux[m].keys()
        for k in r.aux[m]:
            np.testing.assert_array_equal(back.aux[m][k], r.aux[m][k])
    assert back.config == r.config and back.status == r.status


def test_save_refuses_an_existing_run_and_a_file_unless_overwrite(tmp_path):
    p = problems.make("quadratic")
    long = rodflow.simulate(p, lr=0.1, steps=20, methods=["gd", "gradient_flow"], progress=False)
    short = rodflow.simulate(p, lr=0.1, steps=5, methods=["gd"], progress=False)
    path = long.save(tmp_path / "run")
    (path / "plots").mkdir()
    (path / "plots" / "loss.png").write_bytes(b"old figure")
    before = (path / "metrics.parquet").read_bytes()
    with pytest.raises(RodflowError) as info:
        short.save(path)
    assert "already holds a run" in str(info.value) and "overwrite=True" in str(info.value)
    assert "\n" not in str(info.value) and (path / "metrics.parquet").read_bytes() == before
    short.save(path, overwrite=True)  # replaced whole: no stale arrays or plots of the longer run
    back = rodflow.load(path)
    assert back.methods == ["gd"] and len(back.metrics) == 6 and back.iterates["gd"].shape[0] == 6
    assert not (path / "plots").exists() and not (path / "arrays" / "gradient_flow").exists()
    back.save(path)  # a loaded result into its own directory: in place
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "under"):
        with pytest.raises(RodflowError) as info:
            short.save(target)
        assert "\n" not in str(info.value) and ("is a file" in str(info.value) or "Not a directory" in str(info.value))


def test_out_dir_equals_in_memory_run(tmp_path):
    p = problems.make("scalar-network", depth=3)
    a = rodflow.simulate(p, lr=0.2, steps=25)
    b = rodflow.simulate(p, lr=0.2, steps=25, out=tmp_path / "run")
    loaded = rodflow.load(tmp_path / "run")
    pd.testing.assert_frame_equal(comparable(a.metrics), comparable(loaded.metrics))
    np.testing.assert_array_equal(a.iterates["gradient_flow"], loaded.iterates["gradient_flow"])
    assert (tmp_path / "run" / "metrics.parquet").is_file() and (tmp_path / "run" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["environment"]["torch"] == torch.__version__


def test_resume_after_interrupt_gives_same_metrics(tmp_path, killed_at_gd_step):
    p = problems.make("sharp-valley")
    kw = dict(lr=0.3, steps=120, methods=("gd", "gradient_flow"), neigs=2)
    full = rodflow.simulate(p, **kw)
    with killed_at_gd_step(77):
        rodflow.simulate(p, **kw, out=tmp_path / "run", checkpoint_every=20)
    partial = rodflow.load(tmp_path / "run")  # killed: readable, every completed step there
    assert partial.metrics["step"].max() == 76
    resumed = rodflow.resume(tmp_path / "run")
    pd.testing.assert_frame_equal(comparable(resumed.metrics), comparable(full.metrics))
    for m in full.methods:
        np.testing.assert_array_equal(resumed.iterates[m], full.iterates[m])
    pd.testing.assert_frame_equal(comparable(rodflow.load(tmp_path / "run").metrics), comparable(full.metrics))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rodflow.cli", *args], capture_output=True, text=True, **kw)


def test_cli_killed_run_resumes_to_same_result(tmp_path):
    args = ["run", "--problem", "self-stabilization", "--lr", "0.1", "--steps", "1500", "--checkpoint-every", "50",
            "--no-progress", "--no-plots", "--neigs", "1"]
    ref = _cli(*args, "--out", str(tmp_path / "ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, "-m", "rodflow.cli", *args, "--out", str(tmp_path / "killed")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and sum(1 for _ in open(log)) > 2 * 400 and (tmp_path / "killed" / "checkpoint.npz").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.parquet").exists(), "the run finished before it was killed"
    partial = rodflow.load(tmp_path / "killed")
    assert partial.metrics["step"].max() >= 400
    res = _cli("run", "--resume", str(tmp_path / "killed"), "--no-progress", "--no-plots", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    a = comparable(rodflow.load(tmp_path / "ref").metrics)
    b = comparable(rodflow.load(tmp_path / "killed").metrics)
    pd.testing.assert_frame_equal(a, b)


def test_same_command_twice_is_deterministic(tmp_path):
    args = ["run", "--problem", "squared-regression", "--steps", "40", "--neigs", "2", "--no-progress", "--no-plots"]
    for name in ("a", "b"):
        res = _cli(*args, "--out", str(tmp_path / name), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    a = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    b = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    pd.testing.assert_frame_equal(comparable(a), comparable(b))
    assert "summary" not in a  # summary lives in summary.csv
    assert (tmp_path / "a" / "plots").exists() is False


def test_cli_run_writes_plots_and_summary(tmp_path, capsys):
    from rodflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--problem", "self-stabilization", "--steps", "60", "--no-progress", "--out", str(tmp_path / "r")])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "gradient_flow" in out and "dist_mean" in out
    for name in ("loss", "sharpness", "distance"):
        assert (tmp_path / "r" / "plots" / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / "r" / "summary.csv").is_file()


@pytest.mark.parametrize(
    "args,match",
    [
        (["run", "--problem", "nope"], "unknown problem 'nope'"),
        (["run", "--problem", "quadratic", "--methods", "gd,nope"], "unknown method 'nope'"),
        (["run", "--problem", "quadratic", "--param", "bogus=1"], "has no parameter 'bogus'"),
        (["run", "--problem", "quadratic", "--lr", "-1"], "lr must be a positive"),
        (["run", "--problem", "quadratic", "--lr", "nan"], "lr must be a positive"),
        (["run", "--problem", "quadratic", "--steps", "-3"], "steps must be an integer >= 0"),
        (["run", "--problem", "quadratic", "--param", "w0=[1,2]"], "w0 must have 3 entries"),
        (["run", "--problem", "quadratic", "--opt", "gradient_flow.rtl=1"], "did you mean 'rtol'"),
        (["run", "--problem", "quadratic", "--methods", "gd,rod_flow", "--opt", "rod_flow.integrator=euler"],
         "must be one of srk4, rkc, dopri"),
        (["run", "--problem", "quadratic", "--opt", "gradient_flow.rtol=-1"], "rtol must be a finite number > 0"),
        (["run", "--problem", "quadratic", "--methods", "gd,rod_flow", "--opt", "rod_flow.rtol=abc"],
         "rtol must be a finite number > 0"),
        (["run", "--resume", "/nonexistent/dir"], "not a rodflow run directory"),
        (["run", "--problem", "quadratic", "--gfs-every", "5", "--gfs-opt", "tl=1"], "unknown GFS option 'tl'"),
        (["run", "--problem", "quadratic", "--gfs-every", "5", "--gfs-opt", "tol=2"], "tol must be in (0, 1)"),
        *[(["run", "--problem", "quadratic", "--methods", "gd,central_flow", "--opt", f"central_flow.{opt}"], match)
          for opt, match in [("seed=abc", "seed must be an integer in 0.."), ("seed=1.5", "seed must be an integer"),
                             ("seed=true", "seed must be an integer"), ("seed=-1", "seed must be an integer in 0.."),
                             ("max_k=abc", "max_k must be a positive integer"),
                             ("eig_tol=abc", "eig_tol must be a number")]],
        (["run", "--problem", "quadratic", "--seed", "99999999999999999999"], "seed must be an integer in 0.."),
        *[(["run", "--problem", "quadratic", "--gfs-every", "5", "--gfs-opt", opt], match)
          for opt, match in [("lsqr_maxiter=abc", "lsqr_maxiter must be an integer"),
                             ("max_grad_evals=abc", "max_grad_evals must be an integer"),
                             ("atol=abc", "atol must be a finite number >= 0"),
                             ("cg_maxiter=2.5", "cg_maxiter must be an integer"),
                             ("eig_tol=nan", "eig_tol must be a positive finite number"),
                             ("eig_tol=-1", "eig_tol must be a positive"),
                             ("seed=abc", "GFS option seed must be an integer"),
                             ("seed=1.5", "GFS option seed must be an integer")]],
        (["run", "--problem", "quadratic", "--gfs-opt", "tol=1e-3"], "--gfs-every is 0"),
        (["run", "--problem", "scalar-network", "--param", "depth=2.5"], "depth must be a positive integer"),
        (["run", "--problem", "quadratic", "--param", "lambdas=[nan,1]"], "lambdas must be a flat list of finite"),
        (["run", "--problem", "quadratic", "--param", "lambdas=abc"], "lambdas must be a flat list of finite"),
        (["run", "--problem", "scalar-network", "--param", "y=nan"], "y must be finite"),
        (["run", "--problem", "scalar-network", "--param", "depth=3", "--param", "depth=4"],
         "--param depth is given twice"),
    ],
)
def test_cli_bad_input_one_line(tmp_path, args, match, capsys, monkeypatch):
    from rodflow.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([*args, "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert match in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0.0), "lr must be a positive"),
        (dict(lr=float("inf")), "lr must be a positive"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(methods=()), "methods is empty"),
        (dict(methods=("gd", "gd")), "twice"),
        (dict(options={"rod": {}}), "not among the methods"),
        (dict(optimizer="adamw"), "unknown optimizer"),
        (dict(options={"gd": {"optimizer": "momentum"}}), "gd.optimizer is now the run's optimizer"),
        (dict(dtype="float16"), "unknown dtype"),
        (dict(neigs=0), "neigs must be"),
        (dict(methods=5), "methods must be method names"),
        (dict(methods=["gd", 3]), "methods must be method names"),
        (dict(options={"gd": [1]}), "must map that method's options"),
        (dict(out=5), "out must be a directory path"),
        (dict(lr="0.1"), "lr must be a positive number, got '0.1'"),
        (dict(seed=2**70), "seed must be an integer in 0.."),
        (dict(gfs_every=2, gfs_options={"seed": -1}), "GFS option seed must be an integer in 0.."),
    ],
)
def test_api_bad_input(kwargs, match):
    call = dict(lr=0.1, steps=3)
    call.update(kwargs)
    with pytest.raises(RodflowError, match=match):
        rodflow.simulate(problems.make("quadratic"), **call)


def test_momentum_update_rule_plugs_into_gd():
    p = problems.make("quadratic", lambdas=[1.0, 2.0])
    r = rodflow.simulate(p, lr=0.1, steps=5, methods=("gd",), sharpness_every=0,
                         optimizer="momentum", optimizer_options={"beta": 0.5})
    w = np.array([1.0, 1.0])
    v = np.zeros(2)
    for t in range(5):
        v = 0.5 * v + np.array([1.0, 2.0]) * w
        w = w - 0.1 * v
    assert np.allclose(r.iterates["gd"][5], w, rtol=1e-14)


def test_record_iterates_projection_and_off():
    p = problems.make("squared-regression", dim=30)
    r = rodflow.simulate(p, lr=0.05, steps=5, record_iterates=4, sharpness_every=0)
    assert r.iterates["gd"].shape == (6, 4) and r.aux["gd"]["midpoint"].shape == (6, 4)
    full = rodflow.simulate(p, lr=0.05, steps=5, sharpness_every=0)
    # distances are exact whatever is stored
    np.testing.assert_allclose(r.metrics["dist_gd"], full.metrics["dist_gd"], rtol=1e-12)
    off = rodflow.simulate(p, lr=0.05, steps=5, record_iterates=False, sharpness_every=0)
    assert off.iterates == {} and "midpoint" not in off.aux["gd"]


def test_float32_run():
    p = problems.make("self-stabilization")
    r = rodflow.simulate(p, lr=0.1, steps=50, dtype="float32")
    assert r.iterates["gd"].dtype == np.float32 and r.status["gradient_flow"] == "ok"
    r64 = rodflow.simulate(p, lr=0.1, steps=50)
    assert np.allclose(r.iterates["gd"], r64.iterates["gd"], atol=1e-4)


def test_rerun_into_existing_directory_replaces_it(tmp_path):
    p = problems.make("quadratic")
    rodflow.simulate(p, lr=0.1, steps=30, out=tmp_path / "run")
    short = rodflow.simulate(p, lr=0.1, steps=10, methods=("gd",), out=tmp_path / "run")
    back = rodflow.load(tmp_path / "run")
    assert back.iterates["gd"].shape == (11, 3) and back.methods == ["gd"]
    np.testing.assert_array_equal(back.iterates["gd"], short.iterates["gd"])
    assert not (tmp_path / "run" / "arrays" / "gradient_flow").exists()


def test_cli_run_refuses_to_replace_an_existing_run(tmp_path, capsys, monkeypatch):
    from rodflow.cli import main

    def cli(argv):
        with pytest.raises(SystemExit) as info:
            main(argv)
        return info.value.code, capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    args = ["run", "--problem", "quadratic", "--steps", "3", "--no-progress", "--no-plots", "--out", "r"]
    assert cli(args)[0] == 0
    before = (tmp_path / "r" / "metrics.parquet").read_bytes()
    code, err = cli(args)
    assert code == 2 and "r already holds a run; pass --overwrite to replace it, --resume r to continue it" in err
    assert (tmp_path / "r" / "metrics.parquet").read_bytes() == before  # nothing was deleted
    assert cli(args + ["--overwrite", "--steps", "4"])[0] == 0
    assert len(rodflow.load(tmp_path / "r").method("gd")) == 5
    (tmp_path / "f").write_text("x")
    code, err = cli(args[:-1] + ["f"])
    assert code == 2 and "is a file, not a directory" in err


def test_api_bad_names_paths_and_data_are_one_line_errors():
    from torch import nn

    for bad in (None, 3):
        with pytest.raises(RodflowError, match="problems.make needs a problem name"):
            problems.make(bad)
    with pytest.raises(RodflowError, match="depth must be a positive integer, got '3'"):
        problems.make("scalar-network", depth="3")
    with pytest.raises(RodflowError, match="load needs the path of a run directory"):
        rodflow.load(None)
    X, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.raises(RodflowError, match="data has no examples") as info:
        Problem.from_module(nn.Sequential(nn.Linear(3, 2)), (X[:0], y[:0]))
    assert "\n" not in str(info.value)


def test_a_rodflow_warning_prints_as_one_line():
    code = ("import warnings, rodflow\n"
            "warnings.warn('the sharpness did not converge', rodflow.RodflowWarning)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines() == ["RodflowWarning: the sharpness did not converge"], proc.stderr
