"""Gradient flow dw/dt = −η ∇L(w), integrated adaptively (time in GD steps); for another update rule its
stable flow: the optimizer's continuous limit on z = (w, state) (science.md §6)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import integrators
from ..errors import RodflowError
from .base import Observation, Process, as_numpy, as_tensor, flatten_state, nest, unflatten_state, unnest
from . import register

FAST_STATES = ("slaved", "ode")  # gradient flow's momentum entries: held at their fixed point, or integrated
CONVENTIONS = ("centred", "post-update")  # what the stable flow's state at time t stands for
# (rtol, atol) per integrator and dtype. dopri: tight (its cost is set by stability, not by the tolerance);
# srk4 and rkc: the loosest tolerance that meets the accuracy rule of docs/performance.md (B2a, B8: a flow's
# mean distance to GD and its loss error within 1% of a tight solve's) on the benchmark cases (srk4 rtol 1e-3
# missed it by 1.5% for gradient flow on the self-stabilization toy; rkc rtol 1e-4 by up to 2.2% for gradient
# flow, 4.5% for rod flow). float32: no tighter than a few hundred ulp.
_TOLERANCES = {
    "dopri": {torch.float64: (1e-8, 1e-10), torch.float32: (3e-5, 1e-7)},
    "rkc": {torch.float64: (1e-5, 1e-7), torch.float32: (3e-5, 1e-7)},
    "srk4": {torch.float64: (3e-4, 1e-7), torch.float32: (3e-4, 1e-7)},
}


# Flows of an optimizer with a state (momentum, Adam, ...): dopri at (1e-5, 1e-7) changed the mean distance to GD
# and the loss error by <= 0.08% against its tight default on the demo network (heavy ball, Adam), for 2.4-3.7x
# fewer gradients (docs/optimizers.md).
_STATEFUL_TOLERANCES = {"dopri": {torch.float64: (1e-5, 1e-7), torch.float32: (3e-5, 1e-7)}}


def default_tolerances(dtype: torch.dtype, integrator: str = "dopri", stateful: bool = False) -> tuple[float, float]:
    """(rtol, atol) of a flow's integrator for this dtype (``stateful``: the flow of an optimizer with a state)."""
    if stateful and integrator in _STATEFUL_TOLERANCES:
        return _STATEFUL_TOLERANCES[integrator][dtype]
    return _TOLERANCES[integrator][dtype]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def integration_options(method: str, dtype: torch.dtype, integrator, rtol, atol, max_step, stateful: bool = False):
    """A flow's (integrator, rtol, atol, max_step): the name checked, tolerances defaulted per integrator, dtype
    and whether the optimizer has a state, and every number validated (one-line errors) before any work."""
    integrator = integrators.check_name(integrator, method)
    rt, at = default_tolerances(dtype, integrator, stateful)
    rtol = rt if rtol is None else rtol
    atol = at if atol is None else atol
    check_tolerances(method, rtol, atol, max_step)
    return integrator, float(rtol), float(atol), float(max_step)


def check_tolerances(method: str, rtol: float, atol: float, max_step: float) -> None:
    """One-line errors for tolerances an integrator cannot use (before any work is done)."""
    if not (_number(rtol) and math.isfinite(rtol) and rtol > 0):
        raise RodflowError(f"{method} rtol must be a finite number > 0, got {rtol!r}")
    if not (_number(atol) and math.isfinite(atol) and atol >= 0):
        raise RodflowError(f"{method} atol must be a finite number >= 0, got {atol!r}")
    if not (_number(max_step) and max_step > 0):
        raise RodflowError(f"{method} max_step must be a number > 0, got {max_step!r}")


