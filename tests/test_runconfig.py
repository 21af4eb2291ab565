"""RunConfig: one typed list of run settings shared by simulate, resume, compare, sweeps and config.json."""

import json

import numpy as np
import pytest

import rodflow
from rodflow import RunConfig
from rodflow import sweep as sw
from rodflow.compare import check_config
from rodflow.errors import RodflowError


def test_simulate_with_a_config_equals_simulate_with_keywords(tmp_path):
    p = rodflow.problems.make("sharp-valley")
    cfg = RunConfig(lr=0.3, steps=15, methods=("gd", "rod_flow"), sharpness_every=5, seed=3)
    a = rodflow.simulate(p, config=cfg, progress=False, out=tmp_path / "a")
    b = rodflow.simulate(p, lr=0.3, steps=15, methods=("gd", "rod_flow"), sharpness_every=5, seed=3, progress=False)
    for m in ("gd", "rod_flow"):
        np.testing.assert_array_equal(a.iterates[m], b.iterates[m])
    # keywords override the config's fields
    c = rodflow.simulate(p, config=cfg, steps=5, progress=False)
    assert c.config["steps"] == 5 and len(c.method("gd")) == 6
    # config.json holds every field and reads back as the checked config
    record = json.loads((tmp_path / "a" / "config.json").read_text())
    assert set(RunConfig.fields()) - {"gfs_options", "measurements", "optimizer_options"} <= set(record)  # when given
    assert RunConfig.from_json(record) == cfg.checked(p)


def test_unknown_keys_fail_with_a_did_you_mean():
    with pytest.raises(RodflowError, match=r"unknown key 'sharpnes_every' \(did you mean 'sharpness_every'\?\); "
                                           r"valid keys: lr, steps"):
        RunConfig.from_dict({"lr": 0.1, "steps": 3, "sharpnes_every": 2})
    with pytest.raises(RodflowError, match="did you mean 'gfs_every'"):
        RunConfig(lr=0.1, steps=3).replace(gfs_evry=2)
    with pytest.raises(RodflowError, match=r"config has unknown key 'neig' \(did you mean 'neigs'\?\)"):
        check_config({"problem": "quadratic", "lr": 0.1, "steps": 3, "neig": 2})
    with pytest.raises(RodflowError, match="simulate needs lr="):
        rodflow.simulate(rodflow.problems.make("quadratic"), steps=3)
    with pytest.raises(RodflowError, match="run config needs steps"):
        RunConfig.from_dict({"lr": 0.1})


@pytest.mark.parametrize("field,value,match", [
    ("steps", -1, "steps must be an integer >= 0"), ("lr", 0.0, "lr must be a positive"),
    ("neigs", 1.5, "neigs must be an integer"), ("gfs_every", -2, "gfs_every must be an integer >= 0"),
    ("checkpoint_seconds", "x", "checkpoint_seconds must be a finite number"),
    ("dtype", "float16", "unknown dtype 'float16'"), ("methods", ("gd", "gd"), "lists a method twice"),
    ("options", {"rod_flow": {"rtol": 1e-3}}, "options given for 'rod_flow', which is not among"),
])
def test_bad_values_are_one_line_errors_naming_the_field(field, value, match):
    cfg = RunConfig(lr=0.1, steps=3, methods=("gd",)).replace(**{field: value})
    with pytest.raises(RodflowError, match=match) as info:
        cfg.checked(rodflow.problems.make("quadratic"))
    assert "\n" not in str(info.value)


def test_a_sweep_can_vary_every_field_including_gfs_every(tmp_path):
    config = {"name": "g", "problem": "scalar-network", "lr": 0.3, "steps": 10, "methods": "gd",
              "sharpness_every": 0, "grid": {"gfs_every": [0, 5]}, "gfs_options": {"max_grad_evals": 5000}}
    sweep = sw.expand(config)
    assert [r.spec["gfs_every"] for r in sweep.runs] == [0, 5]
    assert set(sw.SIMULATE_KEYS) == set(RunConfig.fields()) - {"options", "gfs_options", "measurements",
                                                                "optimizer_options"}
    sw.run_sweep(sweep, out=tmp_path / "s", workers=1, progress=False)
    with_gfs = [rodflow.load(tmp_path / "s" / "runs" / r.id) for r in sweep.runs]
    assert "gfs_sharpness" not in with_gfs[0].metrics
    phi = with_gfs[1].method("gd")["gfs_sharpness"].dropna()
    assert list(phi.index) == [0, 5, 10] and np.isfinite(phi).all()
    assert with_gfs[1].config["gfs_options"] == {"max_grad_evals": 5000}


def test_a_sweep_varies_the_optimizer_and_its_options(tmp_path):
    config = {"name": "o", "problem": "quadratic", "lr": 0.05, "steps": 5, "methods": "gd,gradient_flow",
              "sharpness_every": 0, "grid": {"optimizer": ["momentum", "nesterov"], "optimizer_options.beta": [0.5, 0.8]}}
    sweep = sw.expand(config)
    assert len(sweep.runs) == 4
    sw.run_sweep(sweep, out=tmp_path / "s", workers=1, progress=False)
    seen = set()
    for r in sweep.runs:
        res = rodflow.load(tmp_path / "s" / "runs" / r.id)
        seen.add((res.config["optimizer"], res.config["optimizer_options"]["beta"]))
        assert (res.summary()["status"] == "ok").all()
    assert seen == {("momentum", 0.5), ("momentum", 0.8), ("nesterov", 0.5), ("nesterov", 0.8)}
    with pytest.raises(RodflowError, match="optimizer_options.KEY"):
        sw.expand({**config, "grid": {"optimizer_options": [{"beta": 0.5}]}})


def test_a_sweep_with_a_misspelt_optimizer_or_option_is_refused_before_any_run(tmp_path):
    base = {"name": "o", "problem": "quadratic", "lr": 0.05, "steps": 3, "methods": "gd", "sharpness_every": 0}
    for extra, match in (({"optimizer": "adm"}, "did you mean 'adam'"),
                         ({"optimizer": "adam", "grid": {"optimizer_options.beta": [0.5]}}, "has no parameter 'beta'")):
        sweep = sw.expand({**base, **extra})
        with pytest.raises(RodflowError, match=match):
            sw.run_sweep(sweep, out=tmp_path / "s", workers=1, progress=False)
        assert not (tmp_path / "s" / "runs").exists()
    with pytest.raises(RodflowError, match="optimizer_options.KEY"):
        sw.expand({**base, "grid": {"beta1": [0.5]}})
