"""Rod flow: the model's properties (science.md §3), its onset seed, its process contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rodflow import Problem, RodflowError, problems, processes, simulate
from rodflow.processes.rod_flow import rounding_variance, ulp
from rodflow.rod_theory import fit_rate, onset_step, run_gd, run_rod, top_sharpness

torch.set_num_threads(1)


def quadratic(lams, center=None):
    lam = torch.tensor(lams, dtype=torch.float64)
    ctr = torch.zeros_like(lam) if center is None else torch.tensor(center, dtype=torch.float64)
    return Problem.from_loss(lambda w: 0.5 * (lam * (w - ctr) ** 2).sum(), torch.ones_like(lam))


# ------------------------------------------------------------------------------------------ theory
@pytest.mark.parametrize("S", [8.0, 12.0, 14.0])
def test_quadratic_rod_grows_iff_above_threshold_at_rate_eta_S_minus_2(S):
    eta = 0.2  # 2/η = 10
    prob = quadratic([1.0, S])
    c = torch.zeros(2, dtype=torch.float64)
    delta = torch.tensor([1e-3, 1e-6], dtype=torch.float64)
    lengths = run_rod(prob, eta, 30, c=c, delta=delta, seed="none")["rod_length"]
    rate = fit_rate(np.arange(10, 31), lengths[10:])  # after the λ=1 direction has died out
    assert rate == pytest.approx(eta * S - 2, abs=2e-4)
    assert (lengths[-1] > lengths[0]) == (S > 2 / eta)


def test_quartic_rod_settles_on_gd_period_two_orbit_with_secant_sharpness_2_over_eta():
    S, Q, eta = 12.0, 1.0, 0.2
    prob = problems.make("quartic", S=S, Q=Q, w0=0.01)
    star = math.sqrt((S - 2 / eta) / Q)
    gd = run_gd(prob, eta, 400)
    assert np.abs(gd[-2:, 0]) == pytest.approx([star, star], rel=1e-9)  # GD's own orbit is ±δ*
    rod = run_rod(prob, eta, 400)
    assert rod["rod_length"][-1] == pytest.approx(star, rel=1e-6)
    assert abs(rod["centre"][-1, 0]) < 1e-6
    assert rod["secant"][-1] == pytest.approx(2 / eta, rel=1e-6)
    # ends predict GD's iterates once both have settled
    assert np.abs(rod["end_iterate"][-1] - gd[-1]).max() < 1e-5


def test_delta_zero_reduces_to_gradient_flow():
    prob = problems.make("sharp-valley")
    eta = 0.3
    rod = run_rod(prob, eta, 40, c=prob.w0, delta=torch.zeros(2, dtype=torch.float64))
    assert np.all(rod["rod_length"] == 0.0)  # δ = 0 is invariant, even with the seed on
    gf = processes.make("gradient_flow", prob, eta, integrator="dopri")  # the same integrator as the rod's
    gf.start(prob.w0)
    for _ in range(40):
        gf.advance()
    assert np.abs(rod["centre"][-1] - gf.point().numpy()).max() < 1e-7


@pytest.mark.parametrize("integrator", ["dopri", "rkc"])
def test_equations_are_odd_in_delta(integrator):
    prob = problems.make("self-stabilization")
    c = torch.tensor([0.3, 2.5], dtype=torch.float64)
    d = torch.tensor([0.05, -0.02], dtype=torch.float64)
    a = run_rod(prob, 0.1, 30, c=c, delta=d, integrator=integrator)
    b = run_rod(prob, 0.1, 30, c=c, delta=-d, integrator=integrator)
    assert np.array_equal(a["centre"], b["centre"])
    assert np.array_equal(a["delta"], -b["delta"])
    rf = processes.make("rod_flow", prob, 0.1)
    y = torch.cat([c, d])
    f1, f2 = rf.field(0.0, y), rf.field(0.0, torch.cat([c, -d]))
    assert torch.equal(f1[:2], f2[:2]) and torch.equal(f1[2:], -f2[2:])


def test_self_stabilization_centre_sharpness_cycles_around_2_over_eta_while_gradient_flow_rises():
    """On the caricature ½yx² − αy the rod enters relaxation cycles around 2/η (x collapses deep below the
    threshold, so y overshoots before the rod reopens); their time average sits at 2/η."""
    eta, T = 0.1, 400
    prob = problems.make("self-stabilization", w0=(0.5, 15.0))
    rod = run_rod(prob, eta, T)
    gf = processes.make("gradient_flow", prob, eta)
    gf.start(prob.w0)
    for _ in range(T):
        gf.advance()
    s_rod = np.array([top_sharpness(prob, c) for c in rod["centre"][100::2]])
    assert abs(s_rod.mean() / (2 / eta) - 1) < 0.05
    assert s_rod.max() < 1.35 * (2 / eta)
    assert top_sharpness(prob, gf.point().numpy()) > 2.0 * (2 / eta)


# ------------------------------------------------------------------------------------------- onset
@pytest.fixture(scope="module")
def valley():
    """Sharp valley with a faster drift (ε = 0.03): GD's oscillation collapses below the rounding level."""
    prob = problems.make("sharp-valley", eps=0.03, w0=(0.1, 3.5))
    eta, T = 0.3, 750
    gd = run_gd(prob, eta, T + 1)
    osc = np.linalg.norm(gd[2:] - 2 * gd[1:-1] + gd[:-2], axis=1) / 4  # period-2 amplitude at t = 1..T
    osc = np.concatenate([[np.nan], osc])
    seeded = run_rod(prob, eta, T)
    bare = run_rod(prob, eta, T, seed="none")
    return dict(prob=prob, eta=eta, osc=osc, seeded=seeded, bare=bare)


