"""The fourth-order stabilised integrator ``srk4``: its derived coefficient table (order conditions, damped
stability interval, embedded estimate), order 4 on linear and nonlinear systems, stability far beyond DOPRI's
interval from its own stiffness estimate, dense output at integer times within the tolerance, exact resume."""

import math

import numpy as np
import pytest
import torch

from rodflow import integrators, problems, processes
from rodflow.integrators import DormandPrince, IntegrationError, StabilizedRK4
from rodflow.integrators.dense import hermite5
from rodflow.integrators.srk4 import BETAS, ROWS, stages_for
from test_integrators import _linear_system  # y' = A y, symmetric A with rates 0.05..40, known solution

F64 = torch.float64


def _tableau(row):
    """The full Butcher tableau of one row (m Euler stages, 4 finishing stages) and the embedded weights on
    the tableau extended by f(y1)."""
    taus, (a21, a31, a32, a41, a42, a43) = np.array(row["taus"]), row["a"]
    m = len(taus)
    n = m + 4
    A, b = np.zeros((n, n)), np.zeros(n)
    for j in range(1, m + 1):
        A[j, :j] = taus[:j]
    fin = np.array([[0, 0, 0, 0], [a21, 0, 0, 0], [a31, a32, 0, 0], [a41, a42, a43, 0]])
    for i in range(4):
        A[m + i, :m], A[m + i, m:] = taus, fin[i]
    b[:m], b[m:] = taus, row["b"]
    Ae = np.zeros((n + 1, n + 1))
    Ae[:n, :n], Ae[n, :n] = A, b
    bhat = np.concatenate([taus, row["bhat"]])
    return A, b, Ae, bhat


def _order_residuals(A, b):
    c = A.sum(1)
    return np.array([b.sum() - 1, b @ c - 1 / 2, b @ c**2 - 1 / 3, b @ A @ c - 1 / 6, b @ c**3 - 1 / 4,
                     b @ (c * (A @ c)) - 1 / 8, b @ A @ c**2 - 1 / 12, b @ A @ A @ c - 1 / 24])


@pytest.mark.parametrize("m", range(len(ROWS)))
def test_table_rows_are_fourth_order_with_a_third_order_estimate_and_a_damped_interval(m):
    A, b, Ae, bhat = _tableau(ROWS[m])
    assert np.abs(_order_residuals(A, b)).max() < 1e-12  # all 8 conditions of order 4
    res_hat = _order_residuals(Ae, bhat)
    assert np.abs(res_hat[:4]).max() < 1e-12  # embedded: order 3 ...
    assert np.linalg.norm(res_hat[4:]) > 1e-3  # ... and not 4 (the estimate does not vanish)
    # the implementation's stability function on y' = x y (one step of the actual code) stays under the
    # damping bound 0.95 + 0.05 e^x on [−β, 0], and the step is unstable not far beyond β
    xs = -np.linspace(0.0, ROWS[m]["beta"], 400)
    integ = StabilizedRK4(lambda y: y, torch.ones(1, dtype=F64), spectral_radius=lambda y: 1.0)
    for x in xs:
        integ.f = lambda y, x=x: x * y
        integ.y = torch.ones(1, dtype=F64)
        integ.fy = integ.f(integ.y)
        y1, _, _ = integ._step(1.0, m)
        assert abs(float(y1)) <= 0.95 + 0.05 * math.exp(x) + 1e-9, (m, x, float(y1))
    integ.f = lambda y: -1.5 * ROWS[m]["beta"] * y
    integ.y = torch.ones(1, dtype=F64)
    integ.fy = integ.f(integ.y)
    assert abs(float(integ._step(1.0, m)[0])) > 1.0


def test_stage_choice_covers_the_step():
    assert stages_for(0.5) == 0 and stages_for(BETAS[3]) == 3 and stages_for(BETAS[3] * 1.0001) == 4
    assert stages_for(1e9) == len(BETAS) - 1
    assert all(b2 > b1 for b1, b2 in zip(BETAS, BETAS[1:]))
    assert BETAS[-1] / (len(BETAS) + 3) ** 2 > 0.34  # β ≈ 0.35 s² for the largest method


def _fixed_steps(f, y0, h, T, m):
    integ = StabilizedRK4(f, y0, spectral_radius=lambda y: 1.0)
    y, fy = y0.clone(), f(y0)
    for _ in range(round(T / h)):
        integ.y, integ.fy = y, fy
        y, fy, _ = integ._step(h, m)
    return y


@pytest.mark.parametrize("m", [0, 1, 6, 16])
def test_srk4_is_fourth_order_on_a_linear_system_with_a_known_solution(m):
    A, y0, exact, lam = _linear_system()
    errs = []
    for h in (0.02, 0.01, 0.005):  # h·40 within every row's interval
        errs.append(float((_fixed_steps(lambda y: A @ y, y0, h, 2.0, m) - exact(2.0)).norm()))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(3.85 < o < 4.2 for o in orders), orders


