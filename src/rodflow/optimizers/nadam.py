"""NAdam (``torch.optim.NAdam(betas=(beta1, beta2), eps, momentum_decay)``), torch's formula."""

from __future__ import annotations

import dataclasses
import math

import torch

from . import register
from .base import UpdateRule, check_positive, check_unit, moment_rates, scalar


@register("nadam")
@dataclasses.dataclass(frozen=True)
class NAdam(UpdateRule):
    """NAdam: Adam with Nesterov momentum and a momentum schedule μₜ (torch's NAdam).

    μₜ = β₁(1 − ½·0.96^(t ψ)), Πₜ = Πₜ₋₁μₜ, m and ν as in Adam (ν bias-corrected),
    w ← w − η[(1 − μₜ)/(1 − Πₜ) g + μₜ₊₁/(1 − Πₜμₜ₊₁) m]/(√ν̂ + ε).

    With P = √ν̂ + ε frozen, stable iff λ_max(P⁻¹H) < 2(1 + β₁)/(η[(1 + β₁)c₁ + (1 − β₁)c₂]), c₁ and c₂ the two
    coefficients above (our derivation: the period-2 eigenvalue −1 of the linearised map on a quadratic; at
    μ → β₁ and c₁ = 0 it is Adam's). Flows: m and ν as in Adam (slaved: m = g), dΠ/dt = ln(μ(step))·Π; the rod
    carries ν and Π as smooth auxiliary variables."""

    name = "nadam"
    preconditioned = True
    fast = ("m",)
    smooth = ("v", "mu_product")
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum_decay: float = 4e-3

    def __post_init__(self):
        object.__setattr__(self, "beta1", check_unit("beta1", self.beta1, self.name, closed_low=False))
        object.__setattr__(self, "beta2", check_unit("beta2", self.beta2, self.name))
        object.__setattr__(self, "eps", check_positive("eps", self.eps, self.name))
        object.__setattr__(self, "momentum_decay", check_positive("momentum_decay", self.momentum_decay, self.name))

    def mu(self, step: float) -> float:
        return self.beta1 * (1.0 - 0.5 * (0.96 ** (step * self.momentum_decay)))

    def init(self, w):
        return {"m": torch.zeros_like(w), "v": torch.zeros_like(w), "mu_product": scalar(1.0, w)}

    def update_state(self, state, g, step):
        return {"m": torch.lerp(state["m"], g, 1.0 - self.beta1),
                "v": torch.addcmul(state["v"] * self.beta2, g, g, value=1.0 - self.beta2),
                "mu_product": state["mu_product"] * self.mu(step)}

    def preconditioner(self, state, step):
        return (state["v"] / (1.0 - self.beta2**step)).sqrt() + self.eps

    def _coefficients(self, state, step):
        """(c₁, c₂) as one-value tensors (differentiable in the μ product, for the rod's JVP)."""
        mu, mu_next = self.mu(step), self.mu(step + 1)
        prod = state["mu_product"]
        return (1.0 - mu) / (1.0 - prod), mu_next / (1.0 - prod * mu_next)

    def increment(self, state, g, lr, step):
        c1, c2 = self._coefficients(state, step)
        denom = self.preconditioner(state, step)
        return (-lr * c1) * (g / denom) + (-lr * c2) * (state["m"] / denom)

    def step(self, w, state, g, lr, step):
        # torch adds the two terms one after the other (same rounding)
        new = self.update_state(state, g, step)
        c1, c2 = (float(c) for c in self._coefficients(new, step))
        denom = self.preconditioner(new, step)
        w = torch.addcdiv(w, g, denom, value=-lr * c1)
        return torch.addcdiv(w, new["m"], denom, value=-lr * c2), new

    def dstate_dt(self, state, g, step, keys):
        out = moment_rates(self, state, g, keys)
        if "mu_product" in keys:
            out["mu_product"] = math.log(self.mu(step)) * state["mu_product"]
        return out

    def instantaneous(self):
        return ("v",) if self.beta2 == 0 else ()

    def quasi_static(self, state, g, step):
        return {**state, "m": g}

    def threshold(self, state, lr, step):
        c1, c2 = (float(c) for c in self._coefficients(state, step))
        return 2.0 * (1.0 + self.beta1) / (lr * ((1.0 + self.beta1) * c1 + (1.0 - self.beta1) * c2))
