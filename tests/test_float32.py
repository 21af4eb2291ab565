"""float32 against float64, with tolerances derived from float32's precision.

eps32 = 2^-23 ≈ 1.2e-7 is float32's machine epsilon. The bounds used below:
- eigenvalues: a converged LOBPCG pair has relative residual ≤ tol32 = `default_tol(float32)` = 100·eps32, which
  bounds its eigenvalue error by the same amount; float32 HVPs perturb the operator by O(eps32) relative. So a
  float32 sharpness is within 2·tol32 of the float64 one (at the same point).
- GD: each step rounds w and the gradient, O(eps32) relative per step, so after t steps (below the edge of
  stability, where errors are not amplified) the iterates differ by at most ~ t·eps32; the test allows 4·(t+1)·eps32.
- adaptive flows (gradient flow, rod flow): the difference is the integration error, bounded by the
  float32 tolerances (rtol 3e-5, `default_tolerances`), which are themselves set a few hundred eps32 above
  rounding; the test allows 10·rtol32.
- central flow (fixed substeps, no adaptive tolerance): rounding plus the eigen-tolerance tol32 in the critical
  projection; the test allows 10·tol32.
"""

import numpy as np
import pytest
import torch

import rodflow
from rodflow.linalg.eigs import default_tol, top_eigs
from rodflow.processes.gradient_flow import default_tolerances

EPS32 = torch.finfo(torch.float32).eps
TOL32 = default_tol(torch.float32)
# the flows' float32-vs-float64 bound unit: rkc's float32 rtol; with the default srk4 (rtol 3e-4, fourth order) the
# measured differences are 3.2e-5 (gradient flow) and 1.8e-7 (rod flow), inside 10x this
RTOL32 = default_tolerances(torch.float32, "rkc")[0]

NETWORKS = [
    # the found defect: this network's float32 sharpness stalled at 7.19 (true 7.98) with residual 2.0
    ("mlp-digits", dict(n=256, classes=4, width=24, depth=2, activation="tanh", seed=31, loss="mse")),
    ("mlp-digits", dict(n=128, classes=3, width=40, depth=3, activation="gelu", seed=7, loss="mse")),
    ("mlp-digits", dict(n=96, classes=5, width=16, depth=2, activation="relu", seed=2, loss="ce")),
    ("cnn-digits", dict(n=24, classes=3, width=4, depth=2, seed=1, loss="mse")),
    ("transformer-sorting", dict(n=16, width=12, depth=1, heads=2, seed=4)),
]