@pytest.mark.parametrize("m", [0, 3, 16])
def test_srk4_is_fourth_order_on_a_nonlinear_system(m):
    f = lambda y: torch.stack([0.1 - y[1] * y[0], y[0] - 0.5 * y[1] ** 2])  # noqa: E731
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ref = _fixed_steps(f, y0, 0.001, 2.0, 0)
    errs = [float((_fixed_steps(f, y0, h, 2.0, m) - ref).norm()) for h in (0.2, 0.1, 0.05)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(3.85 < o < 4.2 for o in orders), orders  # measured 4.02-4.13


def test_srk4_is_stable_far_beyond_dopri_interval_with_its_own_stiffness_estimate():
    lam = torch.logspace(-2, 3, 60, dtype=F64)
    y0 = torch.ones(60, dtype=F64)
    integ = StabilizedRK4(lambda y: -lam * y, y0, rtol=1e-6, atol=1e-9)  # power iteration, no radius given
    y = integ.advance_to(60.0)
    assert float((y - y0 * torch.exp(-lam * 60.0)).abs().max()) < 1e-5
    assert integ.rho >= float(lam.max())
    assert integ.h_old * float(lam.max()) > 30 * 3.3  # accepted steps 30x beyond DOPRI's stability limit
    dp = DormandPrince(lambda t, y: -lam * y, y0, rtol=1e-6, atol=1e-9)
    dp.advance_to(60.0)
    assert integ.nfev < dp.nfev / 8  # measured 11 892 vs 109 160


@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_srk4_dense_output_at_integer_times_is_within_the_tolerance(rtol):
    """What is read at integer times between step ends is covered by the error control: the error stays at
    the tolerance's scale (global error over 30 time units, fast and slow modes)."""
    A, y0, exact, _ = _linear_system()
    integ = StabilizedRK4(lambda y: A @ y, y0, rtol=rtol, atol=rtol, grid=1.0)
    between, worst = 0, 0.0
    for T in range(1, 31):
        y = integ.advance_to(float(T))
        between += integ.t > T
        worst = max(worst, float((y - exact(float(T))).abs().max()))
    assert between > 10  # most values came from the interpolant
    assert worst < 10 * rtol, worst
    # the dense check is what holds the interpolant: without it, the long steps' mid-values are worse
    loose = StabilizedRK4(lambda y: A @ y, y0, rtol=rtol, atol=rtol, grid=1.0)
    loose._dense_error = lambda h, y1, f1: 0.0
    worst_loose = max(float((loose.advance_to(float(T)) - exact(float(T))).abs().max()) for T in range(1, 31))
    assert worst_loose > worst


def test_hermite5_is_exact_for_quintics():
    y = lambda t: torch.tensor([t**5 - 2 * t**3 + t, 1.0 - t**4], dtype=F64)  # noqa: E731
    dy = lambda t: torch.tensor([5 * t**4 - 6 * t**2 + 1, -4 * t**3], dtype=F64)  # noqa: E731
    pts = [(t, y(t), dy(t)) for t in (0.0, 1.5, 2.25)]
    for t in (0.3, 1.0, 1.9, 2.25):
        assert torch.allclose(hermite5(*pts, t), y(t), rtol=0, atol=1e-12)


def test_srk4_resume_is_bit_identical():
    A, y0, _, _ = _linear_system()
    f = lambda y: A @ y + 0.1 * torch.sin(y)  # noqa: E731
    full = StabilizedRK4(f, y0, rtol=1e-6, atol=1e-8, grid=1.0)
    half = StabilizedRK4(f, y0, rtol=1e-6, atol=1e-8, grid=1.0)
    for T in range(1, 8):
        half.advance_to(float(T))
    state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in half.state_dict().items()}
    resumed = StabilizedRK4(f, torch.zeros_like(y0), rtol=1e-6, atol=1e-8, grid=1.0)
    resumed.load_state_dict(state)
    for T in range(1, 20):
        a = full.advance_to(float(T))
        if T >= 8:
            assert torch.equal(a, resumed.advance_to(float(T)))
    assert (resumed.nfev, resumed.naccept, resumed.h) == (full.nfev, full.naccept, full.h)


@pytest.mark.parametrize("method", ["rod_flow", "gradient_flow"])
def test_flow_resume_with_srk4_is_bit_identical(method):
    p = problems.make("sharp-valley")
    a, b = processes.make(method, p, 0.3, integrator="srk4"), processes.make(method, p, 0.3, integrator="srk4")
    a.start(p.w0)
    b.start(p.w0)
    for _ in range(60):
        a.advance()
        b.advance()
    c = processes.make(method, p, 0.3, integrator="srk4")
    c.load_state_dict(b.state_dict())
    for _ in range(60):
        a.advance()
        c.advance()
        assert torch.equal(a.point(), c.point())


def test_srk4_fails_fast_on_a_field_that_turns_non_finite():
    f = lambda y: torch.where(y.abs() < 2.0, y, torch.full_like(y, math.nan))  # noqa: E731
    integ = StabilizedRK4(f, torch.ones(2, dtype=F64), rtol=1e-6, atol=1e-9)
    with pytest.raises(IntegrationError):
        integ.advance_to(10.0)
    assert integ.nfev < 2000


def test_make_builds_srk4():
    integ = integrators.make("srk4", lambda t, y: -y, torch.ones(3, dtype=F64), rtol=1e-8, atol=1e-10)
    assert isinstance(integ, StabilizedRK4)
    assert float((integ.advance_to(2.0) - math.exp(-2.0)).abs().max()) < 1e-7
