"""Onset of the edge of stability and first loss spike (rodflow.onset), and rod flow's `rate="gd-multiplier"`."""

import math

import numpy as np
import pytest
import torch

import rodflow
from rodflow import onset
from rodflow.errors import RodflowError


def test_onset_is_the_first_step_a_hundred_times_above_the_floor():
    a = np.r_[1.0, 1e-3, 1e-6, 1e-8, 3e-9, 1e-8, 2.9e-7, 3e-7, 1e-3]  # floor 3e-9 at step 4
    assert onset.onset_step(a) == 7.0  # 3e-7 >= 100 × 3e-9; 2.9e-7 is not
    assert math.isnan(onset.onset_step(np.geomspace(1, 1e-9, 30)))  # decays only: never
    assert math.isnan(onset.onset_step([]))


def test_first_spike_is_a_rise_above_one_percent_of_the_progress():
    loss = np.r_[1.0, 0.5, 0.2, 0.205, 0.1, 0.1085, 0.2]  # progress 0.8 then 0.9: rises of 0.005, 0.0085 < 1%
    assert onset.first_spike_step(loss) == 6.0
    assert onset.first_spike_step(loss - 7.0) == 6.0  # the offset does not matter (losses can be negative)
    assert onset.first_spike_step(loss * 1e-9) == 6.0  # nor the scale
    assert math.isnan(onset.first_spike_step(np.linspace(1, 0, 20)))


def test_gd_oscillation_is_the_period_two_component_under_a_smooth_drift():
    t = np.arange(40.0)
    amp = 1e-3 * 1.1 ** t
    w = np.c_[0.01 * t ** 2 + 2 * t, (-1) ** t * amp]  # a quadratic drift plus an alternating part
    osc = onset.gd_oscillation(w)
    np.testing.assert_allclose(osc[2:-2], amp[2:-2] * (1.1 ** -2 + 4 / 1.1 + 6 + 4 * 1.1 + 1.1 ** 2) / 16, rtol=1e-9)
    assert osc.iloc[:2].isna().all() and osc.iloc[-2:].isna().all()


def test_every_run_summary_has_onset_and_first_spike():
    p = rodflow.problems.make("sharp-valley", eps=0.03, w0=(0.1, 3.5))
    r = rodflow.simulate(p, lr=0.3, steps=560, methods=["gd", "gradient_flow", "rod_flow"], sharpness_every=0,
                         progress=False)
    s = r.summary().set_index("method")
    gd, rod = s.loc["gd"], s.loc["rod_flow"]
    assert 400 < gd["onset_step"] < gd["first_spike_step"] < 560  # GD spikes at 530 (docs/rod_flow.md)
    assert 350 < rod["onset_step"] < rod["first_spike_step"] < 560
    assert math.isnan(s.loc["gradient_flow", "onset_step"]) and "no oscillation" in s.loc["gradient_flow", "onset_reason"]
    none = rodflow.simulate(p, lr=0.3, steps=10, methods=["gd"], record_iterates=False, progress=False).summary()
    assert "not recorded" in none.set_index("method").loc["gd", "onset_reason"]


# ---------------------------------------------------------------------------------- rate="gd-multiplier"
def _rod(p, lr, **kw):
    return rodflow.processes.make("rod_flow", p, lr, rate="gd-multiplier", **kw)


@pytest.mark.parametrize("lam", [3.0, 8.0, 12.0, 25.0, 30.0])  # ηλ = 0.3 … 3: below and above the threshold 2
def test_gd_multiplier_rate_gives_gds_per_step_multiplier_on_a_quadratic(lam):
    lr = 0.1
    p = rodflow.problems.make("quadratic", lambdas=(lam,), w0=(1.0,))
    r = rodflow.simulate(p, lr=lr, steps=5, methods=["rod_flow"], sharpness_every=0, progress=False,
                         options={"rod_flow": {"rate": "gd-multiplier", "seed": "none", "integrator": "dopri",
                                               "rtol": 1e-10, "atol": 1e-14, "rod_rtol": 1e-10}})
    rl = r.method("rod_flow")["rod_length"].to_numpy()
    np.testing.assert_allclose(rl[1:] / rl[:-1], abs(1 - lr * lam), rtol=1e-6)
    # the default (linear) rate is e^(ηλ − 2) instead: a different multiplier except at the threshold
    assert abs(math.exp(lr * lam - 2) - abs(1 - lr * lam)) > 0.05


