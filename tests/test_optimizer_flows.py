"""One update rule drives GD and every flow: stable flows, the rod of the optimizer's map, thresholds, resume,
a new optimizer in a few lines, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import rodflow
from rodflow import optimizers, processes, problems
from rodflow.errors import RodflowError
from rodflow.optimizers.base import UpdateRule
from rodflow.rod_theory import map_rod_growth

STATEFUL = [("momentum", {}), ("nesterov", {"beta": 0.8}), ("rmsprop", {}), ("rmsprop", {"scalar": True}),
            ("adam", {}), ("adam", {"bias_correction": False}), ("nadam", {})]


def _problem(d=4):
    scales = torch.linspace(0.5, 3.0, d, dtype=torch.float64)

    def loss(w):
        return 0.5 * (scales * w * w).sum() + 0.1 * (w**4).sum()

    return rodflow.Problem.from_loss(loss, torch.linspace(1.0, -0.8, d, dtype=torch.float64), name="anisotropic")


def _run(problem, lr, steps, name, params, methods=("gd", "gradient_flow", "rod_flow"), options=None):
    rule = optimizers.make(name, **params)
    procs = {m: processes.make(m, problem, lr, optimizer=rule, **(options or {}).get(m, {})) for m in methods}
    for p in procs.values():
        p.start(problem.w0)
    for _ in range(steps):
        for p in procs.values():
            p.advance()
    return procs


@pytest.mark.parametrize("fast_state,convention,bound", [("ode", "centred", 0.003), ("ode", "post-update", 0.02),
                                                         ("slaved", "centred", 0.04)])
@pytest.mark.parametrize("name,params", STATEFUL)
def test_stable_flow_is_the_continuous_limit_of_the_optimizer(name, params, fast_state, convention, bound):
    if fast_state == "slaved" and name == "rmsprop":
        pytest.skip("RMSProp has no momentum to slave (a one-line error, tested below)")
    """At a fixed horizon η·steps, the stable flow's distance to GD (relative to the path length) shrinks with η:
    the flow is the optimizer's continuous limit, not merely close to it — down to the floor of the moments'
    continuous convention, which does not depend on η (measured: 1e-4 for Adam without bias correction, whose
    moments start at 0 and stay in their transient all along this horizon). The centred state (default) is 3–20×
    closer than the post-update one (measured at η = 2e-3: ≤ 0.09% vs ≤ 0.6%); slaved momentum is off by the
    momentum's start-up transient, O(η) of the path (0.2–1.6%)."""
    problem = _problem()
    horizon = 1.0
    errors = []
    for lr in (4e-3, 2e-3):
        steps = int(horizon / lr)
        procs = _run(problem, lr, steps, name, params, methods=("gd", "gradient_flow"),
                     options={"gradient_flow": {"fast_state": fast_state, "state_convention": convention}})
        w_gd, w_flow = procs["gd"].point(), procs["gradient_flow"].point()
        errors.append(float((w_gd - w_flow).norm() / (w_gd - problem.w0).norm()))
    if fast_state == "slaved" and name == "adam" and not params.get("bias_correction", True):
        pytest.skip("slaving m = g is not Adam's limit while ν is in its transient and m has no bias correction")
    assert errors[1] < bound, errors
    assert errors[1] / errors[0] < 0.8 or errors[1] < 3e-4, errors


def _rod_growth(name, params, lam, tau):
    return map_rod_growth(optimizers.make(name, **params), lam, 0.1, tau)


@pytest.mark.parametrize("name,params", [("momentum", {}), ("momentum", {"beta": 0.5}),
                                         ("nesterov", {}), ("rmsprop", {"alpha": 0.9}),
                                         ("adam", {}), ("adam", {"beta1": 0.5}), ("nadam", {})])