@register("gradient_flow")
class GradientFlow(Process):
    """Gradient flow by an adaptive integrator with error control (one gradient per field evaluation).

    ``integrator="srk4"`` (default, except when momentum is integrated: "dopri"): a fourth-order stabilised
    Runge-Kutta method whose stage count follows the stiffness η·S that it estimates itself, so its steps are set
    by accuracy; ``"rkc"``: the same idea at second order (Runge-Kutta-Chebyshev, the earlier default);
    ``"dopri"``: Dormand-Prince 5(4), whose step is held near its stability limit 3.3/(η S) once the flow is
    stiff. Either way iterates are read off the dense output at integer times, and steps longer than one GD
    step are taken where the dynamics allow.

    With an optimizer that has a state (momentum, RMSProp, Adam, ...) the flow is its stable flow on
    y = (w, state, step): dw/dt = increment(state, ∇L(w)) (the optimizer's step at lr), with the step count
    carried in y (the integrators are autonomous) for bias corrections. ``state_convention``: "centred"
    (default) reads the state at time t as (s_t + s_{t+1})/2, the average of the states before and after step t
    (as the rod's centre does), with d state/dt from the rule's ``centred_rate`` (second order in the map: an
    average with decay a relaxes at 2(1 − a)/(1 + a) ≈ −ln a) and step count t + 1/2; "post-update" reads it as
    s_{t+1}, the state step t uses (the official central-flow convention: the rule's ``dstate_dt``, first order,
    step count t + 1). ``fast_state``:
    "ode" (default) integrates the momentum entries too; "slaved" holds them at their fixed point for the current
    gradient (heavy ball: gradient flow at η/(1 − β); Adam: m̂ = g, RMSProp-like with ν integrated), the η → 0
    limit without the momentum's transient, cheaper (no oscillatory mode: srk4 serves it) but measured 7–19×
    farther from GD than the default on the demo network (docs/optimizers.md). The error norm measures each
    state entry relative to its own size.
    """

    def __init__(self, problem, lr, integrator: str | None = None, rtol: float | None = None,
                 atol: float | None = None, max_step: float = 50.0, fast_state: str = "ode",
                 state_convention: str = "centred", optimizer=None):
        super().__init__(problem, lr, optimizer)
        if fast_state not in FAST_STATES:
            raise RodflowError(f"gradient_flow fast_state must be one of {', '.join(FAST_STATES)}, got {fast_state!r}")
        if state_convention not in CONVENTIONS:
            raise RodflowError(f"gradient_flow state_convention must be one of {', '.join(CONVENTIONS)}, "
                               f"got {state_convention!r}")
        self.slaved = fast_state == "slaved"
        self.centred = state_convention == "centred"
        probe = torch.zeros(1, dtype=problem.dtype)
        init = self.rule.init(probe)
        self.stateful = bool(init)
        if self.slaved and not self.rule.fast:
            raise RodflowError(f"gradient_flow fast_state='slaved' holds momentum entries; optimizer "
                               f"{self.rule.name!r} has none (drop the option)")
        if not self.centred and not self.stateful:
            raise RodflowError(f"gradient_flow state_convention applies to optimizers with a state; optimizer "
                               f"{self.rule.name!r} has none (drop the option)")
        self.instant = self.rule.instantaneous()  # no memory: taken from the update, not integrated
        self.keys = tuple(k for k in sorted(init)
                          if not (self.slaved and k in self.rule.fast) and k not in self.instant)  # integrated
        if self.keys and not self.centred:  # the dynamics must exist (e.g. beta > 0): a one-line error now
            self.rule.dstate_dt(init, probe, 1.0, self.keys)
        self.integrator, self.rtol, self.atol, self.max_step = integration_options(
            "gradient_flow", problem.dtype, integrator or self.rule.flow_integrator(self.keys), rtol, atol, max_step,
            stateful=self.stateful)
        self.d = problem.d

    def _field(self, t, y):
        if not self.stateful:
            return -self.lr * self.problem.grad(y)
        w, state, step = self._split(y)
        g = self.problem.grad(w)
        state = self._complete(state, g, step)
        if self.centred:  # y holds s(t) ≈ (s_t + s_{t+1})/2; the step count of the update s_t → s_{t+1} is t + 1
            ds = self.rule.centred_rate(state, g, step + 0.5, self.keys)
        else:
            ds = self.rule.dstate_dt(state, g, step, self.keys)
        one = torch.ones(1, dtype=y.dtype, device=y.device)  # the step count advances with time
        return torch.cat([self.rule.increment(state, g, self.lr, step), *[ds[k].reshape(-1) for k in self.keys],
                          one])

    def _complete(self, state, g, step):
        """The integrated entries plus the slaved ones (momentum at its fixed point) and those without memory."""
        if self.slaved:
            state = self.rule.quasi_static(state, g, step)
        if self.instant:
            full = {**{k: torch.zeros_like(v) for k, v in self.rule.init(g).items()}, **state}
            new = self.rule.update_state(full, g, step)
            state = {**state, **{k: new[k] for k in self.instant}}
        return state

    def _split(self, y):
        """(w, integrated optimizer state, step count) of a stateful flow's vector y = (w, state, step)."""
        return y[: self.d], unflatten_state(y[self.d:-1], self.sizes, self.keys), float(y[-1])

    def _ode(self, y):
        norm = state_norm(self.d, self.sizes, self.keys + ("step",), self.rtol, self.atol, self.floors) \
            if self.stateful else None
        return integrators.make(self.integrator, self._field, y, rtol=self.rtol, atol=self.atol,
                                max_step=self.max_step, **({"norm": norm} if norm else {}))

    def start(self, w0):
        self.t = 0
        if self.stateful:
            _, g0 = self.problem.loss_grad(w0)
            state = self.rule.flow_start(w0, g0)
            count = 1.0
            if self.centred:  # halfway between the state before the first step and after it, count t + 1/2
                init = self.rule.init(w0)
                state = {k: 0.5 * (init[k] + state[k]) for k in state}
                count = 0.5
            self.sizes = {k: state[k].numel() for k in self.keys}
            state["step"] = torch.full((1,), count, dtype=w0.dtype, device=w0.device)  # the step count at t = 0
            self.sizes["step"] = 1
            self.y = torch.cat([w0, flatten_state(state, self.keys + ("step",))])
            self.floors = entry_floors(self.y, self.d, [self.sizes[k] for k in self.keys + ("step",)], self.atol)
        else:
            self.sizes = {}
            self.y = w0.clone()
        self.ode = self._ode(self.y)

    def advance(self):
        self.t += 1
        self.y = self.ode.advance_to(float(self.t))

    @property
    def w(self):
        return self.y[: self.d]

    def point(self):
        return self.w

    def observe(self) -> Observation:
        obs = super().observe()
        if self.stateful:
            _, state, step = self._split(self.y)
            if self.slaved or self.instant:
                _, g = self.problem.loss_grad(self.w)
                state = self._complete(state, g, step)
            obs.scalars.update(self.optimizer_scalars(state, step))
            obs.preconditioner = self.rule.preconditioner(state, step)
        return obs

    def state_dict(self):
        state = {"t": self.t, "w": as_numpy(self.y)}  # w and the optimizer state (when it has one)
        if self.stateful:
            state["floors"] = np.array(self.floors)
        state.update(nest("ode", self.ode.state_dict()))
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.y = as_tensor(state["w"], self.problem.dtype, self.problem.device)
        if self.stateful:
            sizes = {k: v.numel() for k, v in self.rule.init(self.y[: self.d]).items()}
            self.sizes = {k: sizes[k] for k in self.keys}
            self.sizes["step"] = 1
            self.floors = [float(x) for x in state["floors"]]
        else:
            self.sizes = {}
        self.ode = self._ode(self.y)  # then every field of the integrator is replaced:
        self.ode.load_state_dict(unnest("ode", state))