@pytest.mark.parametrize("name,kw", NETWORKS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NETWORKS)])
@pytest.mark.parametrize("k", [1, 3])
def test_float32_top_eigenvalues_converge_to_the_float64_ones(name, kw, k):
    p64 = rodflow.problems.make(name, **kw)
    p32 = p64.to("float32")
    ref = top_eigs(p64.hvp_operator(p64.w0), p64.d, k, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert ref.converged
    got = top_eigs(p32.hvp_operator(p32.w0), p32.d, k, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    assert got.converged, got.reason
    assert got.values.dtype == torch.float32 and got.vectors.dtype == torch.float32
    scale = float(ref.values.abs().max())
    err = (got.values.double() - ref.values).abs().max().item()
    assert err <= 2 * TOL32 * scale, (got.values, ref.values)


@pytest.mark.parametrize("algebra", [torch.float64, torch.float32])
def test_float32_block_algebra_also_converges(algebra):
    """MPS has no float64: its block algebra runs in float32, where the Gram-matrix Rayleigh-Ritz keeps it exact."""
    name, kw = NETWORKS[0]
    p32 = rodflow.problems.make(name, dtype="float32", **kw)
    got = top_eigs(p32.hvp_operator(p32.w0), p32.d, 2, dtype=torch.float32, algebra=algebra,
                   generator=torch.Generator().manual_seed(0))
    dense = torch.linalg.eigvalsh(rodflow.problems.make(name, **kw).hessian(p32.w0.double())).flip(0)[:2]
    assert got.converged, got.reason
    assert (got.values.double() - dense).abs().max() <= 2 * TOL32 * dense[0]


def test_unconverged_sharpness_is_nan_with_a_reason(monkeypatch):
    from rodflow.linalg.eigs import SharpnessTracker
    from rodflow.measurements import sharpness

    class Starved(SharpnessTracker):  # an eigensolver that cannot converge in its iteration budget
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw, maxiter=2)

    monkeypatch.setattr(sharpness, "SharpnessTracker", Starved)
    p = rodflow.problems.make("mlp-digits", n=32, classes=3, width=8, depth=1)
    with pytest.warns(rodflow.RodflowWarning, match="did not converge.*recorded as NaN"):
        r = rodflow.simulate(p, lr=0.1, steps=4, methods=["gd"], sharpness_every=2, progress=False)
    df = r.method("gd")
    rows = df[df["eig_converged"].notna()]
    assert len(rows) == 3 and (rows["eig_converged"] == 0).all()
    assert rows["sharpness"].isna().all()
    assert rows["sharpness_reason"].str.contains("maxiter=2").all()
    assert (rows["eig_residual"] > 0).all()
    assert int(r.summary().set_index("method").loc["gd", "sharpness_nan"]) == 3


def test_every_process_in_float32_matches_float64():
    p = rodflow.problems.make("mlp-digits", n=24, classes=3, width=6, depth=2, activation="tanh", seed=3)
    s0 = float(top_eigs(p.hvp_operator(p.w0), p.d, 1).values[0])
    lr = 2 * 0.9 / s0  # below the edge of stability: rounding differences are not amplified
    methods = ["gd", "gradient_flow", "central_flow", "rod_flow"]
    kw = dict(lr=lr, steps=40, methods=methods, sharpness_every=10, progress=False)
    r64 = rodflow.simulate(p, dtype="float64", **kw)
    r32 = rodflow.simulate(p, dtype="float32", **kw)
    bound = {"gd": 4 * (np.arange(41) + 1) * EPS32, "gradient_flow": 10 * RTOL32, "rod_flow": 10 * RTOL32,
             "central_flow": 10 * TOL32}
    for m in methods:
        assert r32.status[m] == "ok" and r64.status[m] == "ok", (m, r32.status, r64.status)
        w64, w32 = r64.iterates[m].astype(float), r32.iterates[m].astype(float)
        assert r32.iterates[m].dtype == np.float32
        rel = np.linalg.norm(w32 - w64, axis=1) / np.linalg.norm(w64, axis=1)
        assert np.all(rel <= bound[m]), (m, rel.max())
        d64, d32 = r64.method(m), r32.method(m)
        assert np.allclose(d32["loss_pred"], d64["loss_pred"], rtol=10 * np.max(bound[m]), atol=0), m
        s64, s32 = d64["sharpness"].dropna(), d32["sharpness"].dropna()
        assert len(s32) == len(s64) == 5
        # the sharpness at the two points differs by the eigen-tolerance plus the points' difference (a few times
        # the iterate bound, the Hessian being Lipschitz on this scale)
        assert np.all(np.abs(s32 - s64) <= (2 * TOL32 + 10 * np.max(bound[m])) * s64), m


def test_rod_seed_uses_the_run_precision():
    """The rounding seed is float32's unit roundoff in float32: its standard deviation is 2^29 (= eps32/eps64)
    times float64's at the same state, as GD's rounding is."""
    from rodflow.processes.rod_flow import rounding_variance, ulp

    a = torch.tensor([1.0, 0.3, -1e-3, 7.5])
    assert torch.equal(ulp(a.float()).double() / ulp(a.double()), torch.full((4,), 2.0**29, dtype=torch.float64))
    c, delta, step = a, torch.tensor([1e-4, -2e-4, 3e-5, 1e-6]), torch.tensor([0.2, 0.1, 0.05, 1.0])
    v64 = rounding_variance(c.double(), delta.double(), step.double())
    v32 = rounding_variance(c.float(), delta.float(), step.float())
    assert v32.dtype == torch.float32
    assert abs(float(v32) / float(v64) / 2.0**58 - 1) < 10 * EPS32


@pytest.mark.parametrize("kw", [dict(n=16, width=6, depth=2, seed=1), dict(n=12, width=5, depth=2, seed=4,
                                                                        activation="gelu")])
def test_gfs_sharpness_in_float32_agrees_with_float64(kw):
    """φ in float32 is within the two solves' error estimates plus float32 eigen-tolerance of φ in float64; the
    error estimate itself is finite. The point is the float64 w0 rounded to float32, a difference of eps32
    relative, which moves φ by far less than the estimates."""
    from rodflow.gfs import gfs_sharpness

    p64 = rodflow.problems.make("mlp-teacher", **kw)
    p32 = p64.to("float32")
    r64, r32 = gfs_sharpness(p64), gfs_sharpness(p32)
    assert np.isfinite(r64.sharpness) and np.isfinite(r32.sharpness), (r64.reason, r32.reason)
    assert np.isfinite(r32.error) and r32.error > 0
    bound = r64.error + r32.error + 2 * TOL32 * abs(r64.sharpness)
    assert abs(r32.sharpness - r64.sharpness) <= bound, (r32.sharpness, r64.sharpness, bound)
