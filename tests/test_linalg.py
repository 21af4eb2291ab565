"""Eigensolver against dense eigh; the integrator against closed forms."""

import math

import numpy as np
import pytest
import torch

import rodflow
from rodflow import problems
from rodflow.integrators import ChebyshevRK, DormandPrince, IntegrationError, _rkc_step
from rodflow.linalg.eigs import SharpnessTracker, top_eigs

from test_problem import random_point, tiny_mlp


def spd_with_spectrum(d, top, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    evals = torch.cat([torch.tensor(top, dtype=torch.float64), torch.rand(d - len(top), dtype=torch.float64, generator=g) - 0.5])
    return Q @ torch.diag(evals) @ Q.T, evals


@pytest.mark.parametrize("k", [1, 3, 5])
def test_lobpcg_matches_dense(k):
    A, _ = spd_with_spectrum(300, [10.0, 9.0, 8.5, 5.0, 4.9, 4.8], seed=k)
    dense = torch.linalg.eigvalsh(A).flip(0)[:k]
    res = top_eigs(lambda V: A @ V, 300, k, generator=torch.Generator().manual_seed(0))
    assert res.converged
    assert torch.all((res.values - dense).abs() <= 1e-6 * dense.abs())
    # eigenvectors: residuals small and orthonormal
    assert torch.allclose(res.vectors.T @ res.vectors, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert float((A @ res.vectors - res.vectors * res.values).norm()) < 1e-5 * 10


def test_lobpcg_on_problem_hessians_matches_dense():
    for problem in (tiny_mlp(), problems.make("squared-regression")):
        w = random_point(problem, 0.1)
        dense = torch.linalg.eigvalsh(problem.hessian(w)).flip(0)[:2]
        res = SharpnessTracker(problem, k=2)(w)
        assert torch.all((res.values - dense).abs() <= 1e-6 * dense.abs()), (res.values, dense)


def test_warm_start_saves_hvps():
    A, _ = spd_with_spectrum(400, [10.0, 8.0, 7.0], seed=1)
    g = torch.Generator().manual_seed(0)
    cold = top_eigs(lambda V: A @ V, 400, 1, generator=g)
    B = A + 1e-3 * spd_with_spectrum(400, [1.0], seed=2)[0]
    cold2 = top_eigs(lambda V: B @ V, 400, 1, generator=torch.Generator().manual_seed(5))
    warm = top_eigs(lambda V: B @ V, 400, 1, X0=cold.basis, generator=g)
    assert warm.converged and cold2.converged
    assert abs(float(warm.values[0] - cold2.values[0])) < 1e-6 * 10
    assert warm.hvps < cold2.hvps / 2


def test_small_problems_use_dense_path():
    p = problems.make("quadratic", lambdas=[1.0, 5.0, 3.0])
    res = SharpnessTracker(p, k=2)(p.w0)
    assert res.values.tolist() == pytest.approx([5.0, 3.0])
    assert res.hvps == 3


def test_dopri_dense_output_is_accurate_and_order_5():
    errs = []
    for rtol in (1e-6, 1e-9):
        ode = DormandPrince(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([1.0, 0.0], dtype=torch.float64),
                            rtol=rtol, atol=rtol * 1e-3)
        err = 0.0
        for T in np.linspace(0.1, 10, 77):  # mostly between steps: dense output
            y = ode.advance_to(float(T))
            err = max(err, abs(float(y[0]) - math.cos(T)) + abs(float(y[1]) + math.sin(T)))
        errs.append((err, ode.nfev))
    assert errs[0][0] < 1e-4 and errs[1][0] < 1e-7
    # error falls ~ like nfev^-5 (order 5 method): 1000x smaller error with < 5x the evaluations
    assert errs[1][1] < 5 * errs[0][1]


def test_dopri_step_follows_stiffness():
    lam = torch.tensor([1.0, 50.0, 500.0], dtype=torch.float64)
    ode = DormandPrince(lambda t, y: -lam * y, torch.ones(3, dtype=torch.float64), rtol=1e-8, atol=1e-12)
    y = ode.advance_to(4.0)
    assert float(y[0]) == pytest.approx(math.exp(-4.0), rel=1e-7)
    assert 2.0 / 500 < ode.h < 4.0 / 500  # pinned at the stability limit ~3.3/λ_max, not at a fixed tiny step


def test_dopri_rejects_going_back_and_reports_underflow():
    ode = DormandPrince(lambda t, y: -y, torch.ones(1, dtype=torch.float64))
    ode.advance_to(2.0)
    with pytest.raises(IntegrationError):
        ode.advance_to(0.5 * (0 + ode._dense[0]) - 1.0)
    blow = DormandPrince(lambda t, y: y**2, torch.ones(1, dtype=torch.float64))  # blows up at t = 1
    with pytest.raises(IntegrationError, match="underflow"):
        blow.advance_to(2.0)


@pytest.mark.parametrize("s", [2, 7, 40])
def test_rkc_step_is_second_order(s):
    f = lambda z: -z**2 + torch.sin(z)  # noqa: E731
    ref = DormandPrince(lambda t, z: f(z), torch.ones(1, dtype=torch.float64), rtol=1e-13, atol=1e-15).advance_to(1.0)
    errs = []
    for h in (0.1, 0.05, 0.025):
        y = torch.ones(1, dtype=torch.float64)
        for _ in range(round(1.0 / h)):
            y = _rkc_step(f, y, f(y), h, s)
        errs.append(float((y - ref).abs()))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.9 < o < 2.2 for o in orders), orders


def test_rkc_on_a_stiff_gradient_flow_is_accurate_and_much_cheaper_than_dopri():
    lam = torch.logspace(-2, 2, 50, dtype=torch.float64)  # a quadratic's gradient flow, stiffness 1e4
    y0 = torch.ones(50, dtype=torch.float64)
    rkc = ChebyshevRK(lambda y: -lam * y, y0, lambda y: float(lam.max()), rtol=1e-6, atol=1e-8)
    rkc.advance_to(200.0)
    exact = y0 * torch.exp(-lam * rkc.t)
    assert float((rkc.y - exact).abs().max()) < 1e-5
    dp = DormandPrince(lambda t, y: -lam * y, y0, rtol=1e-6, atol=1e-8)
    dp.advance_to(200.0)
    assert rkc.nfev < dp.nfev / 3  # stability ∝ s² instead of a fixed 3.3/λ_max (measured: 7 598 vs 36 518)
    assert rkc.stages > 10 and rkc.h > 10 * 3.3 / float(lam.max())
    blow = ChebyshevRK(lambda y: y**2, torch.ones(1, dtype=torch.float64), lambda y: 2.0 * float(y.abs().max()))
    with pytest.raises(IntegrationError, match="underflow|not finite"):
        blow.advance_to(2.0)


@pytest.mark.parametrize("d", [3, 400])  # the dense path and the block path
def test_nonfinite_hvps_give_nan_with_a_reason_not_a_converged_value(d):
    from rodflow.linalg.eigs import SharpnessTracker, top_eigs

    calls = {"n": 0}

    def apply(V):
        calls["n"] += 1
        return torch.full_like(V, float("nan"))

    res = top_eigs(apply, d, 1)
    assert not res.converged and torch.isnan(res.values).all() and res.reason == "non-finite Hessian-vector products"
    assert calls["n"] <= 2  # stops at once instead of iterating to maxiter on NaN
    lam = torch.linspace(0.0, 1.0, d, dtype=torch.float64)
    lam[-1] = 3.0  # a gap: the top eigenvalue converges fast
    p = rodflow.Problem.from_loss(lambda w: 0.5 * (lam * w * w).sum(), torch.ones(d, dtype=torch.float64), check=False)
    tracker = SharpnessTracker(p, 1)
    assert tracker(p.w0).converged
    good = tracker.basis.clone()
    p.hvp_operator = lambda w: apply  # a point where the HVP breaks: the warm start survives it
    assert not tracker(p.w0).converged and torch.equal(tracker.basis, good)