def test_gd_multiplier_rate_is_odd_in_delta_keeps_the_threshold_and_the_quartic_fixed_point():
    torch.manual_seed(0)
    p = rodflow.problems.make("reference-mlp", n=16)
    rf = _rod(p, 0.2, seed="none")
    c, d = p.w0, 1e-2 * torch.randn(p.d, dtype=p.dtype)
    f_plus, f_minus = rf.field(0.0, torch.cat([c, d])), rf.field(0.0, torch.cat([c, -d]))
    torch.testing.assert_close(f_minus[: p.d], f_plus[: p.d], rtol=1e-12, atol=1e-15)  # centre: even
    torch.testing.assert_close(f_minus[p.d:], -f_plus[p.d:], rtol=1e-12, atol=1e-15)  # δ: odd
    # the quartic L = S/2 w² − Q/4 w⁴: the fixed point δ*² = (S − 2/η)/Q is GD's period-2 orbit, as for "linear"
    S, Q, lr = 12.0, 1.0, 0.18
    q = rodflow.problems.make("quartic", S=S, Q=Q, w0=0.05)
    star = math.sqrt((S - 2 / lr) / Q)
    field = _rod(q, lr, seed="none").field(0.0, torch.tensor([0.0, star], dtype=q.dtype))
    assert abs(float(field[1])) < 1e-12 and abs(float(field[0])) < 1e-12
    r = rodflow.simulate(q, lr=lr, steps=300, methods=["rod_flow"], sharpness_every=0, progress=False,
                         options={"rod_flow": {"rate": "gd-multiplier"}})
    assert r.method("rod_flow")["rod_length"].iloc[-1] == pytest.approx(star, rel=1e-4)  # and it is attracting
    # near ηs = 1 the rate is floored (GD removes the oscillation in one step there): a finite decay
    one = rodflow.problems.make("quadratic", lambdas=(1 / 0.1,), w0=(1.0,))
    assert _rod(one, 0.1)._rate_change(torch.tensor([2.0 * 10.0 * 0.3]), torch.tensor([0.3])) == pytest.approx(
        -4.0 - (1.0 - 2.0))


def test_rate_options_are_checked():
    p = rodflow.problems.make("quadratic")
    for opts, match in (({"rate": "log"}, "rate must be one of linear, gd-multiplier"),
                        ({"max_decay": 0}, "max_decay must be a finite number > 0")):
        with pytest.raises(RodflowError, match=match):
            rodflow.simulate(p, lr=0.1, steps=2, methods=["rod_flow"], options={"rod_flow": opts}, progress=False)


@pytest.mark.parametrize("seed", [1, 2])
def test_rod_onset_is_not_fired_by_a_collapsed_rod_wandering_at_its_rounding_level(seed):
    """A tiny MLP at ηS₀ = 0.8 never reaches the edge of stability (GD: no onset in 100 steps); the rod collapses to
    its rounding level by step ≈ 30 and wanders there in flat directions (ηs ≈ 0), its resolved length jumping by
    100× (ungated onset 40–52 on seeds 0–3). The onset counts only where ηs ≥ 1: none."""
    from rodflow.linalg.eigs import top_eigs

    p = rodflow.problems.make("mlp-digits", n=40, classes=4, width=8, depth=2, seed=seed)
    lr = 0.8 / float(top_eigs(lambda V: p.hvp_block(p.w0, V), p.d, 1, tol=1e-9).values[0])
    res = rodflow.simulate(p, lr, 100, methods="gd,rod_flow", progress=False, sharpness_every=0)
    s = res.summary().set_index("method")
    assert math.isnan(s.loc["gd", "onset_step"])
    assert onset.onset_step(res.method("rod_flow")["rod_resolved_length"]) < 60  # what the ungated rule fires
    assert math.isnan(s.loc["rod_flow", "onset_step"])


def test_onset_step_counts_only_allowed_steps():
    a = [1.0, 1e-3, 1e-6, 1e-3, 1e-2, 1.0]
    assert onset.onset_step(a) == 3.0
    assert onset.onset_step(a, allowed=[True, True, True, False, True, True]) == 4.0
    assert math.isnan(onset.onset_step(a, allowed=[False] * 6))


def test_gd_onset_ignores_rounding_flips_below_the_threshold():
    """GD on the sharp valley at η = 0.1 stays far below its threshold (sharpness 5.6 against 2/η = 20): its
    fourth difference is then the rounding of w (0.002–0.3 eps·‖w‖), which the running-floor rule took for an
    oscillation growing out of its floor (onset 342); counted per coordinate above its rounding level, none."""
    p = rodflow.problems.make("sharp-valley")
    r = rodflow.simulate(p, lr=0.1, steps=600, methods=("gd",), sharpness_every=100)
    s = r.summary().set_index("method")
    assert s.loc["gd", "final_sharpness"] * 0.1 < 0.6
    assert math.isnan(s.loc["gd", "onset_step"])


def test_gd_oscillation_keeps_a_tiny_coordinates_real_oscillation_and_drops_ulp_flips():
    """A coordinate oscillating at 1e-21 (the self-stabilization toy's x) is a real oscillation; a coordinate of
    size 10 drifting linearly flips by one ulp in its fourth difference — that is rounding, not oscillation."""
    t = np.arange(40)
    x = 1e-21 * (-1.0) ** t * 1.05**t
    y = 10.0 + 0.6 * t
    w = np.stack([x, y], axis=1)
    w[20, 1] = np.nextafter(w[20, 1], np.inf)  # one ulp
    osc = onset.gd_oscillation(w)
    factor = (1.05**-2 + 4 / 1.05 + 6 + 4 * 1.05 + 1.05**2) / 16
    np.testing.assert_allclose(osc[2:-2].drop(20), np.abs(x[2:-2]).take(np.r_[0:18, 19:36]) * factor, rtol=1e-9)
    assert osc[20] < 1e-18  # the ulp flip (4e-16 in y's fourth difference) is not counted