def test_onset_with_rounding_seed_matches_gd_and_without_it_is_late(valley):
    level = 0.1 * np.nanmedian(valley["osc"][-100:])
    t_gd = onset_step(valley["osc"], level)
    t_seed = onset_step(valley["seeded"]["rod_length"], level)
    t_bare = onset_step(valley["bare"]["rod_length"], level)
    assert t_gd is not None and t_seed is not None
    assert abs(t_seed - t_gd) <= 0.05 * t_gd
    assert t_bare is None or (t_bare > t_gd and abs(t_bare - t_gd) > 2 * abs(t_seed - t_gd))
    # without the seed the rod collapses far below the rounding level at which the seed holds it
    assert np.nanmin(valley["bare"]["rod_length"]) < 1e-3 * np.nanmin(valley["seeded"]["rod_length"])


def test_sharp_valley_centre_settles_at_2_over_eta(valley):
    eta, prob = valley["eta"], valley["prob"]
    s = np.array([top_sharpness(prob, c) for c in valley["seeded"]["centre"][-80::4]]) / (2 / eta)
    assert abs(s.mean() - 1) < 0.01 and np.abs(s - 1).max() < 0.05  # a damped oscillation about 2/η


def test_rounding_variance_is_ulp_of_the_operands_along_the_rod():
    c = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    assert ulp(c).tolist() == [2.0**-52, math.ulp(1e-3)]
    assert ulp(torch.zeros(1, dtype=torch.float64)).item() == 0.0
    delta = torch.tensor([1e-20, 0.0], dtype=torch.float64)
    var = rounding_variance(c, delta, torch.zeros(2, dtype=torch.float64))
    assert var.item() == pytest.approx(math.ulp(1.0) ** 2 / 12, rel=1e-12)  # only along the rod's direction
    c32 = c.to(torch.float32)
    assert ulp(c32)[0].item() == 2.0**-23


# ------------------------------------------------------------------------------------------ process
def test_two_gradients_per_call_and_correction_costs_two_hvps():
    prob = problems.make("sharp-valley")
    for correction, hvps in ((False, 0), (True, 2), ("full", 4), ("both", 4)):
        rf = processes.make("rod_flow", prob, 0.3, correction=correction)
        y = torch.cat([prob.w0, torch.tensor([0.01, 0.0], dtype=torch.float64)])
        with prob.counting() as spent:
            rf.field(0.0, y)
        assert (spent.grad_evals, spent.hvps, spent.d3) == (2, hvps, 0)


def test_correction_brings_centre_closer_to_gd_midpoints():
    eta = 0.02
    prob = problems.make("quadratic", lambdas=(1.0, 4.0, 8.0))  # ηS = 0.16: the correction is O(η²)
    gd = run_gd(prob, eta, 21)
    mid = 0.5 * (gd[1:] + gd[:-1])
    err = {}
    for correction in (False, True):
        rod = run_rod(prob, eta, 20, correction=correction)
        err[correction] = np.abs(rod["centre"] - mid).max()
    assert err[True] < 0.5 * err[False]