def test_rod_growth_rate_changes_sign_at_the_optimizer_threshold(name, params):
    """The rod opens exactly where GD's step map gets a period-2 multiplier −1: at the optimizer's own
    threshold on λ_max(P⁻¹H) (heavy ball 2(1+β)/η, Nesterov 2(1+β)/((1+2β)η), Adam (2+2β₁)/((1−β₁)η), ...)."""
    tau = 5000.0
    _, lam_star = _rod_growth(name, params, 1.0, tau)
    below, _ = _rod_growth(name, params, 0.99 * lam_star, tau)
    above, _ = _rod_growth(name, params, 1.01 * lam_star, tau)
    assert below < 0 < above, (below, above, lam_star)


@pytest.mark.parametrize("name,params", [("momentum", {}), ("adam", {"beta1": 0.8}), ("nadam", {})])
def test_gd_iterates_in_simulate_equal_the_rule(name, params):
    p = _problem()
    r = rodflow.simulate(p, lr=0.05, steps=20, methods=("gd",), sharpness_every=0, optimizer=name,
                         optimizer_options=params)
    rule = optimizers.make(name, **params)
    w, state = p.w0.clone(), rule.init(p.w0)
    for t in range(20):
        _, g = p.loss_grad(w)
        w, state = rule.step(w, state, g, 0.05, t + 1)
    np.testing.assert_array_equal(r.iterates["gd"][20], w.numpy())


def test_adam_run_records_thresholds_and_a_converged_preconditioned_sharpness():
    p = _problem()
    r = rodflow.simulate(p, lr=0.02, steps=12, methods=("gd", "gradient_flow", "rod_flow"), optimizer="adam",
                         sharpness_every=4)
    m = r.metrics
    assert {"threshold", "preconditioned_sharpness", "pre_eig_converged"} <= set(m.columns)
    assert (r.summary()["status"] == "ok").all()
    gd = m[(m.method == "gd") & (m.step == 8)].iloc[0]
    # threshold (2 + 2β₁)(1 − β₁⁹)/((1 − β₁)η): the step from w_8 is Adam's 9th
    assert gd.threshold == pytest.approx(3.8 * (1 - 0.9**9) / (0.1 * 0.02), rel=1e-12)
    # λ_max(P^{-1/2} H P^{-1/2}) against a dense eigensolve with P rebuilt from the rule
    rule = optimizers.make("adam")
    w, state = p.w0.clone(), rule.init(p.w0)
    for t in range(9):
        _, g = p.loss_grad(w)
        new = rule.update_state(state, g, t + 1)
        if t < 8:
            w, state = w + rule.increment(new, g, 0.02, t + 1), new
    np.testing.assert_allclose(r.iterates["gd"][8], w.numpy(), rtol=1e-13)
    H = torch.stack([p.hvp(w, e) for e in torch.eye(4, dtype=torch.float64)])
    s = rule.preconditioner(new, 9).rsqrt()
    dense = float(torch.linalg.eigvalsh(s[:, None] * H * s[None, :]).max())
    assert gd.preconditioned_sharpness == pytest.approx(dense, rel=1e-6)
    assert m[m.step % 4 == 0].preconditioned_sharpness.notna().all()


@pytest.mark.parametrize("problem,kw", [
    (("quadratic", {}), dict(lr=0.05, methods=("gd", "gradient_flow", "rod_flow"), optimizer="nadam",
                             optimizer_options={"beta1": 0.8})),
    # the central flow of Adam at its adaptive edge (state, step count, SDCP warm start in the checkpoint)
    (("quartic", {"S": 12.0, "Q": 1.0, "w0": 0.01}), dict(lr=0.01, methods=("gd", "central_flow"), optimizer="adam",
                                                         optimizer_options={"beta2": 0.99})),
])
def test_resume_with_optimizer_state_is_bit_identical(tmp_path, killed_at_gd_step, problem, kw):
    p = problems.make(problem[0], **problem[1])
    kw = dict(kw, steps=40, sharpness_every=5)
    full = rodflow.simulate(p, **kw)
    with killed_at_gd_step(27):
        rodflow.simulate(p, **kw, out=tmp_path / "run", checkpoint_every=10)
    resumed = rodflow.resume(tmp_path / "run")
    timing = [c for c in full.metrics.columns if c.endswith("wall_s")]
    pd.testing.assert_frame_equal(resumed.metrics.drop(columns=timing), full.metrics.drop(columns=timing))
    for m in full.methods:
        np.testing.assert_array_equal(resumed.iterates[m], full.iterates[m])


