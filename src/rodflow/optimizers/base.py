"""The update-rule interface: one optimizer drives GD and every flow (science.md §6).

An update rule acts on the joint state ``z = (w, state)``. ``state`` is a dict of tensors (``d`` values, or one
value for a scalar); ``step`` counts the gradients the state has taken in (1 at the first step; a real number in
the flows, where it is ``t + 1`` at time ``t``). One optimizer step from ``(w, state)`` is

    g = ∇L(w);  state' = update_state(state, g, step);  w' = w + increment(state', g, lr, step)

exactly as ``torch.optim`` computes it (same operations in the same order where that matters to rounding). The
flows read the same rule as

- ``dstate_dt(state, g, step, keys)``: the continuous-time dynamics of the state entries ``keys``, written for
  the *post-update* state (the one the step uses): an exponential average ``s' = a·s + b·f(g)`` has
  ``ds/dt = (b·f(g) − (1 − a)·s)/a``, which takes one unit of time per step and has the discrete map's fixed
  point (the official central-flow code's convention: RMSProp's ``dν/dt = ((1 − β₂)/β₂)(g² − ν)``);
- ``fast`` and ``quasi_static(state, g, step)``: the momentum entries, and the state with them at their fixed
  point for the gradient g (b = g/(1 − β), Adam's m̂ = g): the stable flow's ``fast_state="slaved"`` holds them
  there, the η → 0 limit without the momentum's fast (oscillatory) transient;
- ``preconditioner(state, step)``: ``P`` with ``increment ≈ −lr·P⁻¹·(momentum or g)`` (``None`` for the
  identity), a d-vector (diagonal) or one value (scalar);
- ``threshold(state, lr, step)``: GD's stability threshold on the preconditioned sharpness ``λ_max(P⁻¹H)`` with
  the state frozen (a quadratic whose ``P⁻¹H`` has a larger eigenvalue makes the step diverge);
- ``smooth``: state entries the rod flow treats as smooth auxiliary variables (second moments), without a rod
  half-vector of their own (the follow-up paper's choice for ν).

A new optimizer is one module in this package with a ``@register("name")`` subclass of :class:`UpdateRule`
(a frozen dataclass whose fields are its options) and its import line in ``__init__``; GD, gradient flow and
rod flow then run it (central flow says which rules it models).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import numpy as np
import torch

from .. import integrators
from ..errors import RodflowError

Tensor = torch.Tensor
State = dict[str, Tensor]


class UpdateRule:
    """Base class of the update rules (see the module docstring). Subclasses are frozen dataclasses."""

    name: ClassVar[str] = "rule"
    #: state entries that the rod flow carries as smooth auxiliary variables (no half-vector)
    smooth: ClassVar[tuple[str, ...]] = ()
    #: momentum entries: integrated, they oscillate (complex eigenvalues), so a flow that integrates them
    #: defaults to Dormand-Prince, whose stability region covers the imaginary axis, instead of
    #: Runge-Kutta-Chebyshev, whose region is a thin strip around the negative real axis (measured: heavy ball on
    #: a quadratic, rkc 4x the gradients of dopri)
    fast: ClassVar[tuple[str, ...]] = ()
    #: it has a preconditioner (runs record ``preconditioned_sharpness``)
    preconditioned: ClassVar[bool] = False

    def init(self, w: Tensor) -> State:
        """The state before the first step (torch's zeros)."""
        return {}

    def update_state(self, state: State, g: Tensor, step: float) -> State:
        return state

    def increment(self, state: State, g: Tensor, lr: float, step: float) -> Tensor:
        """w' − w from the updated state."""
        raise NotImplementedError

    def dstate_dt(self, state: State, g: Tensor, step: float, keys: tuple[str, ...]) -> State:
        return {}

    def centred_rate(self, state: State, g: Tensor, step: float, keys: tuple[str, ...]) -> State:
        """ds/dt of the entries ``keys`` for a state centred between two steps, s̄ = (s + s')/2 with
        s' = update_state(s, g, step): the Δ = s' − s that solves Δ = update(s̄ − Δ/2) − (s̄ − Δ/2), by fixed-point
        iteration (a contraction with factor (1 − a)/2 for an average with decay a). Matches the map to second
        order (an exponential average's rate becomes 2(1 − a)/(1 + a) ≈ −ln a), where the post-update convention
        of ``dstate_dt`` is first order; it needs nothing but ``update_state``."""
        new = self.update_state(state, g, step)
        delta = {k: new[k] - state[k] for k in keys}
        for _ in range(200):
            before = {**state, **{k: state[k] - 0.5 * delta[k] for k in keys}}
            new = self.update_state(before, g, step)
            change = 0.0
            scale = 0.0
            for k in keys:
                d = new[k] - before[k]
                change = max(change, float((d - delta[k]).abs().max()))
                # Δ is a difference of two states: it is resolved to rounding of the state, not of Δ
                scale = max(scale, float(new[k].abs().max()), float(before[k].abs().max()))
                delta[k] = d
            if change <= 8 * torch.finfo(g.dtype).eps * scale:
                return delta
            if not math.isfinite(change):
                raise RodflowError(f"optimizer {self.name}: non-finite state update (gradient or state not finite)")
        raise RodflowError(f"optimizer {self.name}: the centred state update did not converge (the update of its "
                           "state is not a contraction); use gradient_flow state_convention='post-update'")

    def instantaneous(self) -> tuple[str, ...]:
        """State entries with no memory at these options (an average with decay 0: the momentum buffer at β = 0
        is the gradient itself); the stable flow takes them from ``update_state`` instead of integrating them."""
        return ()

    def quasi_static(self, state: State, g: Tensor, step: float) -> State:
        """The state with its ``fast`` entries at their fixed point for gradient g."""
        return state

    def preconditioner(self, state: State, step: float) -> Tensor | None:
        return None

    def threshold(self, state: State, lr: float, step: float) -> float:
        return 2.0 / lr

    def options(self) -> dict[str, Any]:
        """The rule's options (its dataclass fields) and their values."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # ---------------------------------------------------------------------------------------- derived
    def step(self, w: Tensor, state: State, g: Tensor, lr: float, step: float) -> tuple[Tensor, State]:
        """(w', state') of one optimizer step at (w, state) with gradient g = ∇L(w)."""
        new = self.update_state(state, g, step)
        return w + self.increment(new, g, lr, step), new

    def flow_integrator(self, integrated: tuple[str, ...]) -> str:
        """The default integrator of a flow that integrates the state entries ``integrated``."""
        return "dopri" if any(k in self.fast for k in integrated) else integrators.DEFAULT

    def flow_start(self, w: Tensor, g: Tensor) -> State:
        """The flows' state at time 0: the post-update state of the first step (``step`` = 1)."""
        return self.update_state(self.init(w), g, 1.0)

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.name}({opts})" if opts else self.name


