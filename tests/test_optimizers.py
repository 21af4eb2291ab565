"""Update rules: GD's iterates against torch.optim, options, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rodflow import optimizers
from rodflow.errors import RodflowError

TORCH = {
    "gd": (lambda p: torch.optim.SGD(p, lr=LR), {}),
    "momentum": (lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9), {}),
    "nesterov": (lambda p: torch.optim.SGD(p, lr=LR, momentum=0.7, nesterov=True), {"beta": 0.7}),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=LR, alpha=0.95, eps=1e-6), {"alpha": 0.95, "eps": 1e-6}),
    "adam": (lambda p: torch.optim.Adam(p, lr=LR, betas=(0.8, 0.99)), {"beta1": 0.8, "beta2": 0.99}),
    "nadam": (lambda p: torch.optim.NAdam(p, lr=LR, betas=(0.85, 0.995), momentum_decay=0.01),
              {"beta1": 0.85, "beta2": 0.995, "momentum_decay": 0.01}),
}
LR = 0.03


def loss(w):
    """A non-quadratic loss whose gradient changes scale across coordinates (so preconditioning matters)."""
    scales = torch.linspace(0.2, 3.0, w.numel(), dtype=w.dtype)
    return 0.5 * (scales * w * w).sum() + 0.25 * (w**4).sum() + torch.tanh(w[0] * w[-1])


@pytest.mark.parametrize("name", sorted(TORCH))
def test_iterates_equal_torch_optim(name):
    make_torch, params = TORCH[name]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps NAdam's μ product in the default dtype
    try:
        w0 = torch.linspace(-1.5, 2.0, 7, dtype=torch.float64)
        p = torch.nn.Parameter(w0.clone())
        opt = make_torch([p])
        ref = []
        for _ in range(50):
            opt.zero_grad()
            loss(p).backward()
            opt.step()
            ref.append(p.detach().clone())
    finally:
        torch.set_default_dtype(old)
    rule = optimizers.make(name, **params)
    w, state = w0.clone(), rule.init(w0)
    for t in range(50):
        wg = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(wg), wg)
        w, state = rule.step(w, state, g, LR, t + 1)
        np.testing.assert_allclose(w.numpy(), ref[t].numpy(), rtol=1e-12, atol=1e-12)


def test_scalar_rmsprop_is_one_average_of_the_squared_norm():
    rule = optimizers.make("rmsprop", scalar=True, alpha=0.5)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    state = rule.update_state(rule.init(w), g, 1)
    assert state["v"].shape == (1,) and float(state["v"]) == pytest.approx(12.5)
    inc = rule.increment(state, g, 0.1, 1)
    np.testing.assert_allclose(inc.numpy(), -0.1 * g.numpy() / (12.5**0.5 + 1e-8), rtol=1e-15)


def test_adam_without_bias_correction():
    rule = optimizers.make("adam", bias_correction=False)
    w = torch.tensor([1.0], dtype=torch.float64)
    g = torch.tensor([2.0], dtype=torch.float64)
    state = rule.update_state(rule.init(w), g, 1)
    inc = rule.increment(state, g, 1.0, 1)
    assert float(inc) == pytest.approx(-(0.1 * 2.0) / ((0.001 * 4.0) ** 0.5 + 1e-8), rel=1e-13)


def test_defaults_are_torch_s_except_momentum_beta():
    assert optimizers.options("momentum") == {"beta": 0.9}
    assert optimizers.options("nesterov") == {"beta": 0.9}
    assert optimizers.options("rmsprop") == {"alpha": 0.99, "eps": 1e-8, "scalar": False}
    assert optimizers.options("adam") == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "bias_correction": True}
    assert optimizers.options("nadam") == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "momentum_decay": 4e-3}


@pytest.mark.parametrize("name,params,match", [
    ("adamw", {}, "unknown optimizer 'adamw' \\(did you mean 'adam'\\?\\)"),
    ("adam", {"beta": 0.9}, "has no parameter 'beta' \\(did you mean 'beta"),
    ("momentum", {"beta": 1.0}, "beta must be a number in \\[0, 1\\)"),
    ("momentum", {"beta": -0.1}, "beta must be"),
    ("adam", {"beta2": 1.5}, "beta2 must be"),
    ("adam", {"eps": 0.0}, "eps must be a finite number > 0"),
    ("rmsprop", {"eps": -1e-8}, "eps must be"),
    ("rmsprop", {"scalar": "yes"}, "scalar must be true or false"),
    ("adam", {"bias_correction": 1}, "bias_correction must be true or false"),
    ("nadam", {"momentum_decay": 0}, "momentum_decay must be"),
    ("momentum", {"beta": True}, "beta must be"),
])
def test_bad_options_are_one_line_errors(name, params, match):
    with pytest.raises(RodflowError, match=match) as info:
        optimizers.make(name, **params)
    assert "\n" not in str(info.value)


def _gd_grows(rule, lam, lr, steps=600):
    """Whether the period-2 component of the optimizer on L = ½λw² (state frozen in P) grows."""
    w = torch.tensor([1e-3], dtype=torch.float64)
    state = rule.init(w)
    for t in range(steps):
        w, state = rule.step(w, state, lam * w, lr, t + 1)
    return abs(float(w)) > 1e-3


@pytest.mark.parametrize("name,params", [("gd", {}), ("momentum", {"beta": 0.9}), ("momentum", {"beta": 0.5}),
                                         ("nesterov", {"beta": 0.9}), ("nesterov", {"beta": 0.3})])
def test_thresholds_of_the_plain_rules_are_gd_s(name, params):
    rule = optimizers.make(name, **params)
    lr = 0.1
    thr = rule.threshold(rule.init(torch.zeros(1)), lr, 1000)
    assert not _gd_grows(rule, 0.99 * thr, lr)
    assert _gd_grows(rule, 1.01 * thr, lr)


@pytest.mark.parametrize("name,params", [("adam", {"beta1": 0.9}), ("adam", {"beta1": 0.5}),
                                         ("nadam", {"beta1": 0.9, "momentum_decay": 1e-7}),
                                         ("nadam", {"beta1": 0.6, "momentum_decay": 1e-7})])
def test_thresholds_of_the_preconditioned_rules_with_p_frozen(name, params):
    """With ν frozen (β₂ → 1 in the map, P = √ν̂ + ε given), GD's stability on a quadratic changes exactly at
    λ_max(P⁻¹H) = threshold (NAdam: momentum_decay tiny, so μ is constant along the run)."""
    rule = optimizers.make(name, **params)
    lr, steps = 0.01, 800
    P = 2.0  # ν̂ = (P − ε)²

    def run(lam):
        x = torch.tensor([1e-3], dtype=torch.float64)
        state = rule.init(x)
        state["v"] = torch.full((1,), (P - rule.eps) ** 2, dtype=torch.float64)
        for t in range(1, steps + 1):
            new = rule.update_state(state, lam * x, t)
            new["v"] = state["v"]  # frozen second moment, no bias correction of it
            x = x - lr * _direction(rule, new, lam * x, t, P)
            state = new
        return abs(float(x))

    thr = rule.threshold(_late_state(rule, P), lr, steps)
    assert run(0.98 * thr * P) < 1e-3 < run(1.02 * thr * P)


def _direction(rule, state, g, step, P):
    """The rule's step direction with the preconditioner replaced by the frozen P."""
    if rule.name == "adam":
        return state["m"] / (1 - rule.beta1**step) / P
    c1, c2 = rule._coefficients(state, step)
    return (c1 * g + c2 * state["m"]) / P


def _late_state(rule, P):
    state = rule.init(torch.zeros(1, dtype=torch.float64))
    if "mu_product" in state:
        state["mu_product"] = torch.zeros(1, dtype=torch.float64)
    return state