@dataclasses.dataclass(frozen=True)
class _EMAGradient(UpdateRule):
    """A test rule: s ← a s + (1 − a) g, w ← w − η s."""

    name = "ema-gradient"
    a: float = 0.5

    def init(self, w):
        return {"s": torch.zeros_like(w)}

    def update_state(self, state, g, step):
        return {"s": self.a * state["s"] + (1 - self.a) * g}

    def increment(self, state, g, lr, step):
        return -lr * state["s"]

    def dstate_dt(self, state, g, step, keys):
        return {"s": (1 - self.a) * (g - state["s"]) / self.a}


@pytest.fixture
def ema_rule():
    optimizers.register("ema-gradient")(_EMAGradient)
    yield
    optimizers.REGISTRY._items.pop("ema-gradient")


def test_a_new_optimizer_in_a_few_lines_gets_gd_and_the_flows(ema_rule):
    p = _problem()
    r = rodflow.simulate(p, lr=0.01, steps=50, methods=("gd", "gradient_flow", "rod_flow", "central_flow"),
                         optimizer="ema-gradient", optimizer_options={"a": 0.3})
    assert (r.summary()["status"] == "ok").all()
    w, s = p.w0.clone(), torch.zeros(4, dtype=torch.float64)
    for _ in range(50):
        _, g = p.loss_grad(w)
        s = 0.3 * s + 0.7 * g
        w = w - 0.01 * s
    np.testing.assert_allclose(r.iterates["gd"][50], w.numpy(), rtol=1e-14)
    m = r.metrics.set_index(["method", "step"])
    path = float(np.linalg.norm(r.iterates["gd"][50] - p.w0.numpy()))
    assert m.loc[("gradient_flow", 50), "dist_gd"] < 0.05 * path
    assert m.loc[("rod_flow", 50), "dist_gd_mid"] < 0.05 * path
    assert m.loc[("central_flow", 50), "dist_gd"] < 0.05 * path


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="adamw"), "unknown optimizer 'adamw' \\(did you mean 'adam'\\?\\)"),
    (dict(optimizer="adam", optimizer_options={"beta": 0.9}), "has no parameter 'beta'"),
    (dict(optimizer="momentum", optimizer_options={"beta": 1.0}), "beta must be a number in \\[0, 1\\)"),
    (dict(optimizer="adam", optimizer_options={"eps": 0}), "eps must be a finite number > 0"),
    (dict(optimizer="adam", optimizer_options={"beta1": 0.0},
          options={"gradient_flow": {"state_convention": "post-update", "fast_state": "ode"}}), None),
    (dict(optimizer="rmsprop", options={"gradient_flow": {"fast_state": "slaved"}}), "has none \\(drop the option\\)"),
    (dict(options={"gradient_flow": {"state_convention": "post-update"}}), "applies to optimizers with a state"),
    (dict(methods=("gd", "rod_flow"), options={"rod_flow": {"rod_state": "none"}}), "plain GD has none"),
    (dict(optimizer="rmsprop", methods=("gd", "rod_flow"), options={"rod_flow": {"rod_state": "none"}}),
     "has none \\(drop the option\\)"),
    (dict(optimizer="adam", optimizer_options={1: 0.5}), "keys must be option names"),
    (dict(options={"gradient_flow": {"state_convention": "pre"}}), "state_convention must be one of centred"),
    (dict(options={"gradient_flow": {"fast_state": "fast"}}), "fast_state must be one of slaved, ode"),
    (dict(optimizer="adam", methods=("gd", "rod_flow"), options={"rod_flow": {"rate": "gd-multiplier"}}),
     "rate='gd-multiplier' models plain GD"),
    (dict(optimizer="adam", methods=("gd", "rod_flow"), options={"rod_flow": {"correction": "full"}}),
     "correction='full' models plain GD"),
    (dict(optimizer="adam", methods=("gd", "rod_flow"), options={"rod_flow": {"correction": "both"}}),
     "correction='both' models plain GD"),
    (dict(options={"gd": {"optimizer": "momentum"}}), "gd.optimizer is now the run's optimizer.*--optimizer"),
    (dict(optimizer_options=[1]), "optimizer_options must map"),
    (dict(methods=("gd", "rod_flow"), options={"rod_flow": {"rod_state": "all"}}), "rod_state must be one of"),
])
def test_bad_optimizer_input_is_a_one_line_error_before_any_work(kwargs, match):
    p = problems.make("quadratic")
    before = p.counts.grad_evals
    call = dict(lr=0.1, steps=3)
    call.update(kwargs)
    if match is None:  # accepted (no memory at β₁ = 0: nothing to integrate, so no error)
        rodflow.simulate(p, **call)
        return
    with pytest.raises(RodflowError, match=match) as info:
        rodflow.simulate(p, **call)
    assert "\n" not in str(info.value)
    assert p.counts.grad_evals == before


