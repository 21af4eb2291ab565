"""`rodflow compare`: the GD-vs-flows experiment end to end on a tiny network."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import rodflow
from rodflow import compare as cmp
from rodflow.cli import app
from rodflow.errors import RodflowError

torch.set_num_threads(1)

TINY = {"n": 12, "classes": 3, "width": 4, "depth": 1}


def tiny_config(**over):
    cfg = {"name": "tiny", "problem": "mlp-digits", "params": dict(TINY), "steps": 6, "s0_fraction": 1.2,
           "sharpness_every": 2, "neigs": 2}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    return cmp.compare(tiny_config(), out=out, progress=False), out


def test_compare_runs_every_registered_method(tiny_run):
    res, out = tiny_run
    assert res.result.methods == cmp.default_methods()
    assert set(res.summary["method"]) == set(rodflow.processes.names())
    for name in ("summary.csv", "summary.md", "compare.json", "config.json", "metrics.parquet"):
        assert (out / name).is_file(), name
    figs = {p.name for p in res.figures}
    assert {"loss.png", "eigenvalues.png", "distance.png", "overview.png"} <= figs
    if "rod_flow" in res.result.methods:
        assert "rod.png" in figs
    assert all(p.stat().st_size > 1000 for p in res.figures)
    table = pd.read_csv(out / "summary.csv")
    for col in ("dist_mean", "dist_final", "loss_pred_err", "grad_evals", "hvps", "wall_s", "time_vs_gd"):
        assert col in table
    gd = table.set_index("method").loc["gd"]  # one gradient per step, plus the one at w_0
    assert gd["grad_evals"] == 7 and gd["time_vs_gd"] == 1 and gd["dist_mean"] == 0
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == len(table) + 1 and "η = " in md


def test_lr_from_initial_sharpness(tiny_run):
    res, out = tiny_run
    p = rodflow.problems.make("mlp-digits", **TINY)
    s0 = float(torch.linalg.eigvalsh(p.hessian(p.w0))[-1])
    assert res.initial_sharpness == pytest.approx(s0, rel=1e-6)
    assert res.result.lr == pytest.approx(2 * 1.2 / s0, rel=1e-6)
    info = json.loads((out / "compare.json").read_text())
    assert info["threshold"] == pytest.approx(s0 / 1.2, rel=1e-6)
    # S0 above 2/η: GD's sharpness is at the threshold from step 0
    assert res.summary.set_index("method").loc["gd", "eos_step"] == 0


def test_summary_extras_match_the_metrics(tiny_run):
    res, _ = tiny_run
    r = res.result
    if "rod_flow" not in r.methods:
        pytest.skip("rod_flow not registered")
    rod = r.method("rod_flow")["rod_length"]
    osc = r.method("gd")["half_step"]
    expect = float((rod - osc).abs().mean() / osc.abs().mean())
    got = res.summary.set_index("method").loc["rod_flow", "rod_vs_gd_osc"]
    assert got == pytest.approx(expect, rel=1e-12)
    thr = 2 / r.lr
    for m in r.methods:
        s = r.method(m)["sharpness"].dropna()
        hit = s.index[s.values >= cmp.EOS_FRACTION * thr]
        eos = res.summary.set_index("method").loc[m, "eos_step"]
        assert (np.isnan(eos) and len(hit) == 0) or eos == hit[0]


def test_gfs_panel_when_recorded(tiny_run, tmp_path):
    res, _ = tiny_run
    r = res.result
    assert not any(p.name == "gfs.png" for p in res.figures)
    metrics = r.metrics.copy()
    metrics["gfs_sharpness"] = np.where(metrics["step"] % 3 == 0, 5.0 - 0.1 * metrics["step"], np.nan)
    with_gfs = rodflow.Result(metrics, r.iterates, r.aux, r.config, r.status, r.path)
    paths = cmp.plot_comparison(with_gfs, tmp_path)
    assert (tmp_path / "gfs.png").is_file() and tmp_path / "gfs.png" in paths


def test_cli_compare_and_rerun_in_same_directory(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "mlp-digits"\nsteps = 3\nlr = 0.05\nmethods = ["gd", "gradient_flow"]\n'
                   'sharpness_every = 0\n[params]\nn = 12\nclasses = 3\nwidth = 4\ndepth = 1\n')
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "gradient_flow" in res.output and (out / "summary.md").is_file()
    # again into the same directory: refused without --overwrite (like rodflow run), nothing touched
    before = (out / "metrics.parquet").read_bytes()
    res = runner.invoke(app, ["compare", str(cfg), "--out", str(out), "--no-progress", "--steps", "5"])
    assert res.exit_code == 2 and "pass --overwrite" in res.output and len(res.output.strip().splitlines()) == 1
    assert (out / "metrics.parquet").read_bytes() == before
    # with --overwrite, longer: replaced, no stale per-step arrays
    res = runner.invoke(app, ["compare", str(cfg), "--out", str(out), "--no-progress", "--steps", "5", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert rodflow.load(out).iterates["gd"].shape[0] == 6


@pytest.mark.parametrize("bad, match", [
    ({"problem": None}, "needs problem"),
    ({"lr": 0.1}, "exactly one of lr"),
    ({"s0_fraction": -1.0}, "s0_fraction"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"problem": "mlp-digitz"}, "did you mean"),
    ({"methods": ["gd", "teleport"]}, "unknown method"),
    ({"s0_fraction": None, "lr": "0.1"}, "lr must be a positive number, got '0.1'"),
])
def test_bad_configs_are_one_line_errors(bad, match, tmp_path):
    cfg = tiny_config(**bad)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(RodflowError, match=match) as e:
        cmp.compare(cfg, out=tmp_path / "x", progress=False)
    assert "\n" not in str(e.value)


def test_cli_bad_config_file(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("problem = \n")
    res = runner.invoke(app, ["compare", str(bad)])
    assert res.exit_code == 2 and "not valid TOML" in res.output


def test_demo_config_is_valid():
    from pathlib import Path

    cfg = cmp.check_config(cmp.load_config(Path(__file__).parent.parent / "configs" / "demo.toml"))
    assert cfg["problem"] == "mlp-digits" and cfg["steps"] > 0


def test_command_modules_do_not_import_the_cli_back():
    """rodflow.cli imports rodflow.commands (to register them); nothing there imports rodflow.cli."""
    import ast
    from pathlib import Path

    import rodflow.commands

    for path in Path(rodflow.commands.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert target not in ("..cli", "rodflow.cli"), f"{path.name} imports {target}"
            elif isinstance(node, ast.Import):
                assert all(a.name != "rodflow.cli" for a in node.names), path.name


def test_compare_with_an_optimizer(tmp_path):
    """s0_fraction places the optimizer's own threshold (heavy ball: 2(1 + β)/η) at S0 / s0_fraction; the default
    methods are those that model the optimizer; eos_step compares with the recorded threshold."""
    res = cmp.compare(tiny_config(optimizer="momentum", optimizer_options={"beta": 0.5}), out=tmp_path / "m",
                      progress=False, plots=False)
    assert list(res.summary["method"]) == ["gd", "gradient_flow", "central_flow", "rod_flow"]  # all model it
    s0 = res.initial_sharpness
    assert res.result.lr == pytest.approx(1.2 * 2 * 1.5 / s0, rel=1e-12)
    info = json.loads((tmp_path / "m" / "compare.json").read_text())
    assert info["threshold"] == pytest.approx(s0 / 1.2, rel=1e-9)
    assert res.summary.set_index("method").loc["gd", "eos_step"] == 0
    assert "threshold 2(" not in (tmp_path / "m" / "summary.md").read_text()
    with pytest.raises(RodflowError, match="give lr = η instead"):
        cmp.compare(tiny_config(optimizer="adam"), out=tmp_path / "a", progress=False)
    cfg = tiny_config(optimizer="adam", lr=0.01)
    del cfg["s0_fraction"]
    adam = cmp.compare(cfg, out=tmp_path / "a2", progress=False, plots=False)
    table = adam.summary.set_index("method")
    assert (table["status"] == "ok").all() and "central_flow" in table.index
    m = adam.result.metrics
    gd = m[(m.method == "gd") & m.preconditioned_sharpness.notna()]
    hit = gd.step[gd.preconditioned_sharpness >= 0.995 * gd.threshold]
    assert table.loc["gd", "eos_step"] == (hit.iloc[0] if len(hit) else pytest.approx(np.nan, nan_ok=True))
