"""Central flow for update rules other than plain GD (processes/central_state.py): below the edge it is the rule's
stable flow; at the adaptive edge it holds λ_max(P⁻¹H) at the rule's threshold and predicts GD's time-averaged
loss and squared gradient; bad input (resume: test_optimizer_flows.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rodflow
from rodflow import problems
from rodflow.errors import RodflowError
from rodflow.linalg.sdcp import apply_operator, gram_operator, psd_operator


def _problem(d=4):
    scales = torch.linspace(0.5, 3.0, d, dtype=torch.float64)

    def loss(w):
        return 0.5 * (scales * w * w).sum() + 0.1 * (w**4).sum()

    return rodflow.Problem.from_loss(loss, torch.linspace(1.0, -0.8, d, dtype=torch.float64), name="anisotropic")


@pytest.mark.parametrize("name,params", [("momentum", {}), ("nesterov", {"beta": 0.8}), ("rmsprop", {}),
                                         ("rmsprop", {"scalar": True}), ("adam", {}), ("nadam", {})])
def test_below_the_edge_central_flow_is_the_continuous_limit(name, params):
    """Nothing is critical at small steps: the central flow is the rule's stable flow (momentum integrated), and
    at a fixed horizon η·steps = 1 its distance to GD is first order in η (halves with η; measured 2e-5 to 5e-3
    of the path at η = 0.004, within 7x of gradient flow's)."""
    p = _problem()
    dist = []
    for lr in (0.004, 0.002):
        steps = round(1 / lr)
        r = rodflow.simulate(p, lr=lr, steps=steps, methods=("gd", "central_flow"), optimizer=name,
                             optimizer_options=params, sharpness_every=0)
        m = r.metrics.set_index(["method", "step"])
        assert (m.loc["central_flow"].n_critical == 0).all()
        assert (m.loc["central_flow"].loss_pred == m.loc["central_flow"].loss).all()
        path = float(np.linalg.norm(r.iterates["gd"][steps] - p.w0.numpy()))
        dist.append(m.loc[("central_flow", steps), "dist_gd"] / path)
    assert dist[0] < 0.01
    assert dist[1] < 0.7 * dist[0]


@pytest.mark.parametrize("name,params,dtype", [("rmsprop", {"alpha": 0.9}, "float64"),
                                               ("rmsprop", {"alpha": 0.9}, "float32"),
                                               ("rmsprop", {"alpha": 0.9, "scalar": True}, "float64"),
                                               ("nadam", {"beta2": 0.9}, "float64")])
def test_adaptive_edge_on_the_quartic_predicts_gd_time_averages(name, params, dtype):
    """At the quartic's minimum (S = 12 above the threshold, zero third derivative there) only the second moment
    can hold λ_max(P⁻¹H) at the threshold: the covariance term of dν/dt sets Σ, and with it the predicted loss
    ½⟨Σ, H⟩ and squared gradient ‖g‖² + tr(HΣH), which match GD's time averages once GD oscillates steadily
    around 0 (measured within 4e-4 over steps 200-300, float32 as float64; Adam's GD runs a cycle instead and is not
    compared)."""
    p = problems.make("quartic", S=12.0, Q=1.0, w0=0.01, dtype=dtype)
    r = rodflow.simulate(p, lr=0.01, steps=300, methods=("gd", "central_flow"), optimizer=name,
                         optimizer_options=params, sharpness_every=0, dtype=dtype)
    assert r.iterates["central_flow"].dtype == np.dtype(dtype)
    m = r.metrics
    gd = m[(m.method == "gd") & (m.step > 200)]
    cf = m[(m.method == "central_flow") & (m.step > 200)]
    assert (cf.n_critical == 1).all()
    ratio = cf.tracked_sharpness / cf.threshold
    assert ratio.max() < 1 + 1e-4 and ratio.min() > 0.975
    assert cf.loss_pred.mean() == pytest.approx(gd.loss.mean(), rel=0.005)
    assert cf.grad_sq_pred.mean() == pytest.approx((gd.grad_norm**2).mean(), rel=0.005)
    assert gd.loss.mean() > 1e-5  # GD does oscillate: the prediction is not 0 = 0


def test_without_the_second_moment_term_the_adaptive_edge_is_lost(monkeypatch):
    """The covariance term of dν/dt is what holds the edge at the quartic's minimum: without it the SDCP has no
    lever there (a one-line failure of that step), so the term is not decoration."""
    from rodflow.processes import central_state

    monkeypatch.setattr(central_state.RuleState, "curvature",
                        lambda self, n, a, b, like: {k: torch.zeros_like(v) for k, v in like.items()})
    p = problems.make("quartic", S=12.0, Q=1.0, w0=0.01)
    r = rodflow.simulate(p, lr=0.01, steps=30, methods=("gd", "central_flow"), optimizer="rmsprop",
                         optimizer_options={"alpha": 0.9}, sharpness_every=0)
    status = r.summary().set_index("method").loc["central_flow", "status"]
    assert status.startswith("failed")


def test_central_flow_records_the_rule_threshold_and_preconditioner():
    p = problems.make("quartic", S=12.0, Q=1.0, w0=0.01)
    r = rodflow.simulate(p, lr=0.01, steps=20, methods=("gd", "central_flow"), optimizer="rmsprop",
                         sharpness_every=5)
    cf = r.metrics[r.metrics.method == "central_flow"]
    assert (cf.threshold == 200.0).all()
    sampled = cf[cf.preconditioned_sharpness.notna()]
    assert len(sampled) == 5
    np.testing.assert_allclose(sampled.preconditioned_sharpness, sampled.tracked_sharpness, rtol=1e-5)


def test_psd_operator_keeps_a_gram_operator_and_cuts_a_negative_direction():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((3, 3, 7))
    G = G + G.transpose(1, 0, 2)
    B = gram_operator(G, 0.5)
    np.testing.assert_allclose(psd_operator(B), B, atol=1e-12)
    X = np.eye(3)
    bad = B - 10.0 * np.einsum("ij,kl->ijkl", X, X)  # strongly negative along X = I
    fixed = psd_operator(bad)
    assert np.sum(X * apply_operator(fixed, X)) >= -1e-9


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="rmsprop", optimizer_options={"alpha": 0.0}), "needs the memory of optimizer 'rmsprop'"),
    (dict(optimizer="rmsprop", options={"central_flow": {"momentum": "slaved"}}), "has none \\(drop the option\\)"),
    (dict(optimizer="adam", options={"central_flow": {"momentum": "fast"}}), "momentum must be one of ode, slaved"),
    (dict(optimizer="momentum", options={"central_flow": {"momentum": "slaved", "state_convention": "post-update"}}),
     "has none here \\(drop the option\\)"),
    (dict(options={"central_flow": {"state_convention": "post-update"}}), "optimizer 'gd' has none"),
])
def test_bad_central_flow_options_are_one_line_errors(kwargs, match):
    with pytest.raises(RodflowError, match=match):
        rodflow.simulate(_problem(), lr=0.01, steps=3, methods=("gd", "central_flow"), **kwargs)


