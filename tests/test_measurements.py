"""Plug-in measurements (rodflow.measurements), shown by the Hutchinson Hessian trace."""

import numpy as np
import pytest
import torch

import rodflow
from rodflow import measurements
from rodflow.errors import RodflowError


def test_hutchinson_is_exact_on_a_diagonal_hessian():
    """Rademacher probes have z_i² = 1, so zᵀ D z = tr D for every probe: the estimate is exact, its error 0."""
    p = rodflow.problems.make("quadratic", lambdas=(1.0, 4.0, 12.0))
    out = measurements.make("hessian_trace", p, seed=0, samples=5, block=2).measure(p.w0, 0)
    assert out["hessian_trace"] == pytest.approx(17.0, rel=1e-14) and out["hessian_trace_se"] == 0.0
    assert out["hessian_trace_hvps"] == 5


@pytest.mark.parametrize("name,kw", [("reference-mlp", {"n": 32}), ("mlp-teacher", {"n": 16, "width": 5}),
                                     ("sharp-valley", {})])
def test_hutchinson_agrees_with_the_dense_trace_within_its_standard_error(name, kw):
    p = rodflow.problems.make(name, **kw)
    dense = float(torch.trace(p.hessian(p.w0)))
    H = p.hessian(p.w0).double()
    out = measurements.make("hessian_trace", p, seed=1, samples=400).measure(p.w0, 0)
    # the estimator's variance is 2 Σ_{i≠j} H_ij² / k: the reported error must match it, and the estimate lie
    # within 4 of them of the dense trace
    off = H - torch.diag(torch.diag(H))
    assert out["hessian_trace_se"] == pytest.approx(float((2 * (off ** 2).sum() / 400).sqrt()), rel=0.25)
    assert abs(out["hessian_trace"] - dense) <= 4 * out["hessian_trace_se"] + 1e-12 * abs(dense)


def test_measurement_in_a_run_resume_and_sweep(tmp_path, killed_at_gd_step):
    p = rodflow.problems.make("reference-mlp", n=32)
    kw = dict(lr=0.2, steps=12, methods=["gd", "rod_flow"], sharpness_every=0,
              measurements={"hessian_trace": {"every": 4, "samples": 16}}, progress=False)
    whole = rodflow.simulate(p, **kw)
    gd = whole.method("gd")
    assert list(gd["hessian_trace"].dropna().index) == [0, 4, 8, 12]
    assert (gd["hessian_trace_hvps"].dropna() == 16).all() and (gd["hvps"] == 0).all()  # not the model's cost
    # a run killed at step 7 (checkpoint at 4) resumes to the same measurements
    with killed_at_gd_step(7):
        rodflow.simulate(p, **kw, out=tmp_path / "a", checkpoint_every=4)
    again = rodflow.resume(tmp_path / "a", progress=False)
    for m in ("gd", "rod_flow"):
        np.testing.assert_array_equal(again.method(m)["hessian_trace"], whole.method(m)["hessian_trace"])
    from rodflow import sweep as sw

    sweep = sw.expand({"name": "m", "problem": "quadratic", "lr": 0.1, "steps": 4, "methods": "gd",
                       "sharpness_every": 0, "measurements": {"hessian_trace": {"samples": 4}},
                       "grid": {"measurements.hessian_trace.every": [1, 2]}})
    assert [r.simulate_kwargs()["measurements"] for r in sweep.runs] == [
        {"hessian_trace": {"samples": 4, "every": 1}}, {"hessian_trace": {"samples": 4, "every": 2}}]


def test_bad_measurement_input_is_a_one_line_error():
    p = rodflow.problems.make("quadratic")
    for spec, match in (({"hessian_trce": {}}, "unknown measurement 'hessian_trce'"),
                        ({"hessian_trace": {"sampels": 3}}, "did you mean 'samples'"),
                        ({"hessian_trace": {"samples": 1}}, "samples must be an integer >= 2"),
                        ({"hessian_trace": {"every": 0}}, "hessian_trace every must be an integer >= 1"),
                        ({"hessian_trace": 3}, "options must be a mapping")):
        with pytest.raises(RodflowError, match=match) as info:
            rodflow.simulate(p, lr=0.1, steps=2, methods=["gd"], measurements=spec, progress=False)
        assert "\n" not in str(info.value)


def test_cli_measure_flag(tmp_path, monkeypatch, capsys):
    from rodflow.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["run", "--problem", "quadratic", "--steps", "4", "--methods", "gd", "--no-progress", "--no-plots",
              "--measure", "hessian_trace.every=2", "--measure", "hessian_trace.samples=4", "--out", "r"])
    assert info.value.code == 0, capsys.readouterr().err
    r = rodflow.load(tmp_path / "r")
    assert r.config["measurements"] == {"hessian_trace": {"every": 2, "samples": 4}}
    assert list(r.method("gd")["hessian_trace"].dropna()) == pytest.approx([17.0] * 3)