# ------------------------------------------------------------------------------------------- helpers
def ema_rate(decay: float, name: str, rule: str) -> float:
    """1/a of an exponential average with decay a, for its post-update dynamics; a = 0 (no averaging) has none."""
    if decay <= 0.0:
        raise RodflowError(f"gradient_flow with optimizer {rule} needs {name} > 0: with {name} = 0 the average is "
                           "the gradient itself and has no continuous dynamics; use a small positive value")
    return 1.0 / decay


def moment_rates(rule, state: State, g: Tensor, keys: tuple[str, ...]) -> State:
    """Post-update dynamics of Adam-type moments m (decay ``rule.beta1``, fed by g) and ν (``rule.beta2``, g²),
    for those of them in ``keys``."""
    out = {}
    if "m" in keys:
        out["m"] = (1.0 - rule.beta1) * ema_rate(rule.beta1, "beta1", rule.name) * (g - state["m"])
    if "v" in keys:
        out["v"] = (1.0 - rule.beta2) * ema_rate(rule.beta2, "beta2", rule.name) * (g * g - state["v"])
    return out


def _real(value) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_unit(name: str, value, rule: str, closed_low: bool = True) -> float:
    """A hyper-parameter in [0, 1) (or (0, 1)): a one-line error otherwise."""
    ok = _real(value) and math.isfinite(value) \
        and (0.0 <= value if closed_low else 0.0 < value) and value < 1.0
    if not ok:
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise RodflowError(f"optimizer {rule}: {name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_positive(name: str, value, rule: str) -> float:
    ok = _real(value) and math.isfinite(value) and value > 0
    if not ok:
        raise RodflowError(f"optimizer {rule}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_bool(name: str, value, rule: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise RodflowError(f"optimizer {rule}: {name} must be true or false, got {value!r}")
    return bool(value)


def scalar(x: float, like: Tensor) -> Tensor:
    """A one-value state entry (scalar RMSProp's ν, NAdam's μ product) in the dtype and device of ``like``."""
    return torch.full((1,), float(x), dtype=like.dtype, device=like.device)