def test_cli_optimizer_flags(tmp_path):
    from typer.testing import CliRunner

    from rodflow.cli import app

    res = CliRunner().invoke(app, ["run", "--problem", "quadratic", "--lr", "0.05", "--steps", "10", "--methods",
                                   "gd,gradient_flow,central_flow,rod_flow", "--optimizer", "adam", "--optimizer-opt",
                                   "beta1=0.8", "--out", str(tmp_path / "r"), "--no-progress", "--no-plots"])
    assert res.exit_code == 0, res.output
    run = rodflow.load(tmp_path / "r")
    assert run.config["optimizer"] == "adam" and run.config["optimizer_options"] == {"beta1": 0.8}
    assert (run.summary()["status"] == "ok").all() and "central_flow" in res.output


@pytest.mark.parametrize("name,params,lr", [("momentum", {"beta": 0.9}, 0.35), ("momentum", {"beta": 0.5}, 0.26),
                                            ("nesterov", {"beta": 0.5}, 0.13)])
def test_quartic_self_stabilization_under_momentum(name, params, lr):
    """L = (S/2)w² − (Q/4)w⁴ above the optimizer's threshold: GD settles on the period-2 orbit and the rod on its
    fixed point, both at δ*² = (S − threshold)/Q, where the secant sharpness sits exactly at the threshold."""
    S, Q = 12.0, 1.0
    p = problems.make("quartic", S=S, Q=Q, w0=0.01)
    r = rodflow.simulate(p, lr=lr, steps=1200, methods=("gd", "rod_flow"), optimizer=name, optimizer_options=params,
                         sharpness_every=0)
    rule = optimizers.make(name, **params)
    thr = rule.threshold({}, lr, 1)
    assert thr < S
    star = ((S - thr) / Q) ** 0.5
    np.testing.assert_allclose(np.abs(r.iterates["gd"][-4:, 0]), star, rtol=1e-8)
    rod = r.metrics[r.metrics.method == "rod_flow"].iloc[-1]
    assert rod.rod_length == pytest.approx(star, rel=1e-6)
    assert rod.secant_sharpness == pytest.approx(thr, rel=1e-6)
    assert rod.threshold == pytest.approx(thr, rel=1e-12)


@pytest.mark.parametrize("name,params,tol", [("adam", {"beta2": 0.99}, 0.03), ("nadam", {"beta2": 0.99}, 0.03),
                                             ("rmsprop", {}, 0.03)])
def test_quartic_adaptive_edge_of_stability(name, params, tol):
    """Adaptive optimizers on the quartic: the rod hovers where its preconditioned sharpness sits at the
    optimizer's threshold (38/η for Adam), the adaptive edge of stability (Adam's rod does not settle on a fixed
    point: its samples spread ±4% around the threshold, so the mean over the last 300 steps is compared); GD
    hovers there too."""
    p = problems.make("quartic", S=12.0, Q=1.0, w0=0.01)
    r = rodflow.simulate(p, lr=0.01, steps=1500, methods=("gd", "rod_flow"), optimizer=name, optimizer_options=params,
                         sharpness_every=10)
    m = r.metrics
    rod = m[(m.method == "rod_flow") & m.preconditioned_sharpness.notna() & (m.step > 1200)]
    assert (rod.preconditioned_sharpness / rod.threshold).mean() == pytest.approx(1.0, abs=tol)
    gd = m[(m.method == "gd") & m.preconditioned_sharpness.notna() & (m.step > 1000)]
    ratio = gd.preconditioned_sharpness / gd.threshold
    assert 0.8 < ratio.mean() < 1.05