def test_full_correction_adds_the_half_vector_part_of_the_centres_modified_equation():
    """correction="full" = correction=True plus −½F_δ G = (η/4)(H(c+δ) − H(c−δ))G on the centre (G: δ's field),
    checked against explicit Hessians on a loss with third derivatives; δ's field unchanged; still odd in δ."""
    eta = 0.3
    prob = problems.make("sharp-valley", eps=0.03)
    c = torch.tensor([0.2, 3.0], dtype=torch.float64)
    delta = torch.tensor([0.05, -0.02], dtype=torch.float64)
    y = torch.cat([c, delta])
    centre = processes.make("rod_flow", prob, eta, correction=True).field(0.0, y)
    full = processes.make("rod_flow", prob, eta, correction="full").field(0.0, y)

    def hess(w):  # ½(y + x)x² − ε(x + y), by hand: [[y + 3x, x], [x, 0]]
        x, yy = float(w[0]), float(w[1])
        return torch.tensor([[yy + 3 * x, x], [x, 0.0]], dtype=torch.float64)

    G = full[2:]
    expected = centre[:2] + (eta / 4.0) * (hess(c + delta) - hess(c - delta)) @ G
    assert torch.allclose(full[:2], expected, rtol=1e-12, atol=1e-15)
    assert (full[:2] - centre[:2]).abs().max() > 1e-4  # the term is really there
    assert torch.equal(full[2:], centre[2:])
    flipped = processes.make("rod_flow", prob, eta, correction="full").field(0.0, torch.cat([c, -delta]))
    assert torch.allclose(flipped[:2], full[:2], rtol=1e-13, atol=1e-16)
    assert torch.allclose(flipped[2:], -full[2:], rtol=1e-13, atol=1e-16)


