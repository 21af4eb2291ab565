"""Central flow on toys: the edge is held, several eigenvalues at once, closed forms, resume, costs, errors."""

import math

import numpy as np
import pytest
import torch

import rodflow
from rodflow import Problem, RodflowError, problems
from rodflow.processes import make


def two_copies(alphas=(1.0, 0.5), w0=(0.3, 19.0, 0.3, 19.5)):
    """Two self-stabilization caricatures ½ y_i x_i² − α_i y_i over w = (x1, y1, x2, y2)."""
    a1, a2 = alphas

    def loss(w):
        return 0.5 * w[1] * w[0] ** 2 - a1 * w[1] + 0.5 * w[3] * w[2] ** 2 - a2 * w[3]

    return Problem.from_loss(loss, torch.tensor(w0, dtype=torch.float64), name="two-copies")


def run(proc, w0, steps):
    proc.start(w0)
    obs = [proc.observe()]
    for _ in range(steps):
        proc.advance()
        obs.append(proc.observe())
    return obs


def test_self_stabilization_edge_is_held_while_gradient_flow_sharpens():
    lr = 0.5  # 2/η = 4; the sharpness y starts at 2 and rises
    p = problems.make("self-stabilization")
    r = rodflow.simulate(p, lr, steps=40, methods=("gd", "gradient_flow", "central_flow"), progress=False)
    cf, gf = r.method("central_flow"), r.method("gradient_flow")
    assert cf["sharpness"].max() <= (2 / lr) * (1 + 1e-3)
    assert cf["sharpness"].iloc[-1] == pytest.approx(2 / lr, rel=1e-3)
    assert gf["sharpness"].iloc[-1] > 2 * (2 / lr)
    # before the edge the flow is plain gradient flow (X = 0), after it Σ > 0 and the prediction exceeds L
    assert cf["trace_sigma"].iloc[0] == 0 and cf["trace_sigma"].iloc[-1] > 0
    assert (cf["loss_pred"] >= cf["loss"] - 1e-15).all()
    # the third derivative is counted: k(k+1)/2 = 1 product per substep once an eigenvalue is critical
    assert set(cf["d3"].iloc[-10:]) == {4}
    assert (cf["hvps"] > 0).all()
    assert (cf["qp_residual"].dropna() < 1e-8).all()


def test_steady_state_closed_form_and_predictions():
    """Caricature at the edge: y is held at 2/η, x → 0, so dy/dt = −η(−α + σ²/2) = 0 gives tr Σ = 2α; the
    rank-one formula σ² = 2⟨−g, ∇S⟩/‖∇S‖² gives the same value."""
    alpha, lr = 0.7, 0.25
    p = problems.make("self-stabilization", alpha=alpha, w0=[0.2, 7.5])
    proc = make("central_flow", p, lr)
    obs = run(proc, p.w0, 80)
    last = obs[-1].scalars
    assert last["trace_sigma"] == pytest.approx(2 * alpha, rel=1e-6)
    assert obs[-1].arrays["X_eigs"][0] == pytest.approx(2 * alpha, rel=1e-6)
    assert np.isnan(obs[-1].arrays["X_eigs"][1:]).all()
    w = obs[-1].point
    g = p.grad(w)
    v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    gradS = p.third(w, v, v)
    assert 2 * float(-g @ gradS) / float(gradS @ gradS) == pytest.approx(2 * alpha, rel=1e-6)
    # predicted loss L + tr Σ/η and squared gradient norm ‖g‖² + 4 tr Σ/η²
    assert last["loss_pred"] == pytest.approx(last["loss"] + 2 * alpha / lr, rel=1e-12)
    assert last["grad_sq_pred"] == pytest.approx(last["grad_norm"] ** 2 + 4 * 2 * alpha / lr**2, rel=1e-12)


def test_two_eigenvalues_reach_the_edge_together():
    lr = 0.1  # 2/η = 20; y1, y2 start at 19 and 19.5 and rise at rates ~ η α_i: both cross near step 10
    alphas = (1.0, 0.5)
    p = two_copies(alphas)
    proc = make("central_flow", p, lr)
    obs = run(proc, p.w0, 120)
    H = p.hessian(obs[-1].point)
    eigs = torch.linalg.eigvalsh(H).flip(0)
    assert float(eigs[0]) == pytest.approx(2 / lr, rel=1e-4)
    assert float(eigs[1]) == pytest.approx(2 / lr, rel=1e-4)
    last = obs[-1]
    assert last.scalars["n_critical"] == 2
    assert last.scalars["k_tracked"] >= 3  # grew past the two critical ones
    xe = last.arrays["X_eigs"]
    assert np.count_nonzero(xe[~np.isnan(xe)] > 1e-6) == 2  # Σ has rank 2
    assert sorted(xe[:2]) == pytest.approx(sorted(2 * a for a in alphas), rel=1e-5)
    assert last.scalars["trace_sigma"] == pytest.approx(2 * sum(alphas), rel=1e-5)
    assert last.scalars["qp_residual"] < 1e-8
    # the edge was never overshot along the way (the constraint is linearised one substep ahead)
    for o in obs:
        w = o.point
        assert float(torch.linalg.eigvalsh(p.hessian(w))[-1]) <= (2 / lr) * (1 + 1e-3)
    # the tracked eigenvalues are the Hessian's
    assert last.arrays["tracked_eigs"][:2] == pytest.approx(eigs[:2].numpy(), rel=1e-6)