def entry_bounds(start: int, sizes: list[int]) -> list[tuple[int, int]]:
    """The (start, stop) slices of state entries of the given sizes laid out one after another from ``start``."""
    out = []
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


def entry_floors(y0: torch.Tensor, start: int, sizes: list[int], atol: float) -> list[float]:
    """Absolute error floors of state entries laid out from ``start`` in y0: atol times each entry's rms at the
    start of the flow (moments live on the scale of g and g², not of w, so w's atol cannot serve them)."""
    return [atol * float(y0[a:b].square().mean().sqrt()) for a, b in entry_bounds(start, sizes)]


def relative_scales(scales: torch.Tensor, ymax: torch.Tensor, bounds, floors: list[float], rtol: float) -> None:
    """Fill ``scales`` on each state entry's slice: rtol · max(|y_i|, rms of the entry) + the entry's floor."""
    tiny = torch.finfo(ymax.dtype).tiny
    for (a, b), floor in zip(bounds, floors):
        block = ymax[a:b]
        scales[a:b] = rtol * torch.maximum(block, block.square().mean().sqrt()) + floor + tiny


def state_norm(d: int, sizes: dict[str, int], keys: tuple[str, ...], rtol: float, atol: float,
               floors: list[float]):
    """Error norm of y = (w, optimizer state): w by the mixed rtol/atol norm; each state entry by
    rtol · max(|y_i|, rms of the entry) + its floor (``entry_floors``)."""
    bounds = entry_bounds(d, [sizes[k] for k in keys])

    def norm(x, y0, y1):
        ymax = torch.maximum(y0.abs(), y1.abs())
        scales = torch.empty_like(ymax)
        scales[:d] = atol + rtol * ymax[:d]
        relative_scales(scales, ymax, bounds, floors, rtol)
        return float(torch.sqrt(torch.mean((x / scales) ** 2)))

    return norm