def test_both_correction_adds_the_half_vectors_own_modified_equation():
    """correction="both": the centre as "full", and δ's field G − ½G_c F − ½G_δ G with G_c = (η/2)(H(c+δ) − H(c−δ)),
    G_δ = (η/2)(H(c+δ) + H(c−δ)) − 2, checked against explicit Hessians on a loss with third derivatives; odd in δ."""
    eta = 0.3
    prob = problems.make("sharp-valley", eps=0.03)
    c = torch.tensor([0.2, 3.0], dtype=torch.float64)
    delta = torch.tensor([0.05, -0.02], dtype=torch.float64)
    y = torch.cat([c, delta])
    plain = processes.make("rod_flow", prob, eta, seed="none").field(0.0, y)
    full = processes.make("rod_flow", prob, eta, seed="none", correction="full").field(0.0, y)
    both = processes.make("rod_flow", prob, eta, seed="none", correction="both").field(0.0, y)

    def hess(w):  # ½(y + x)x² − ε(x + y), by hand: [[y + 3x, x], [x, 0]]
        x, yy = float(w[0]), float(w[1])
        return torch.tensor([[yy + 3 * x, x], [x, 0.0]], dtype=torch.float64)

    F, G = plain[:2], plain[2:]
    Hp, Hm = hess(c + delta), hess(c - delta)
    expected = G - 0.5 * (eta / 2.0) * (Hp - Hm) @ F - 0.5 * ((eta / 2.0) * (Hp + Hm) @ G - 2.0 * G)
    assert torch.equal(both[:2], full[:2])
    assert torch.allclose(both[2:], expected, rtol=1e-12, atol=1e-15)
    assert (both[2:] - G).abs().max() > 1e-3  # the term is really there
    flipped = processes.make("rod_flow", prob, eta, seed="none", correction="both").field(0.0, torch.cat([c, -delta]))
    assert torch.allclose(flipped[:2], both[:2], rtol=1e-13, atol=1e-16)
    assert torch.allclose(flipped[2:], -both[2:], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("eta_lam", [0.3, 1.0 + 1e-3, 1.5, 1.9, 2.0, 2.1, 3.0, 5.0])
def test_both_correction_rate_of_a_mode_on_a_quadratic(eta_lam):
    """On a quadratic, δ along an eigenvector with y = ηλ − 2: correction="both" gives δ the rate y − y²/2 (the
    second-order truncation of GD's ln(1 + y): its sign is right for ηλ < 4, wrong beyond); with
    rate="gd-multiplier" the rate is GD's per-step log-multiplier ln(ηλ − 1) exactly, both sides of 2/η, and
    −max_decay where ηλ − 1 < e^−max_decay (ηλ ≤ 1: GD does not oscillate there). The centre does not move."""
    eta, lam_other = 0.1, 4.0
    lam = eta_lam / eta
    prob = quadratic([lam, lam_other])
    c = torch.zeros(2, dtype=torch.float64)
    delta = torch.tensor([1e-3, 0.0], dtype=torch.float64)
    y = torch.cat([c, delta])
    yy = eta_lam - 2.0
    both = processes.make("rod_flow", prob, eta, seed="none", correction="both").field(0.0, y)
    assert float(both[2] / delta[0]) == pytest.approx(yy - 0.5 * yy * yy, rel=1e-10, abs=1e-12)
    assert both[3] == 0.0 and torch.all(both[:2] == 0.0)
    gdm = processes.make("rod_flow", prob, eta, seed="none", correction="both", rate="gd-multiplier").field(0.0, y)
    expected = math.log(eta_lam - 1.0) if eta_lam - 1.0 > math.exp(-4.0) else -4.0
    assert float(gdm[2] / delta[0]) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert (float(gdm[2]) > 0) == (eta_lam > 2.0)


def test_both_correction_with_gd_multiplier_follows_gd_per_step_on_a_quadratic_mode():
    """Integrated, the rod's δ along a mode of a quadratic changes by GD's multiplier |ηλ − 1| per step, below and
    above the threshold (GD: period-2 amplitude × (ηλ − 1) each step)."""
    eta = 0.1
    for eta_lam in (1.8, 2.2):
        prob = quadratic([eta_lam / eta, 3.0])
        c = torch.zeros(2, dtype=torch.float64)
        delta = torch.tensor([1e-4, 0.0], dtype=torch.float64)
        rod = run_rod(prob, eta, 10, c=c, delta=delta, seed="none", correction="both", rate="gd-multiplier",
                      rtol=1e-10, atol=1e-14, rod_rtol=1e-10)
        assert rod["delta"][-1, 0] / 1e-4 == pytest.approx(abs(eta_lam - 1.0) ** 10, rel=1e-6)


@pytest.mark.parametrize("rate", ["linear", "gd-multiplier"])
def test_both_correction_keeps_the_quartic_period_two_orbit(rate):
    S, Q, eta = 12.0, 1.0, 0.2
    prob = problems.make("quartic", S=S, Q=Q, w0=0.01)
    star = math.sqrt((S - 2 / eta) / Q)
    rod = run_rod(prob, eta, 400, correction="both", rate=rate)
    assert rod["rod_length"][-1] == pytest.approx(star, rel=1e-6)
    assert abs(rod["centre"][-1, 0]) < 1e-6
    assert rod["secant"][-1] == pytest.approx(2 / eta, rel=1e-6)


def test_both_correction_enters_the_edge_of_stability_with_gd_on_the_self_stabilization_toy():
    """The self-stabilization toy (w0 = (0.5, 15), η = 0.1), where correction="full" doubled the distance to GD: with
    the whole rod's second-order equation (alone and with rate="gd-eigen") the first loss spike and the onset come
    within one step of GD's (measured: 83 / 109 both; the default 80 / 98) and the mean distance to GD falls by more
    than half (0.48 against 2.02)."""
    prob = problems.make("self-stabilization", w0=(0.5, 15.0))
    out = {}
    for name, opts in (("default", {}), ("both", {"correction": "both"}),
                       ("gd-eigen", {"correction": "both", "rate": "gd-eigen"})):
        res = simulate(prob, 0.1, 130, methods="gd,rod_flow", progress=False, sharpness_every=0,
                       options={"rod_flow": opts})
        out[name] = res.summary().set_index("method")
    gd, default = out["both"].loc["gd"], out["default"].loc["rod_flow"]
    assert default["first_spike_step"] <= gd["first_spike_step"] - 5  # the default is early: the test can fail
    for name in ("both", "gd-eigen"):
        rod = out[name].loc["rod_flow"]
        assert abs(rod["first_spike_step"] - gd["first_spike_step"]) <= 1, name
        assert abs(rod["onset_step"] - gd["onset_step"]) <= 1, name
        assert rod["dist_mean"] < 0.5 * default["dist_mean"], name


@pytest.mark.parametrize("seed", [0, 2])
def test_full_correction_brings_the_centre_closer_to_gd_after_a_large_first_oscillation(seed):
    """A tiny MLP started at ηS₀ = 1.9 (GD oscillates hard from step 0, as on the demo): over 40 steps the centre's
    mean distance to GD's midpoints falls from no correction to correction=True to "full" (measured on seeds 0–3:
    0.103 / 0.085 / 0.055, 0.033 / 0.012 / 0.008, 0.061 / 0.044 / 0.028, 0.078 / 0.053 / 0.033)."""
    from rodflow.linalg.eigs import top_eigs

    p = problems.make("mlp-digits", n=40, classes=4, width=8, depth=2, seed=seed)
    lr = 1.9 / float(top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-9).values[0])
    steps = 40
    gd = run_gd(p, lr, steps + 1)
    mid = 0.5 * (gd[1:] + gd[:-1])[:steps]
    dist = {}
    for correction in (False, True, "full"):
        rod = run_rod(p, lr, steps - 1, correction=correction)
        dist[correction] = np.linalg.norm(rod["centre"] - mid, axis=1).mean()
    assert dist["full"] < 0.8 * dist[True] < 0.8 * dist[False]