@pytest.mark.parametrize("name,params", [("momentum", {}), ("adam", {}), ("nadam", {}), ("rmsprop", {})])
def test_map_correction_jvp_matches_finite_differences(name, params):
    """The rod's centre correction needs (J_Φ u) along (x, aux, step count): HVP + forward-mode JVP of the rule."""
    p = _problem()
    rod = processes.make("rod_flow", p, 0.05, optimizer=optimizers.make(name, **params), correction=True)
    rod.start(p.w0)
    for _ in range(3):
        rod.advance()
    x, _, aux = rod._split_map(rod.y)
    gen = torch.Generator().manual_seed(0)
    u_x = torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.abs().mean()
    u_aux = torch.rand(aux.shape, generator=gen, dtype=torch.float64) * aux.abs()
    jvp = rod._map_jvp(x, aux, u_x, u_aux)
    eps = 1e-6
    plus, _ = rod._phi(x + eps * u_x, aux + eps * u_aux)
    minus, _ = rod._phi(x - eps * u_x, aux - eps * u_aux)
    np.testing.assert_allclose(jvp.numpy(), ((plus - minus) / (2 * eps)).numpy(), rtol=1e-6, atol=1e-9)


def test_map_correction_makes_the_rod_second_order_for_small_steps():
    """Against GD's midpoints at a fixed horizon, the corrected rod's error falls like η² (uncorrected: like η)."""
    problem = _problem()
    errors = {}
    for correction in (False, True):
        errs = []
        for lr in (8e-3, 4e-3):
            procs = _run(problem, lr, int(1.0 / lr), "momentum", {}, methods=("gd", "rod_flow"),
                         options={"rod_flow": {"correction": correction}})
            mid = procs["gd"].midpoint()
            errs.append(float((procs["rod_flow"].point() - mid).norm() / (mid - problem.w0).norm()))
        errors[correction] = errs
    assert errors[True][1] < 0.5 * errors[False][1], errors
    assert errors[True][1] / errors[True][0] < 0.35, errors


def test_adam_run_figures_show_the_preconditioned_sharpness_against_the_threshold(tmp_path):
    from rodflow import panels
    from rodflow.plotting import plot_run

    p = problems.make("quadratic")
    r = rodflow.simulate(p, lr=0.01, steps=8, methods=("gd", "rod_flow"), optimizer="adam", sharpness_every=2,
                         out=tmp_path / "r")
    names = {path.stem for path in plot_run(r)}
    assert {"sharpness", "preconditioned", "distance"} <= names
    assert panels.preconditioned(r, None)
    plain = rodflow.simulate(p, lr=0.01, steps=4, methods=("gd",), optimizer="momentum", sharpness_every=2)
    assert not panels.preconditioned(plain, None)  # heavy ball: its threshold is on the sharpness itself
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    panels.eigenvalues(plain, ax)
    (line,) = [ln for ln in ax.lines if ln.get_label() == "threshold"]
    assert np.allclose(line.get_ydata(), 2 * 1.9 / 0.01)
    plt.close(fig)