def test_a_coordinate_the_loss_barely_feels_does_not_break_the_preconditioned_central_flow():
    """Adam's start-up puts the flow far above its (bias-corrected) threshold, with several critical directions,
    while a coordinate the loss barely feels keeps ν ≈ 0 (P ≈ ε): the SDCP's differences must keep ν >= 0 there
    (a central difference took √ of a negative number and failed the run at step 0, on mlp-digits)."""
    def loss(w):
        return 6.0 * w[0] ** 2 - 0.25 * w[0] ** 4 + 3.0 * w[1] ** 2 + 1e-12 * w[0] * w[2]

    p = rodflow.Problem.from_loss(loss, torch.tensor([0.01, 0.02, 0.5], dtype=torch.float64), name="dead")
    r = rodflow.simulate(p, lr=0.01, steps=200, methods=("gd", "central_flow"), optimizer="adam",
                         optimizer_options={"beta2": 0.9}, sharpness_every=0, options={"central_flow": {"neigs": 2}})
    assert (r.summary()["status"] == "ok").all()
    cf = r.metrics[r.metrics.method == "central_flow"]
    assert np.isfinite(cf.loss_pred).all() and (cf.n_critical >= 1).any()
    assert abs(r.iterates["central_flow"][-1][2] - 0.5) < 0.1


def test_more_critical_directions_than_max_k_at_adams_start_are_capped_not_fatal():
    """Started next to a minimum, Adam's early (bias-corrected) threshold is far below λ_max(P⁻¹H) in all four
    directions: with max_k = 2 the flow constrains the top two and counts the substeps (critical_capped) instead
    of failing; with max_k = 8 all four are constrained and nothing is capped."""
    scales = torch.linspace(0.5, 3.0, 4, dtype=torch.float64)

    def loss(w):
        return 0.5 * (scales * w * w).sum() + 0.1 * (w**4).sum() + 0.05 * (w**3).sum()

    p = rodflow.Problem.from_loss(loss, 1e-3 * torch.linspace(1.0, -0.8, 4, dtype=torch.float64), name="near")
    for max_k, capped, critical in ((2, True, 2), (8, False, 4)):
        r = rodflow.simulate(p, lr=0.01, steps=10, methods=("gd", "central_flow"), optimizer="adam",
                             sharpness_every=0, options={"central_flow": {"max_k": max_k}})
        assert (r.summary()["status"] == "ok").all()
        cf = r.metrics[r.metrics.method == "central_flow"].set_index("step")
        assert (cf.loc[0, "critical_capped"] > 0) == capped
        assert cf.loc[0, "n_critical"] == critical
        assert (cf.loc[5:, "critical_capped"] == 0).all()


def test_far_below_the_edge_one_eigensolve_per_step_and_the_same_trajectory(monkeypatch):
    """Below half the threshold at a step's first substep the other substeps skip the eigensolve: the flow is
    bit-for-bit the same (nothing is critical either way) for about a quarter of the HVPs."""
    from rodflow.processes import central_flow

    p = _problem()
    kw = dict(lr=0.004, steps=60, methods=("gd", "central_flow"), optimizer="adam", sharpness_every=0)
    fast = rodflow.simulate(p, **kw)
    monkeypatch.setattr(central_flow, "SKIP_FRACTION", 0.0)
    every = rodflow.simulate(p, **kw)
    np.testing.assert_array_equal(fast.iterates["central_flow"], every.iterates["central_flow"])
    hvps = [r.summary().set_index("method").loc["central_flow", "hvps"] for r in (fast, every)]
    assert hvps[0] < 0.4 * hvps[1]