def test_resume_is_bit_identical():
    lr = 0.1
    p = two_copies()
    a = make("central_flow", p, lr)
    full = run(a, p.w0, 30)
    b = make("central_flow", p, lr)
    run(b, p.w0, 14)
    state = {k: (np.asarray(v).copy() if isinstance(v, np.ndarray) else v) for k, v in b.state_dict().items()}
    c = make("central_flow", p, lr)
    c.load_state_dict(state)
    obs = [c.observe()]
    for _ in range(16):
        c.advance()
        obs.append(c.observe())
    for x, y in zip(full[14:], obs):
        assert torch.equal(x.point, y.point)
        for key, value in x.scalars.items():
            assert value == y.scalars[key] or (math.isnan(value) and math.isnan(y.scalars[key])), key
        for key in x.arrays:
            np.testing.assert_array_equal(x.arrays[key], y.arrays[key])


def test_simulate_resume_through_a_run_directory(tmp_path):
    p = problems.make("self-stabilization")
    kw = dict(lr=0.5, steps=30, methods=("gd", "central_flow"), progress=False)
    ref = rodflow.simulate(p, **kw)
    out = tmp_path / "run"
    rodflow.simulate(p, out=out, checkpoint_every=10, **kw)
    # drop the finished state, keep the checkpoint at step 20: resume recomputes 21..30
    (out / "status.json").write_text('{"complete": false}')
    again = rodflow.resume(out)
    np.testing.assert_array_equal(again.iterates["central_flow"], ref.iterates["central_flow"])


def test_before_the_edge_it_is_euler_gradient_flow():
    p = problems.make("quadratic", lambdas=[1.0, 3.0])
    lr = 0.2  # 2/η = 10, far above the sharpness: X = 0, w ← w − (η/4) g four times per step
    obs = run(make("central_flow", p, lr), p.w0, 5)
    w = p.w0.clone()
    lam = torch.tensor([1.0, 3.0], dtype=torch.float64)
    for o in obs:
        assert torch.equal(o.point, w)
        assert o.scalars["trace_sigma"] == 0 and o.scalars["loss_pred"] == o.scalars["loss"]
        for _ in range(4):
            w = w - 0.25 * lr * lam * w


def test_unholdable_edge_fails_with_a_reason_and_keeps_the_data():
    """On a quadratic above the threshold the third derivative is zero: no Σ can hold the edge."""
    p = problems.make("quadratic", lambdas=[1.0, 12.0])
    r = rodflow.simulate(p, 0.2, steps=5, methods=("gd", "central_flow"), progress=False)
    assert "unbounded" in r.status["central_flow"] and "failed at step 1" in r.status["central_flow"]
    cf = r.method("central_flow")
    assert len(cf) == 1 and cf["loss"].iloc[0] == pytest.approx(float(p.loss(p.w0)))


def test_bad_options():
    p = problems.make("self-stabilization")
    for opts, match in [({"substeps": 0}, "substeps"), ({"threshold": 1.5}, "threshold"),
                        ({"neigs": 0}, "neigs"), ({"max_k": 1, "neigs": 2}, "max_k"),
                        ({"sdcp_over": "all"}, "sdcp_over")]:
        with pytest.raises(RodflowError, match=match):
            make("central_flow", p, 0.5, **opts)


def test_too_many_critical_eigenvalues_is_reported():
    p = two_copies(w0=(0.0, 21.0, 0.0, 21.0))
    r = rodflow.simulate(p, 0.1, steps=2, methods=("central_flow",), options={"central_flow": {"neigs": 1, "max_k": 1}},
                         sharpness_every=0, progress=False)
    assert "max_k" in r.status["central_flow"]


def test_sdcp_over_all_tracked_eigenvectors():
    """sdcp_over="tracked" (the reference's choice) solves over every tracked eigenvector: k(k+1)/2 third
    derivatives per substep even before the edge, X = 0 while α ⪰ 0, and the same edge as "critical"."""
    alpha, lr = 0.7, 0.25
    p = problems.make("self-stabilization", alpha=alpha, w0=[0.2, 7.5])
    r = rodflow.simulate(p, lr, steps=60, methods=("central_flow",), sharpness_every=0, progress=False,
                         options={"central_flow": {"sdcp_over": "tracked", "neigs": 2}})
    cf = r.method("central_flow")
    assert (cf["d3"] == 4 * 3).all()  # two tracked eigenvectors (d = 2): 3 pairs per substep
    assert cf["trace_sigma"].iloc[0] == 0
    assert cf["trace_sigma"].iloc[-1] == pytest.approx(2 * alpha, rel=1e-6)
    assert (cf["qp_residual"].dropna() < 1e-8).all()


def test_divergence_is_recorded_with_its_step():
    """A loss that falls to −∞ in finite time: rows are kept up to the divergence, which is recorded."""
    p = Problem.from_loss(lambda w: -(w**4).sum(), torch.tensor([1.0], dtype=torch.float64), name="runaway")
    r = rodflow.simulate(p, 0.1, steps=40, methods=("central_flow",), sharpness_every=0, progress=False,
                         diverge_factor=1e300)
    status = r.status["central_flow"]
    assert status.startswith("diverged at step"), status
    step = int(status.split("step ")[1].split()[0])
    cf = r.method("central_flow")
    assert cf.index.max() == step and np.isfinite(cf["loss"].iloc[:-1]).all()
