"""GFS sharpness: exact solvers against numerical gradient flow, the numerical solver's accuracy, NaN cases,
monotonicity along GD, and the simulate integration."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rodflow import Problem, RodflowError, problems, simulate
from rodflow import load as rodflow_load
from rodflow.gfs import GFSSolver, gfs_point, gfs_sharpness, monotonicity, scalar_network_gfs
from rodflow.integrators import DormandPrince


def reference_flow(p, w, gtol=1e-10, t_max=5e3):
    """Plain tight Dormand-Prince gradient flow until ‖∇L‖ < gtol (independent of rodflow.gfs)."""
    ode = DormandPrince(lambda t, x: -p.grad(x), torch.as_tensor(w, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    T = 1.0
    while T < t_max:
        x = ode.advance_to(T)
        if float(ode.fy.norm()) < gtol:
            return ode.y
        T *= 1.5
    raise AssertionError(f"reference flow did not converge (‖g‖={float(ode.fy.norm()):.3g})")


def top_eig(p, x):
    return float(torch.linalg.eigvalsh(p.hessian(x))[-1])


@pytest.mark.parametrize("depth,y,w", [
    (2, 1.5, [1.2, 0.7]),
    (2, -0.8, [2.0, 0.3]),          # y·∏w < 0: the smaller weight crosses zero
    (3, 1.5, [2.0, -0.3, 0.9]),     # y·∏w < 0 with depth 3
    (4, 1.0, [1.1, 0.6, 0.5, 0.9]),
    (5, 2.0, [0.9, 1.3, -1.0, 1.1, -0.8]),
    (1, 3.0, [-0.5]),
])
def test_scalar_closed_form_matches_gradient_flow(depth, y, w):
    p = problems.make("scalar-network", depth=depth, y=y, w0=w)
    res = gfs_sharpness(p)
    assert res.converged and res.method == "scalar-closed-form" and res.reason == ""
    x = reference_flow(p, p.w0)
    assert float((res.point - x).norm()) <= 1e-8 * float(x.norm())
    assert abs(res.sharpness - top_eig(p, x)) <= 1e-8 * res.sharpness
    assert res.loss < 1e-25 and res.time == math.inf
    # conserved quantities: w_i² − w_j² unchanged
    w0 = np.asarray(w)
    assert np.allclose(np.diff(res.point.numpy() ** 2), np.diff(w0**2), rtol=0, atol=1e-12)


def test_scalar_depth2_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        w, y = rng.normal(size=2) * 2, rng.normal() * 3
        _, phi, reason = scalar_network_gfs(w, y)
        if reason:
            continue
        assert phi == pytest.approx(math.sqrt((w[0] ** 2 - w[1] ** 2) ** 2 + 4 * y * y), rel=1e-13)


def test_scalar_extreme_scales():
    # deep, tiny and huge weights: the log-form root find stays accurate
    w = np.array([1e-6, 1e3, 2.0, 0.5, 0.7, 1.3])
    point, phi, reason = scalar_network_gfs(w, 1e-3)
    assert reason == ""
    assert np.prod(point) == pytest.approx(1e-3, rel=1e-13)
    assert np.allclose(np.diff(point**2), np.diff(w**2), rtol=1e-12, atol=1e-12 * 1e6)


def test_scalar_nan_cases():
    p = problems.make("scalar-network", depth=3, y=1.0, w0=[1.0, 1.0, 1.0])
    r = gfs_sharpness(p, [0.0, 0.0, 1.0])
    assert math.isnan(r.sharpness) and not r.converged and "saddle" in r.reason
    # product of the wrong sign with the smallest |w_i| shared: the two vanish together (saddle)
    r = gfs_sharpness(p, [0.5, -0.5, 2.0])
    assert math.isnan(r.sharpness) and "saddle" in r.reason
    p2 = problems.make("scalar-network", depth=2, y=1.0, w0=[1.0, 1.0])
    r = gfs_sharpness(p2, [1.0, -1.0])
    assert math.isnan(r.sharpness) and "saddle" in r.reason
    # numerically: gradient flow from (1, −1) goes to the origin, where L = y²/2 (not a minimiser)
    ode = DormandPrince(lambda t, x: -p2.grad(x), torch.tensor([1.0, -1.0], dtype=torch.float64))
    x = ode.advance_to(40.0)
    assert float(x.norm()) < 1e-6 and float(p2.loss(x)) == pytest.approx(0.5)
    # one exactly-zero weight is not a saddle: the flow leaves it
    r = gfs_sharpness(p, [0.0, 1.0, 2.0])
    assert r.converged and r.point[0] > 0


@pytest.mark.parametrize("name,kw", [
    ("squared-regression", dict(n=8, dim=16, init_scale=0.5)),
    ("diagonal-linear-network", dict(n=8, dim=16, init_scale=0.5)),
    ("diagonal-linear-network", dict(n=10, dim=15, init_scale=0.7, v_scale=0.2, seed=2)),
])
def test_duals_match_gradient_flow(name, kw):
    p = problems.make(name, **kw)
    res = gfs_sharpness(p)
    assert res.converged and res.method.endswith("dual")
    x = reference_flow(p, p.w0)
    assert float((res.point - x).norm()) <= 1e-8 * float(x.norm())
    assert abs(res.sharpness - top_eig(p, x)) <= 1e-8 * res.sharpness
    # the closed-form Hessian at the zero-residual GFS equals the autodiff Hessian there
    assert res.sharpness == pytest.approx(top_eig(p, res.point), rel=1e-10)
    assert res.loss < 1e-20


def test_diagonal_conserves_u2_minus_v2():
    p = problems.make("diagonal-linear-network", n=10, dim=15, init_scale=0.7, v_scale=0.2, seed=2)
    res = gfs_point(p)
    d = 15
    before = p.w0[:d] ** 2 - p.w0[d:] ** 2
    after = res.point[:d] ** 2 - res.point[d:] ** 2
    assert torch.allclose(before, after, atol=1e-12)


def tiny_mlp(seed=0, n=8, hidden=8):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    shapes = [(hidden, 3), (hidden,), (1, hidden), (1,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss(w):
        parts, i = [], 0
        for s, k in zip(shapes, sizes):
            parts.append(w[i:i + k].reshape(s))
            i += k
        W1, b1, W2, b2 = parts
        out = torch.tanh(X @ W1.T + b1) @ W2.T + b2
        return 0.5 * ((out - Y) ** 2).sum(1).mean()

    w0 = torch.randn(sum(sizes), generator=g, dtype=torch.float64) * 0.8
    return Problem.from_loss(loss, w0, name="tiny-mlp")


def test_numerical_accuracy_against_tight_reference():
    p = tiny_mlp()
    res = gfs_sharpness(p)
    tight = gfs_sharpness(p, tol=1e-8, rtol=1e-10, atol=1e-12)
    assert res.converged and tight.converged and res.method == "numerical"
    rel = abs(res.sharpness - tight.sharpness) / tight.sharpness
    assert rel <= 1e-4
    assert res.error >= abs(res.sharpness - tight.sharpness)  # the reported error bounds the true one
    assert res.grad_norm < 1e-8 and res.time > 0 and res.grad_evals > 0 and res.hvps > 0


def test_numerical_matches_closed_form():
    p = problems.make("scalar-network", depth=3, y=1.5, w0=[2.0, -0.3, 0.9])
    exact = gfs_sharpness(p)
    num = gfs_sharpness(p, method="numerical")
    assert num.method == "numerical" and num.converged
    assert abs(num.sharpness - exact.sharpness) <= max(num.error, 1e-12)
    assert abs(num.sharpness - exact.sharpness) <= 1e-5 * exact.sharpness


def test_numerical_nan_cases():
    # budget exhausted
    p = tiny_mlp()
    r = gfs_sharpness(p, max_grad_evals=20)
    assert math.isnan(r.sharpness) and "budget" in r.reason and not r.converged
    # the reason reports the curvature where the budget ran out (negative: still crossing a saddle region)
    lam = float(r.reason.split("λ_min(H) = ")[1].split()[0].rstrip(":;,)"))
    true_lam = float(torch.linalg.eigvalsh(p.hessian(r.point))[0])
    assert lam == pytest.approx(true_lam, rel=1e-3, abs=1e-8)
    assert ("not yet in a minimiser's basin" in r.reason) == (true_lam < 0)
    # gradient flow without a minimiser: diverges
    q = problems.make("quartic", S=1.0, Q=1.0, w0=2.0)
    r = gfs_sharpness(q, max_grad_evals=5000)
    assert math.isnan(r.sharpness) and r.reason
    # starting exactly at a saddle: gradient zero, negative curvature
    s = Problem.from_loss(lambda w: w[0] ** 2 - w[1] ** 2 + w[1] ** 4, [0.0, 0.0])
    r = gfs_sharpness(s)
    assert math.isnan(r.sharpness) and "not a minimiser" in r.reason


def test_bad_input():
    p = problems.make("scalar-network")
    with pytest.raises(RodflowError):
        gfs_sharpness(p, [1.0, 2.0, 3.0])
    with pytest.raises(RodflowError):
        gfs_sharpness(p, tol=2.0)
    with pytest.raises(RodflowError):
        gfs_sharpness(p, bogus=1)
    with pytest.raises(RodflowError):
        gfs_sharpness(tiny_mlp(), method="exact")


def gd_phis(p, lr, steps):
    solver = GFSSolver(p)
    w = p.w0.clone()
    phis, errs = [], []
    for _ in range(steps):
        r = solver(w)
        phis.append(r.sharpness)
        errs.append(r.error)
        w = w - lr * p.grad(w)
    return np.array(phis), np.array(errs), w


@pytest.mark.parametrize("depth,w0,lr", [
    (2, [3.0, 0.2], 0.22),          # φ0 ≈ 9.02 > 2/η ≈ 9.09? just below; EoS-adjacent
    (3, [2.5, 0.5, 0.5], 0.3),
    (4, [1.6, 0.8, 0.9, 0.7], 0.25),
])
def test_gfs_sharpness_monotone_along_gd(depth, w0, lr):
    p = problems.make("scalar-network", depth=depth, y=1.0, w0=w0)
    phis, errs, w_end = gd_phis(p, lr, 300)
    assert float(p.loss(w_end)) < 1e-10  # the regime where GD converges
    assert np.isfinite(phis).all()
    rep = monotonicity(phis, errs)
    assert rep["gfs_increases"] == 0
    # and it really decreased (the test is not vacuous)
    assert phis[-1] < phis[0]


def test_monotonicity_report_counts_increases():
    phi = np.array([5.0, 4.0, 4.0 + 1e-13, 4.5, 3.0, np.nan, 3.1])
    err = np.full(phi.size, 1e-12)
    rep = monotonicity(phi, err)
    assert rep["gfs_increases"] == 2 and rep["gfs_nan"] == 1
    assert rep["gfs_max_increase"] == pytest.approx(0.5)
    assert rep["gfs_max_increase_rel"] == pytest.approx(0.5 / 4.0)


def test_simulate_records_gfs_sharpness():
    p = problems.make("scalar-network", depth=3, y=1.0, w0=[2.5, 0.5, 0.5])
    # gradient flow by the tight DOPRI: φ is invariant along the exact flow (rkc's rtol 1e-5 moves it by 2.5e-6)
    res = simulate(p, lr=0.3, steps=40, methods=["gd", "gradient_flow"], gfs_every=5, sharpness_every=5,
                   options={"gradient_flow": {"integrator": "dopri"}}, progress=False)
    gd = res.method("gd")
    phi = gd["gfs_sharpness"]
    assert phi.notna().sum() == 9 and phi.loc[1:4].isna().all()
    for t in (0, 20, 40):
        assert phi.loc[t] == pytest.approx(gfs_sharpness(p, res.iterates["gd"][t]).sharpness, rel=1e-12)
    gf = res.method("gradient_flow")["gfs_sharpness"].dropna()
    assert np.ptp(gf.to_numpy()) <= 1e-6 * gf.iloc[0]  # φ is invariant along gradient flow itself
    summary = res.summary().set_index("method")
    assert summary.loc["gd", "gfs_increases"] == 0 and summary.loc["gd", "gfs_evals"] == 9
    off = simulate(p, lr=0.3, steps=3, progress=False)
    assert "gfs_sharpness" not in off.metrics
    with pytest.raises(RodflowError):
        simulate(p, lr=0.3, steps=3, gfs_every=-1, progress=False)


def test_budget_reason_on_real_data_network_reports_true_lambda_min():
    # a small MLP on real data (digits): gradient flow crawls through a region of negative curvature whose
    # bottom eigenvalues cluster near 0, where LOBPCG on −H does not converge; the reported λ_min must still be
    # the true one (an unconverged Rayleigh quotient would only be an upper bound, here of the wrong sign)
    torch.set_num_threads(1)
    p = problems.make("mlp-digits", n=100, classes=10, width=4, depth=1, activation="tanh", loss="mse")
    r = gfs_sharpness(p, max_grad_evals=3000)
    assert math.isnan(r.sharpness) and "budget" in r.reason
    lam = float(r.reason.split("λ_min(H) = ")[1].split()[0].rstrip(":;,)"))
    true_lam = float(torch.linalg.eigvalsh(p.hessian(r.point))[0])
    assert true_lam < 0 and lam == pytest.approx(true_lam, rel=1e-6)
    assert "not yet in a minimiser's basin" in r.reason


# ------------------------------------------------------------------- Gauss-Newton projection, real data
@pytest.mark.parametrize("name,kw", [("squared-regression", {}), ("diagonal-linear-network", dict(v_scale=0.3))])
def test_gauss_newton_projection_matches_the_duals(name, kw):
    p = problems.make(name, **kw)
    exact = gfs_sharpness(p)
    num = gfs_sharpness(p, method="numerical")
    assert num.converged and num.method == "numerical" and num.projection == "gauss-newton"
    assert num.jvps > 0 and num.loss < 1e-20
    err = abs(num.sharpness - exact.sharpness)
    assert err <= num.error  # the reported error bounds the true one
    assert err <= 1e-4 * exact.sharpness


def test_gfs_on_a_network_on_real_data_against_a_tight_reference():
    torch.set_num_threads(1)
    p = problems.make("mlp-digits", n=10, classes=5, width=16, depth=1)  # digits, MSE, d = 1125 > 50 targets
    res = gfs_sharpness(p)
    tight = gfs_sharpness(p, tol=1e-8)
    assert res.converged and tight.converged and res.projection == tight.projection == "gauss-newton"
    err = abs(res.sharpness - tight.sharpness)
    assert err <= 1e-4 * tight.sharpness and err <= res.error
    assert tight.error <= 1e-8 * tight.sharpness
    assert res.loss < 1e-20 and res.grad_norm < 1e-10  # a zero-loss (global) minimiser


def test_projection_acceptance_needs_a_contracting_sequence():
    from rodflow.gfs import _Candidate, _consecutive_error

    def c(phi, step):
        return _Candidate(None, phi, 0.0, step, True, "gauss-newton")

    eig = 1e-9
    assert _consecutive_error([c(20.0, 1.0)], eig) == math.inf
    assert _consecutive_error([c(20.0, 1.0), c(20.0, 0.1)], eig) <= 1e-7  # agree to eigensolver noise
    assert _consecutive_error([c(20.0, 1.0), c(20.1, 0.1)], eig) == math.inf  # two differing: not enough
    # measured pre-asymptotic case: Δ changes sign with a coincidentally small last difference
    assert _consecutive_error([c(21.07587, 0.875), c(20.86048, 0.338), c(20.86203, 0.132)], eig) == math.inf
    # contracting with a fixed sign: |e| ≈ 2·q/(1−q)·|Δ| with q = max(Δ ratio, δ ratio)
    est = _consecutive_error([c(15.917, 0.233), c(16.0285, 0.0526), c(16.0389, 0.00527)], eig)
    q = max(0.0104 / 0.1115, 0.00527 / 0.0526)
    assert est == pytest.approx(2 * 0.0104 * q / (1 - q), rel=1e-2)
    assert _consecutive_error([c(1.0, 1.0), c(2.0, 0.9), c(2.5, 0.8)], eig) == math.inf  # δ barely shrinks


def gd_with_phi(p, steps: int, sharpness_every: int):
    """GD at η = 1.5·2/φ0 (so φ0 > 2/η) with φ every 10 steps: (result, η)."""
    torch.set_num_threads(1)
    lr = 1.5 * 2 / gfs_sharpness(p).sharpness
    return simulate(p, lr=lr, steps=steps, methods=["gd"], gfs_every=10, sharpness_every=sharpness_every,
                    progress=False), lr


def test_gfs_tracking_along_gd_on_real_data_is_monotone():
    # GD at η = 1.5·2/φ0 (so φ0 > 2/η) on an MLP on digits: φ must not rise above its own error estimates
    p = problems.make("mlp-digits", n=10, classes=5, width=16, depth=1)
    res, lr = gd_with_phi(p, steps=40, sharpness_every=10)
    df = res.method("gd")
    evals = df["gfs_sharpness"].dropna()
    assert len(evals) == 5 and bool((df["gfs_converged"].dropna() == 1).all())
    summ = res.summary().iloc[0]
    assert summ["gfs_increases"] == 0 and summ["gfs_nan"] == 0
    assert evals.iloc[-1] < evals.iloc[0]
    assert "gfs_jvps" in df and df["gfs_jvps"].dropna().gt(0).all()


def test_cli_run_and_gfs_command_record_phi_on_real_data(tmp_path, capsys):
    from rodflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--problem", "squared-regression", "--steps", "6", "--methods", "gd", "--gfs-every", "3",
              "--gfs-opt", "tol=1e-5", "--no-progress", "--out", str(tmp_path / "r")])
    assert info.value.code == 0
    res = rodflow_load(tmp_path / "r")
    assert res.config["gfs_options"] == {"tol": 1e-5}
    assert res.method("gd")["gfs_sharpness"].notna().sum() == 3  # steps 0, 3, 6
    assert "final_gfs_sharpness" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["gfs", "--out", str(tmp_path / "g"), "--depths", "2", "--steps", "3", "--regression-steps", "0",
              "--network-param", "n=10", "--network-param", "classes=5", "--network-param", "width=16",
              "--network-param", "depth=1", "--network-steps", "10", "--network-gfs-every", "10", "--no-progress"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "mlp-digits" in out and "increases above solver error 0" in out and "NaN 0" in out
    assert (tmp_path / "g" / "network.png").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "g" / "network_gfs.csv")
    assert len(table) == 2 and (table["gfs_converged"] == 1).all()


@pytest.mark.parametrize("integrator", ["rkc", "srk4"])
def test_stabilized_integrator_options_match_the_dual(integrator):
    p = problems.make("squared-regression")
    exact = gfs_sharpness(p)
    res = gfs_sharpness(p, method="numerical", integrator=integrator)
    assert res.converged and abs(res.sharpness - exact.sharpness) <= 1e-4 * exact.sharpness
    with pytest.raises(RodflowError, match="unknown GFS integrator 'rk4'"):
        gfs_sharpness(p, integrator="rk4")


def test_resumed_run_repeats_phi_exactly(tmp_path, killed_at_gd_step):
    # the GFS solver's warm starts (eigensolver bases, generator) are checkpointed with the run
    from rodflow import resume

    p = problems.make("diagonal-linear-network", n=8, dim=40, v_scale=0.3)  # d = 80: LOBPCG, warm-started
    kw = dict(lr=0.05, steps=12, methods=["gd"], gfs_every=3, sharpness_every=0,
              gfs_options={"method": "numerical"}, progress=False)
    full = simulate(p, **kw)
    with killed_at_gd_step(8):
        simulate(p, **kw, out=tmp_path / "run", checkpoint_every=4)
    resumed = resume(tmp_path / "run", progress=False)
    cols = ["gfs_sharpness", "gfs_error", "gfs_grad_evals", "gfs_hvps", "gfs_jvps"]
    a, b = full.method("gd")[cols], resumed.method("gd")[cols]
    assert a["gfs_sharpness"].notna().sum() == 5
    pd.testing.assert_frame_equal(a, b)


def test_float32_problem_is_solved_in_float64():
    kw = dict(n=10, classes=5, width=16, depth=1)
    r32 = gfs_sharpness(problems.make("mlp-digits", dtype="float32", **kw))
    r64 = gfs_sharpness(problems.make("mlp-digits", **kw))
    assert r32.converged and r32.point.dtype == torch.float64
    # w0 differs by float32 rounding only: φ agrees to the solver's error (in float32 it did not converge)
    assert abs(r32.sharpness - r64.sharpness) <= r32.error + r64.error


# ------------------------------------------------------------------- losses with no finite minimiser
def test_cross_entropy_gets_the_no_finite_limit_reason_within_a_small_budget():
    torch.set_num_threads(1)
    p = problems.make("mlp-digits", n=10, classes=5, width=16, depth=1, loss="ce")
    assert p.extras["cross_entropy_terms"] == 10
    r = gfs_sharpness(p, max_grad_evals=1000)
    assert math.isnan(r.sharpness) and not r.converged
    assert "no finite minimiser" in r.reason and "budget" not in r.reason
    assert r.grad_evals < 1000
    # the certificate: every label is the top class with p > 1/2 (cross-entropy of each term below ln 2)
    assert 10 * r.loss < math.log(2)
    assert float(r.point.norm()) > float(p.w0.norm())  # ‖w‖ grows
    # sequence outputs: one term per example and position
    t = problems.make("transformer-sorting", n=4, width=8, depth=1, loss="ce")
    assert t.extras["cross_entropy_terms"] == 4 * 5
    assert "cross_entropy_terms" not in problems.make("mlp-digits", n=10, classes=5, width=16, depth=1).extras


def test_from_module_cross_entropy_certificate_only_for_a_linear_last_layer():
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(12, 4, dtype=torch.float64)
    y = torch.arange(12) % 3
    linear = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    p = Problem.from_module(linear, (x, y), loss="ce")
    assert p.extras["cross_entropy_terms"] == 12
    r = gfs_sharpness(p, max_grad_evals=3000)
    assert "no finite minimiser" in r.reason

    class Normalised(nn.Module):  # logits of fixed norm: cross-entropy can have a finite minimiser
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            z = self.lin(x)
            return z / z.norm(dim=1, keepdim=True) * self.scale.tanh()

    assert "cross_entropy_terms" not in Problem.from_module(Normalised().double(), (x, y), loss="ce").extras
    assert "cross_entropy_terms" not in Problem.from_module(linear, (x, y.double()[:, None]), loss="mse").extras


# ------------------------------------------------------------------- practical architectures (issue 16)
def tiny_cnn():
    # a CNN (3×3 convolutions, pooling, linear head) on 4 digits, 2 classes, MSE: d = 170 > 8 targets
    return problems.make("cnn-digits", n=4, classes=2, width=4, depth=1)


def test_gfs_on_a_tiny_cnn_against_a_tight_solve():
    torch.set_num_threads(1)
    p = tiny_cnn()
    res = gfs_sharpness(p)
    tight = gfs_sharpness(p, tol=1e-8)
    assert res.converged and tight.converged and res.projection == "gauss-newton"
    err = abs(res.sharpness - tight.sharpness)
    assert err <= res.error and err <= 1e-4 * tight.sharpness
    assert tight.error <= 1e-8 * tight.sharpness
    assert res.loss < 1e-20  # an interpolating minimiser


def test_gfs_tracking_along_gd_on_a_cnn_is_monotone_and_costed():
    from rodflow.gfs import cost_ratios, gradient_equivalents

    p = tiny_cnn()
    res, lr = gd_with_phi(p, steps=30, sharpness_every=1)
    df = res.method("gd")
    evals = df["gfs_sharpness"].dropna()
    assert len(evals) == 4 and bool((df["gfs_converged"].dropna() == 1).all())
    assert df["sharpness"].max() > 2 / lr  # GD is past the threshold at its start: the edge of stability
    summ = res.summary().iloc[0]
    assert summ["gfs_increases"] == 0 and summ["gfs_nan"] == 0
    before = p.counts.copy()
    ratios = cost_ratios(p)
    assert p.counts == before  # timing is not counted as the problem's work
    assert set(ratios) == {"jvp", "hvp"} and all(0 < v < 50 for v in ratios.values())
    row = df.dropna(subset=["gfs_sharpness"]).iloc[0].to_dict()
    eq = gradient_equivalents(row, ratios)
    assert eq == pytest.approx(row["gfs_grad_evals"] + ratios["jvp"] * row["gfs_jvps"] + ratios["hvp"] * row["gfs_hvps"])
    assert eq > row["gfs_grad_evals"]


def test_gauss_newton_gives_up_and_waits_for_a_tenfold_lower_loss(monkeypatch):
    # a Gauss-Newton projection that fails is not tried again until the loss has fallen tenfold
    import rodflow.gfs as G

    p = tiny_cnn()
    solver = G.GFSSolver(p)
    state = {"failed_at": math.inf}
    x = p.w0
    r0 = float(p.residual(x).norm())
    import scipy.sparse.linalg

    monkeypatch.setattr(scipy.sparse.linalg, "lsqr", lambda op, b, **kw: (np.zeros(op.shape[1]),))  # no progress
    assert G._gauss_newton(p, x, solver, 0.0, state) is None
    assert state["failed_at"] == pytest.approx(r0)
    before = p.counts.jvps
    assert G._gauss_newton(p, x, solver, 0.0, state) is None
    assert p.counts.jvps == before  # not tried again at the same loss: no LSQR work


@pytest.mark.parametrize("integrator", ["rkc", "srk4"])
def test_stabilized_error_includes_its_check_solve_and_bounds_the_true_error(monkeypatch, integrator):
    import rodflow.gfs as G

    torch.set_num_threads(1)
    p = tiny_cnn()
    tight = gfs_sharpness(p, tol=1e-8)
    built = []
    monkeypatch.setitem(G.STABILIZED, integrator,
                        lambda *a, cls=G.STABILIZED[integrator], **k: built.append(cls) or cls(*a, **k))
    res = gfs_sharpness(p, integrator=integrator)
    assert built  # the stiff part of the flow was integrated by the stabilised method
    assert res.converged and abs(res.sharpness - tight.sharpness) <= res.error
    # the check solve runs at 10x looser tolerances and its change of φ is added to the error
    calls = []
    real = G._numerical

    def spy(problem, w, solver, loosen=1.0):
        out = real(problem, w, solver, loosen)
        calls.append(loosen)
        if loosen != 1.0:
            out.sharpness += 0.01  # a check solve that disagrees by 0.01
        return out

    monkeypatch.setattr(G, "_numerical", spy)
    shifted = gfs_sharpness(p, integrator=integrator)
    assert calls == [1.0, G.RKC_CHECK]
    assert shifted.sharpness == pytest.approx(res.sharpness, abs=1e-12)
    assert shifted.error >= 0.01
    assert gfs_sharpness(p).error < 0.01 and calls[2:] == [1.0]  # dopri: one solve, no check

    def failing(problem, w, solver, loosen=1.0):
        out = real(problem, w, solver, loosen)
        if loosen != 1.0:
            out = G._nan(problem, w, "numerical", "budget of 10 gradient evaluations exhausted")
        return out

    monkeypatch.setattr(G, "_numerical", failing)
    unchecked = gfs_sharpness(p, integrator=integrator)
    assert math.isnan(unchecked.sharpness) and "check solve failed" in unchecked.reason


def test_cli_gfs_on_several_networks(tmp_path, capsys):
    from rodflow.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as info:
            main(["gfs", "--out", str(tmp_path / "g"), "--only-network", "--no-progress", *args])
        return info.value.code

    assert run("--network", "cnn-digits,mlp-digits", "--network-param", "n=4", "--network-param", "classes=2",
               "--network-param", "width=4", "--network-steps", "10", "--network-gfs-every", "10") == 0
    table = pd.read_csv(tmp_path / "g" / "networks.csv")
    assert list(table["network"]) == ["cnn-digits", "mlp-digits"]
    assert (table["evals"] == 2).all() and (table["nan"] == 0).all()
    assert (table["grad_equivalents_per_phi"] > table["grads_per_phi"]).all()
    assert (table["max_error_rel"] <= 1e-4).all()
    assert (tmp_path / "g" / "networks.png").stat().st_size > 1000
    assert (tmp_path / "g" / "network-cnn-digits.png").is_file() and (tmp_path / "g" / "network-mlp-digits").is_dir()
    capsys.readouterr()
    assert run("--network", "vit-digits,transformer-sorting", "--network-param", "patch=2") == 2
    assert "transformer-sorting has no parameter 'patch'" in capsys.readouterr().err
    assert run("--network", "cnn-digits", "--gfs-opt", "tolerance=1e-3") == 2
    assert "unknown --gfs-opt 'tolerance'" in capsys.readouterr().err
    assert run("--network", "") == 2
    assert "--only-network needs --network" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # refused before the scalar experiment runs, not after it
        main(["gfs", "--out", str(tmp_path / "h"), "--regression-steps", "-1", "--network", ""])
    assert info.value.code == 2 and "--regression-steps must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_cli_gfs_network_runs_are_read_back_or_refused(tmp_path, capsys):
    from rodflow.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as info:
            main(["gfs", "--out", str(tmp_path / "g"), "--only-network", "--no-progress", "--network", "cnn-digits",
                  "--network-param", "n=4", "--network-param", "classes=2", "--network-param", "width=4",
                  "--network-gfs-every", "5", *args])
        return info.value.code

    assert run("--network-steps", "5") == 0
    first = pd.read_csv(tmp_path / "g" / "networks.csv")
    mtime = (tmp_path / "g" / "network" / "metrics.parquet").stat().st_mtime_ns
    assert run("--network-steps", "5") == 0  # the finished run is read back, not run again
    assert (tmp_path / "g" / "network" / "metrics.parquet").stat().st_mtime_ns == mtime
    again = pd.read_csv(tmp_path / "g" / "networks.csv")
    pd.testing.assert_frame_equal(first.drop(columns=["jvp_cost", "hvp_cost", "grad_equivalents_per_phi",
                                                      "max_grad_equivalents"]),
                                  again.drop(columns=["jvp_cost", "hvp_cost", "grad_equivalents_per_phi",
                                                      "max_grad_equivalents"]))
    capsys.readouterr()
    assert run("--network-steps", "10") == 2
    assert "holds a different run" in capsys.readouterr().err
    assert run("--network-steps", "5", "--eta-factor", "1.2") == 2
    assert "not --eta-factor 1.2" in capsys.readouterr().err


def test_cli_gfs_eta_rules(tmp_path, capsys):
    import rodflow
    from rodflow.cli import main

    def run(out, *args):
        with pytest.raises(SystemExit) as info:
            main(["gfs", "--out", str(tmp_path / out), "--only-network", "--no-progress", "--network", "cnn-digits",
                  "--network-param", "n=4", "--network-param", "classes=2", "--network-param", "width=4",
                  "--network-steps", "3", "--network-gfs-every", "3", *args])
        return info.value.code

    assert run("s", "--eta-rule", "sharpness") == 0  # 2/η = S0/1.1: above the threshold from the first step
    df = rodflow.load(tmp_path / "s" / "network").method("gd")
    res = rodflow.load(tmp_path / "s" / "network")
    assert res.lr * df["sharpness"].iloc[0] / 2 == pytest.approx(1.1, rel=1e-6)
    assert run("g", "--eta-factor", "1.3") == 0  # default rule: 2/η = φ0/1.3
    res = rodflow.load(tmp_path / "g" / "network")
    assert res.lr * res.method("gd")["gfs_sharpness"].iloc[0] / 2 == pytest.approx(1.3, rel=1e-3)
    capsys.readouterr()
    assert run("x", "--eta-rule", "loss") == 2
    assert "--eta-rule must be one of gfs, sharpness" in capsys.readouterr().err