@pytest.mark.parametrize("name,params,keys", [("momentum", {"beta": 0.0}, ()), ("adam", {"beta1": 0.0}, ("v",))])
def test_a_rule_without_memory_gives_the_stateless_flow(name, params, keys):
    """Heavy ball at β = 0 is plain GD, Adam at β₁ = 0 has m = g: entries without memory are taken from the update,
    not integrated, so heavy ball's flow is plain gradient flow (same integrator and tolerances) and Adam's
    integrates ν alone."""
    p = _problem()
    same = {"integrator": "dopri", "rtol": 1e-9, "atol": 1e-12}
    r = rodflow.simulate(p, lr=0.01, steps=30, methods=("gd", "gradient_flow"), optimizer=name,
                         optimizer_options=params, sharpness_every=0, options={"gradient_flow": same})
    flow = processes.make("gradient_flow", p, 0.01, optimizer=optimizers.make(name, **params))
    assert flow.keys == keys
    if name == "momentum":
        plain = rodflow.simulate(p, lr=0.01, steps=30, methods=("gd", "gradient_flow"), sharpness_every=0,
                                 options={"gradient_flow": same})
        np.testing.assert_allclose(r.iterates["gradient_flow"], plain.iterates["gradient_flow"], rtol=1e-7)
    path = np.linalg.norm(r.iterates["gd"][-1] - r.iterates["gd"][0])
    assert r.metrics.dist_gd.max() < 0.02 * path


def test_rule_objects_keep_their_options_and_numpy_values_are_numbers():
    p = problems.make("quadratic")
    r = rodflow.simulate(p, lr=0.01, steps=3, methods=("gd",), optimizer=optimizers.make("nesterov", beta=0.1))
    assert r.config["optimizer"] == "nesterov" and r.config["optimizer_options"] == {"beta": 0.1}
    named = rodflow.simulate(p, lr=0.01, steps=3, methods=("gd",), optimizer="nesterov",
                             optimizer_options={"beta": 0.1})
    np.testing.assert_array_equal(r.iterates["gd"], named.iterates["gd"])
    with pytest.raises(RodflowError, match="not both"):
        rodflow.simulate(p, lr=0.01, steps=3, optimizer=optimizers.make("adam"), optimizer_options={"beta1": 0.5})
    r32 = rodflow.simulate(p, lr=0.01, steps=3, methods=("gd",), optimizer="adam",
                           optimizer_options={"beta1": np.float32(0.5), "eps": np.int64(1)})
    assert r32.config["optimizer_options"] == {"beta1": 0.5, "eps": 1.0}


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam", "nadam"])
def test_flows_that_integrate_momentum_default_to_dormand_prince(name):
    p = _problem()
    rule = optimizers.make(name)
    assert rule.fast
    assert processes.make("gradient_flow", p, 0.01, optimizer=rule).integrator == "dopri"
    assert processes.make("rod_flow", p, 0.01, optimizer=rule).integrator == "dopri"
    slaved = processes.make("gradient_flow", p, 0.01, optimizer=rule, fast_state="slaved")
    assert not set(slaved.keys) & set(rule.fast)
    assert processes.make("gradient_flow", p, 0.01, optimizer=optimizers.make("rmsprop")).integrator == "srk4"


@pytest.mark.parametrize("args,match", [
    (["run", "--problem", "quadratic", "--lr", "abc"], "Invalid value for '--lr'"),
    (["run", "--problem", "quadratic", "--optimizer"], "requires an argument"),
    (["run", "--bogus", "1"], "No such option: --bogus"),
    (["nonsense"], "No such command"),
    (["run", "--problem", "quadratic", "--steps", "2", "--optimizer", ""], "unknown optimizer ''"),
])
def test_cli_usage_errors_are_one_line(args, match, capsys, tmp_path, monkeypatch):
    from rodflow.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_resume_refuses_every_run_setting_flag(tmp_path, capsys):
    from rodflow.cli import main

    out = str(tmp_path / "r")
    with pytest.raises(SystemExit) as info:
        main(["run", "--problem", "quadratic", "--steps", "3", "--optimizer", "momentum", "--out", out,
              "--no-progress", "--no-plots"])
    assert info.value.code == 0
    capsys.readouterr()
    for flags in (["--methods", "gd"], ["--seed", "3"], ["--dtype", "float32"], ["--gfs-every", "1"],
                  ["--measure", "hessian_trace.every=1"], ["--reference", "gd"], ["--checkpoint-every", "5"]):
        with pytest.raises(SystemExit) as info:
            main(["run", "--resume", out, *flags])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"drop {flags[0]}" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:  # where and how to run stays allowed
        main(["run", "--resume", out, "--threads", "1", "--no-progress", "--no-plots"])
    assert info.value.code == 0