def test_simulate_records_rod_outputs_and_ends_match_gd_iterates(tmp_path):
    prob = problems.make("quartic", S=12.0, Q=1.0, w0=0.5)
    res = simulate(prob, 0.2, 60, methods="gd,rod_flow", progress=False, sharpness_every=0)
    df = res.method("rod_flow")
    for col in ("loss", "loss_plus", "loss_minus", "loss_pred", "rod_length", "secant_sharpness"):
        assert df[col].notna().all(), col
    assert np.allclose(df["loss_pred"], 0.5 * (df["loss_plus"] + df["loss_minus"]))
    assert np.allclose(df["rod_length"], np.linalg.norm(res.aux["rod_flow"]["delta"], axis=1))
    ends = res.aux["rod_flow"]["end_iterate"]
    assert np.abs(ends[0] - prob.w0.numpy()).max() == 0.0
    assert np.abs(ends[-1] - res.iterates["gd"][-1]).max() < 1e-4
    summary = res.summary().set_index("method")
    assert summary.loc["rod_flow", "ends_dist_max"] >= summary.loc["rod_flow", "ends_dist_mean"] > 0
    assert np.isnan(summary.loc["gd"].get("ends_dist_mean", np.nan))
    from rodflow.plotting import plot_run

    names = {p.stem for p in plot_run(res, tmp_path / "with")}
    assert {"rod_length", "rod_centre"} <= names
    without = simulate(prob, 0.2, 5, methods="gd,gradient_flow", progress=False, sharpness_every=0)
    assert not {"rod_length", "rod_centre"} & {p.stem for p in plot_run(without, tmp_path / "without")}


def _resumed_pair(prob, lr, before, after, **opts):
    """A rod run ``before`` steps, a second one loaded from its state, then both advanced ``after`` steps."""
    a = processes.make("rod_flow", prob, lr, **opts)
    a.start(prob.w0)
    for _ in range(before):
        a.advance()
    b = processes.make("rod_flow", prob, lr, **opts)
    b.load_state_dict(a.state_dict())
    loaded = (b.last_eig[0], b.last_eig[1].clone()) if getattr(b, "last_eig", None) is not None else None
    for _ in range(after):
        a.advance()
        b.advance()
    return a, b, loaded


@pytest.mark.parametrize("opts", [{}, dict(correction="full"), dict(correction="both", rate="gd-multiplier")])
def test_resume_from_state_dict_is_bit_identical(opts):
    a, b, _ = _resumed_pair(problems.make("sharp-valley"), 0.3, 7, 9, **opts)
    assert torch.equal(a.y, b.y)
    assert a.observe().scalars == b.observe().scalars


@pytest.mark.parametrize(
    "opts", [dict(seed="sometimes"), dict(seed_scale=-1.0), dict(rtol=0.0), dict(max_step=0.0),
             dict(correction="yes"), dict(correction="centre"), dict(rod_rtol=0.0), dict(colour=1)]
)
def test_bad_options_are_one_line_errors(opts):
    with pytest.raises(RodflowError) as err:
        processes.make("rod_flow", problems.make("quadratic"), 0.1, **opts)
    assert "\n" not in str(err.value)


