"""Adam (``torch.optim.Adam(betas=(beta1, beta2), eps)``), with bias correction by default."""

from __future__ import annotations

import dataclasses

import torch

from . import register
from .base import UpdateRule, check_bool, check_positive, check_unit, moment_rates


@register("adam")
@dataclasses.dataclass(frozen=True)
class Adam(UpdateRule):
    """Adam: w ← w − η m̂/(√ν̂ + ε), m and ν averages of g and g² (torch's Adam).

    m ← β₁m + (1 − β₁)g, ν ← β₂ν + (1 − β₂)g², m̂ = m/(1 − β₁ᵗ), ν̂ = ν/(1 − β₂ᵗ) (``bias_correction=False``:
    m̂ = m, ν̂ = ν).

    P = √ν̂ + ε; with P frozen, stable iff λ_max(P⁻¹H) < (2 + 2β₁)(1 − β₁ᵗ)/((1 − β₁)η) (38/η at β₁ = 0.9 once the
    bias correction has faded). Flows: dm/dt = ((1 − β₁)/β₁)(g − m) (slaved: m̂ = g), dν/dt = ((1 − β₂)/β₂)(g² − ν)
    with t → step = t + 1 in the bias corrections; the rod carries ν as a smooth auxiliary variable."""

    name = "adam"
    preconditioned = True
    fast = ("m",)
    smooth = ("v",)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    bias_correction: bool = True

    def __post_init__(self):
        object.__setattr__(self, "beta1", check_unit("beta1", self.beta1, self.name))
        object.__setattr__(self, "beta2", check_unit("beta2", self.beta2, self.name))
        object.__setattr__(self, "eps", check_positive("eps", self.eps, self.name))
        object.__setattr__(self, "bias_correction", check_bool("bias_correction", self.bias_correction, self.name))

    def _corrections(self, step):
        if not self.bias_correction:
            return 1.0, 1.0
        return 1.0 - self.beta1**step, 1.0 - self.beta2**step

    def init(self, w):
        return {"m": torch.zeros_like(w), "v": torch.zeros_like(w)}

    def update_state(self, state, g, step):
        return {"m": torch.lerp(state["m"], g, 1.0 - self.beta1),
                "v": torch.addcmul(state["v"] * self.beta2, g, g, value=1.0 - self.beta2)}

    def preconditioner(self, state, step):
        _, bc2 = self._corrections(step)
        return state["v"].sqrt() / bc2**0.5 + self.eps

    def increment(self, state, g, lr, step):
        bc1, _ = self._corrections(step)
        return (-lr / bc1) * (state["m"] / self.preconditioner(state, step))

    def dstate_dt(self, state, g, step, keys):
        return moment_rates(self, state, g, keys)

    def instantaneous(self):
        return tuple(k for k, b in (("m", self.beta1), ("v", self.beta2)) if b == 0)

    def quasi_static(self, state, g, step):
        bc1, _ = self._corrections(step)
        return {**state, "m": g * bc1}  # m̂ = g

    def threshold(self, state, lr, step):
        bc1, _ = self._corrections(step)
        return (2.0 + 2.0 * self.beta1) * bc1 / ((1.0 - self.beta1) * lr)
