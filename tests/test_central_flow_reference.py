"""Our GD and central flow against the public reference implementation on its 433-parameter swish MLP.

Data: tests/data/central_flow_reference.npz, a compact extract of shared/reference/central_flow_mlp_swish.npz
(tests/data/make_central_flow_reference.py). The full 1000-step run takes minutes, so the central flow is
restarted from the reference's own iterate at windows spread along the run (before the edge, across the
onset at t = 489, during the EoS, near the end) and compared at every step of each window; the
uninterrupted run is benchmarks/bench_central_flow.py.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from rodflow.problems.reference_mlp import mlp_problem, reference_data
from rodflow.processes import make

DATA = Path(__file__).parent / "data" / "central_flow_reference.npz"
ONSET = 489  # the reference's first step with X ≠ 0


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def problem(ref):
    return mlp_problem(ref["x"], ref["y"], ref["w0"])


def test_problem_is_the_reference_problem(ref, problem):
    x, y, w0 = reference_data()
    assert np.array_equal(x, ref["x"]) and np.array_equal(y, ref["y"]) and np.array_equal(w0, ref["w0"])
    assert problem.d == 433
    assert float(problem.loss(problem.w0)) == pytest.approx(ref["gd_loss"][0], rel=1e-15)


def test_gd_matches_step_by_step_until_it_turns_chaotic(ref, problem):
    lr = float(ref["lr"])
    gd = make("gd", problem, lr)
    gd.start(problem.w0)
    rows = {int(t): i for i, t in enumerate(ref["gd_rows"])}
    for t in range(551):
        obs = gd.observe()
        assert obs.scalars["loss"] == pytest.approx(ref["gd_loss"][t], rel=1e-10, abs=0), t
        if t in rows:
            err = np.abs(obs.point.numpy() - ref["w_gd"][rows[t]]).max()
            assert err < (1e-12 if t <= 500 else 1e-6), (t, err)
        gd.advance()


@pytest.mark.parametrize("window", [0, 1, 2, 3])
def test_central_flow_windows(ref, problem, window):
    lr = float(ref["lr"])
    t0, n = (int(v) for v in ref["windows"][window])
    row = {int(t): i for i, t in enumerate(ref["cf_rows"])}
    proc = make("central_flow", problem, lr)
    proc.start(torch.as_tensor(ref["w_cf"][row[t0]]))
    first_active = None
    for t in range(t0, t0 + n + 1):
        obs = proc.observe()
        s = obs.scalars
        err = np.abs(obs.point.numpy() - ref["w_cf"][row[t]]).max()
        if t <= ONSET:  # plain Euler gradient flow: equal up to summation order
            assert err < 1e-12, (t, err)
        else:
            assert err < 1e-5, (t, err)
        assert s["loss"] == pytest.approx(ref["cf_loss"][t], rel=1e-6)
        assert s["loss_pred"] == pytest.approx(ref["cf_loss_pred"][t], rel=5e-3)
        assert s["loss_pred"] == pytest.approx(ref["cf_loss"][t] + ref["cf_X_trace"][t], rel=5e-3)
        # tr Σ = η tr X (the reference's eigenvectors have UᵀU = η I)
        trX = s["trace_sigma"] / lr
        if t >= ONSET + 5:
            assert trX == pytest.approx(ref["cf_X_trace"][t], rel=1e-3)
        assert (trX > 0) == (ref["cf_X_trace"][t] > 0), t
        if t <= ONSET:
            assert lr * s["tracked_sharpness"] == pytest.approx(ref["cf_eig_eff_1"][t], rel=1e-6)
        else:  # both held at the edge: the reference locks it at 2 within ±5e-6
            assert lr * s["tracked_sharpness"] == pytest.approx(ref["cf_eig_eff_1"][t], abs=1e-5)
        if trX > 0:
            first_active = first_active or t
            assert s["qp_residual"] < 1e-8
        proc.advance()
    if t0 < ONSET < t0 + n:
        assert first_active == ONSET
    if t0 > ONSET:  # held at the edge: effective sharpness 2 within the reference's ±5e-6
        assert lr * s["tracked_sharpness"] == pytest.approx(2.0, abs=1e-5)