def test_cli_theory_checks_pass_and_write_figures(tmp_path, capsys):
    from rodflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(["theory", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    assert "FAIL" not in out and out.count(" ok") >= 24
    for name in ("threshold", "quartic", "self-stabilization", "sharp-valley", "optimizer_thresholds",
                 "optimizer_quartic"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


# ------------------------------------------------------------------------- rate="gd-eigen" (issue 17)
def _gd_rate(eta_lam, max_decay=4.0):
    return math.log(eta_lam - 1.0) if eta_lam - 1.0 > math.exp(-max_decay) else -max_decay


@pytest.mark.parametrize("correction", ["both", False])
@pytest.mark.parametrize("eta_lam", [0.3, 1.0 + 1e-3, 1.5, 1.9, 2.0, 2.1, 3.0, 5.0, 8.0])
def test_gd_eigen_rate_of_a_tracked_mode_on_a_quadratic(eta_lam, correction):
    """On a quadratic, δ along the top eigenvector gets GD's per-step log-multiplier ln(ηλ − 1) (−max_decay where
    ηλ − 1 < e^−max_decay), also far above 2/η where "both" alone has the wrong sign (ηλ > 4); a mode that is not
    tracked (rate_eigs=1) keeps the δ equation's own rate (y − y²/2 with "both", y without); the centre does not
    move."""
    eta = 0.1
    lams = [eta_lam / eta, 0.2 / eta, 0.1 / eta]
    prob = quadratic(lams)
    c = torch.zeros(3, dtype=torch.float64)
    for i, expected in ((0, _gd_rate(eta_lam)), (2, None)):
        delta = torch.zeros(3, dtype=torch.float64)
        delta[i] = 1e-3
        rod = processes.make("rod_flow", prob, eta, seed="none", correction=correction, rate="gd-eigen", rate_eigs=1)
        rod.start_state(c, delta)
        f = rod.field(0.0, torch.cat([c, delta]))
        assert torch.all(f[:3] == 0.0)
        if expected is None:
            y = 0.1 - 2.0
            expected = y - 0.5 * y * y if correction == "both" else y
        assert float(f[3 + i] / delta[i]) == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert torch.all(f[3:][torch.arange(3) != i] == 0.0)
    assert (_gd_rate(eta_lam) > 0) == (eta_lam > 2.0)


@pytest.mark.parametrize("eta_lam", [1.8, 2.2, 4.5])
def test_gd_eigen_follows_gd_per_step_on_a_quadratic_mode(eta_lam):
    """Integrated over ten steps, δ along a tracked mode changes by GD's multiplier |ηλ − 1| per step — below the
    threshold, above it, and at ηλ = 4.5 where the second-order equation alone would shrink it."""
    eta = 0.1
    prob = quadratic([eta_lam / eta, 3.0])
    c = torch.zeros(2, dtype=torch.float64)
    delta = torch.tensor([1e-4, 0.0], dtype=torch.float64)
    rod = run_rod(prob, eta, 10, c=c, delta=delta, seed="none", correction="both", rate="gd-eigen", rate_eigs=1,
                  rtol=1e-10, atol=1e-14, rod_rtol=1e-10)
    assert rod["delta"][-1, 0] / 1e-4 == pytest.approx(abs(eta_lam - 1.0) ** 10, rel=1e-6)


@pytest.mark.parametrize("correction", ["both", False])
def test_gd_eigen_keeps_the_quartic_period_two_orbit(correction):
    """The rate along a tracked direction uses the secant of δ's component there, which is 2/η on GD's period-2
    orbit, so the orbit stays GD's (with the eigenvalue at the centre, S = 12 here, it moved by 1.4%)."""
    S, Q, eta = 12.0, 1.0, 0.2
    prob = problems.make("quartic", S=S, Q=Q, w0=0.01)
    star = math.sqrt((S - 2 / eta) / Q)
    rod = run_rod(prob, eta, 400, correction=correction, rate="gd-eigen")
    assert rod["rod_length"][-1] == pytest.approx(star, rel=2e-5)
    assert abs(rod["centre"][-1, 0]) < 1e-6
    assert rod["secant"][-1] == pytest.approx(2 / eta, rel=1e-5)


def _tiny_mlp(seed=0):
    return problems.make("mlp-digits", n=30, classes=3, width=6, depth=2, seed=seed)


def test_gd_eigen_on_a_short_rod_is_gd_multiplier_per_eigenvector_and_odd_in_delta():
    """On a network (LOBPCG path), for a rod short enough to be linear: the field minus "both"'s is
    Σ_i (ln(ηλ_i − 1) − (y_i − y_i²/2)) (u_iᵀδ) u_i over the tracked eigenpairs, and the field is odd in δ."""
    from rodflow.linalg.eigs import top_eigs

    p = _tiny_mlp()
    c = p.w0.clone()
    res = top_eigs(lambda V: p.hvp_block(c, V), p.d, 2, tol=1e-12, generator=torch.Generator().manual_seed(1))
    eta = 3.0 / float(res.values[0])  # the top mode far above 2/η, the second near it
    gen = torch.Generator().manual_seed(2)
    delta = 1e-7 * torch.randn(p.d, generator=gen, dtype=torch.float64) + 1e-6 * res.vectors[:, 0]
    y = torch.cat([c, delta])
    both = processes.make("rod_flow", p, eta, seed="none", correction="both")
    both.start_state(c, delta)
    eig = processes.make("rod_flow", p, eta, seed="none", correction="both", rate="gd-eigen", rate_eigs=2,
                         rate_tol=1e-10)
    eig.start_state(c, delta)
    diff = eig.field(0.0, y) - both.field(0.0, y)
    U, lam = res.vectors, res.values
    x = eta * lam
    yy = x - 2.0
    r = torch.tensor([_gd_rate(float(v)) for v in x], dtype=torch.float64) - (yy - 0.5 * yy * yy)
    expected = U @ (r * (U.T @ delta))
    assert torch.all(diff[: p.d] == 0.0)
    assert torch.allclose(diff[p.d:], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert float(expected.norm()) > 1e-3 * float(delta.norm())  # the residual is really there
    flipped = processes.make("rod_flow", p, eta, seed="none", correction="both", rate="gd-eigen", rate_eigs=2,
                             rate_tol=1e-10)
    flipped.start_state(c, -delta)
    f, g = eig.field(0.0, y), flipped.field(0.0, torch.cat([c, -delta]))
    assert torch.allclose(g[: p.d], f[: p.d], rtol=1e-9, atol=1e-15)
    assert torch.allclose(g[p.d:], -f[p.d:], rtol=1e-9, atol=1e-15)


def _tiny_mlp_lr(p):
    """η = 1.9/S₀ on a tiny MLP: GD oscillates from the start."""
    from rodflow.linalg.eigs import top_eigs

    return 1.9 / float(top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-9).values[0])


def test_gd_eigen_resume_is_bit_identical_and_counts_failed_eigensolves(monkeypatch):
    p = _tiny_mlp(1)
    from rodflow.linalg.eigs import top_eigs

    lr = _tiny_mlp_lr(p)
    a, b, _ = _resumed_pair(p, lr, 5, 6, correction="both", rate="gd-eigen")
    assert torch.equal(a.y, b.y)
    assert a.observe().scalars == b.observe().scalars
    assert a.observe().scalars["rate_eig_failures"] == 0.0
    # an eigensolve that does not converge: the previous pairs stay, and it is counted
    import rodflow.processes.rod_flow as rf

    def unconverged(*args, **kwargs):
        out = top_eigs(*args, **kwargs)
        out.converged, out.reason = False, "forced"
        return out

    monkeypatch.setattr(rf, "top_eigs", unconverged)
    kept = a.eig
    a.advance()
    assert a.eig is kept and a.observe().scalars["rate_eig_failures"] == 1.0
    c = processes.make("rod_flow", p, lr, correction="both", rate="gd-eigen")
    c.start(p.w0)  # no pairs at all: no residual, the field is "both"'s
    assert c.eig is None
    both = processes.make("rod_flow", p, lr, correction="both")
    assert torch.equal(c.field(0.0, c.y), both.field(0.0, c.y))


def test_gd_eigen_bad_options_fail_in_one_line():
    p = problems.make("sharp-valley")
    with pytest.raises(RodflowError, match="rate='gd-eigen' only"):
        processes.make("rod_flow", p, 0.3, rate_eigs=2)
    with pytest.raises(RodflowError, match="rate_eigs must be an integer >= 1"):
        processes.make("rod_flow", p, 0.3, rate="gd-eigen", rate_eigs=0)
    with pytest.raises(RodflowError, match="rate_tol must be a number in"):
        processes.make("rod_flow", p, 0.3, rate="gd-eigen", rate_tol=2.0)
    with pytest.raises(RodflowError, match="models plain GD"):
        processes.make("rod_flow", p, 0.3, rate="gd-eigen", optimizer="momentum")


def test_gd_eigen_failed_eigensolves_reach_the_summary(monkeypatch):
    import rodflow.processes.rod_flow as rf
    from rodflow.linalg.eigs import top_eigs

    prob = problems.make("sharp-valley")
    opts = {"rod_flow": dict(correction="both", rate="gd-eigen")}
    ok = simulate(prob, 0.3, 12, methods="gd,rod_flow", progress=False, sharpness_every=0, options=opts)
    assert ok.summary().set_index("method").loc["rod_flow", "rate_eig_failures"] == 0

    def unconverged(*args, **kwargs):
        out = top_eigs(*args, **kwargs)
        out.converged = False
        return out

    monkeypatch.setattr(rf, "top_eigs", unconverged)
    bad = simulate(prob, 0.3, 12, methods="gd,rod_flow", progress=False, sharpness_every=0, options=opts)
    summary = bad.summary().set_index("method")
    assert summary.loc["rod_flow", "rate_eig_failures"] == 12  # the start and each of the 11 steps after it
    assert np.isnan(summary.loc["gd"].get("rate_eig_failures", np.nan))


def test_gd_eigen_float32_problem_gets_gd_rate_on_a_quadratic_mode():
    """float32: the eigensolve's algebra runs in float64 on float32 HVPs; the tracked mode's rate is GD's to
    float32 accuracy."""
    eta, eta_lam = 0.1, 3.0
    lam = torch.tensor([eta_lam / eta, 4.0, 1.0], dtype=torch.float32)
    prob = Problem.from_loss(lambda w: 0.5 * (lam * w**2).sum(), torch.ones(3, dtype=torch.float32))
    c = torch.zeros(3, dtype=torch.float32)
    delta = torch.tensor([1e-2, 0.0, 0.0], dtype=torch.float32)
    rod = processes.make("rod_flow", prob, eta, seed="none", correction="both", rate="gd-eigen", rate_eigs=1)
    rod.start_state(c, delta)
    f = rod.field(0.0, torch.cat([c, delta]))
    assert f.dtype == torch.float32
    assert float(f[3] / delta[0]) == pytest.approx(math.log(eta_lam - 1.0), rel=1e-5)


# ------------------------------------------------------------------------- drift_seed (issue 17)
def _drift_amplitude(v, k):
    n = 1.0 / k
    return v * math.sqrt(2.0 * math.pi * n) * math.exp(-2.0 * n)


def _crossing_rod(p_u, **opts):
    """A rod on a quadratic with ηλ₁ = 2.02 along u = e₀, told that one step earlier ηλ₁ was 1.90 and the centre
    1e-3 behind along u: a crossing of 2 with k = 0.12 and a drift v = 1e-3 per step."""
    eta = 0.1
    prob = quadratic([20.2, 3.0])
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    delta = torch.tensor([p_u, 1e-4], dtype=torch.float64)
    rod = processes.make("rod_flow", prob, eta, seed="none", correction="both", rate="gd-eigen", rate_eigs=1,
                         drift_seed=True, **opts)
    rod.start_state(c, delta)
    rod.last_eig = ([1.90], c - torch.tensor([1e-3, 0.0], dtype=torch.float64))
    return rod


@pytest.mark.parametrize("p_u", [0.0, 1e-15, -3e-12])
def test_drift_seed_sets_gd_drift_made_amplitude_where_eta_lambda_crosses_two(p_u):
    """At a crossing of ηλ_i = 2 the component of δ along u_i is raised to v·√(2πN)·e^−2N (N = 1/k), sign kept."""
    rod = _crossing_rod(p_u)
    assert rod._seed_from_drift()
    amp = _drift_amplitude(1e-3, 2.02 - 1.90)
    assert float(rod.delta[0]) == pytest.approx(math.copysign(amp, p_u) if p_u else amp, rel=1e-9)
    assert float(rod.delta[1]) == 1e-4  # the other direction is untouched
    assert rod.drift_seeds == 1 and rod.last_eig[0] == pytest.approx([2.02])


def test_drift_seed_leaves_a_larger_component_and_non_crossings_alone():
    rod = _crossing_rod(1e-6)  # already above the drift-made amplitude (4e-10)
    y = rod.y.clone()
    assert not rod._seed_from_drift() and torch.equal(rod.y, y)
    rod = _crossing_rod(0.0)
    rod.last_eig = ([2.01], rod.last_eig[1])  # no crossing: ηλ was above 2 already
    y = rod.y.clone()
    assert not rod._seed_from_drift() and torch.equal(rod.y, y) and rod.drift_seeds == 0


def test_drift_seed_in_advance_restarts_the_integration_from_the_seeded_rod():
    """Through ``advance``: the seeded component then changes by GD's multiplier ηλ − 1 = 1.02 over the step."""
    rod = _crossing_rod(1e-15, rtol=1e-10, atol=1e-14, rod_rtol=1e-10)
    rod.advance()  # from t = 0 no eigensolve and no crossing check: the seed comes at the next step
    rod.last_eig = ([1.90], rod.centre.clone() - torch.tensor([1e-3, 0.0], dtype=torch.float64))
    before = float(rod.delta[0])
    rod.advance()
    amp = _drift_amplitude(1e-3, 2.02 - 1.90)
    assert rod.drift_seeds == 1 and abs(before) < amp
    assert float(rod.delta[0]) == pytest.approx(amp * 1.02, rel=1e-6)
    assert rod.observe().scalars["drift_seeds"] == 1.0


def test_drift_seed_state_resumes_bit_identical_and_bad_options_fail():
    p = _tiny_mlp(1)
    lr = _tiny_mlp_lr(p)
    a, b, loaded = _resumed_pair(p, lr, 4, 0, correction="both", rate="gd-eigen", drift_seed=True)
    assert loaded[0] == a.last_eig[0] and torch.equal(loaded[1], a.last_eig[1])  # the drift history is restored
    for _ in range(4):
        a.advance()
        b.advance()
    assert torch.equal(a.y, b.y)
    with pytest.raises(RodflowError, match="drift_seed needs the tracked eigenpairs"):
        processes.make("rod_flow", p, lr, drift_seed=True)
    with pytest.raises(RodflowError, match="drift_seed must be true or false"):
        processes.make("rod_flow", p, lr, rate="gd-eigen", drift_seed="yes")


@pytest.mark.parametrize("k", [0.2, 0.125, 0.0625])
def test_drift_seed_law_is_gd_period_two_amplitude_on_the_1d_recurrence(k):
    """The law v·√(2πN)·e^−2N against GD's 1-D linear recurrence x_{t+1} = x_t − μ_t (x_t − t) itself (a drift of
    one per step, μ_t = 1 + k t from a step on μ = 1), in 120 digits: continued until its period-2 part dominates
    and carried back to μ = 2 by GD's multipliers |1 − μ|; within 0.02 nats (measured 0.005–0.016)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(120):
        kk = mpmath.mpf(k)
        x, t, mu, log_back = mpmath.mpf(0), 0, mpmath.mpf(1), mpmath.mpf(0)
        while mu < 2:
            x, t, mu = x - mu * (x - t), t + 1, mu + kk
        while mu < 9:
            log_back += mpmath.log(abs(1 - mu))
            x, t, mu = x - mu * (x - t), t + 1, mu + kk
        amp = float(mpmath.log(abs(x - t)) - log_back)  # |x − t|: the period-2 part, the slow lag 1/μ negligible
    from rodflow.processes.rod_flow import drift_amplitude

    assert amp == pytest.approx(math.log(drift_amplitude(1.0, k)), abs=0.02)
