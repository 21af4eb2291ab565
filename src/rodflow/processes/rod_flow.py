"""Rod flow (science.md §3, docs/rod_flow.md): two consecutive GD iterates as the ends of a rod.

State ``y = (c, δ)``: rod centre and half-vector, ends ``c ± δ``, with ``g_± = ∇L(c ± δ)``:

    dc/dt = −(η/2)(g_+ + g_−)            [+ optional backward-error correction −(η²/8)(H_+ + H_−)(g_+ + g_−)
                                          (+ (η/4)(H_+ − H_−) G with correction="full" or "both")]
    dδ/dt =  G = (η/2)(g_+ − g_−) − 2δ   [+ rounding seed (σ²/(2‖δ‖²)) δ]
                                          [+ G − (η/4)(H_+ + H_−) G + (η²/8)(H_+ − H_−)(g_+ + g_−) with "both"]
                                          [+ Σ_i (ln(ηκ_i − 1) − rate_i) (u_iᵀδ) u_i with rate="gd-eigen"]
    c(0) = (w_0 + w_1)/2,  δ(0) = (w_1 − w_0)/2

Integrated by one of the shared integrators (``integrator="srk4"``, fourth-order stabilised Runge-Kutta, by
default; ``"rkc"``, Runge-Kutta-Chebyshev; ``"dopri"``, Dormand-Prince 5(4)) with dense output (two gradient
evaluations per right-hand-side call), read off at integer times. The error norm treats δ *relative to the rod
length*: the δ equation is linear and homogeneous for a short rod, so a collapsed rod is integrated as
accurately (and as stably) as a long one instead of falling below the absolute tolerance and going uncontrolled.

**Rounding seed.** GD stores ``w_{t+1} = fl(w_t − fl(η g))``; each stored coordinate carries a round-to-nearest
error uniform on ±ulp/2, i.e. an independent kick of variance ``ulp(a_i)²/12`` per step, where ``a_i`` is the
larger operand of that subtraction. Along the rod direction ``v = δ/‖δ‖`` the kick variance per step is
``σ² = Σ_i v_i² ulp(a_i)²/12``. For the oscillation amplitude ``a`` (growth rate ρ) the kicks give
``d⟨a²⟩/dt = 2ρ⟨a²⟩ + σ²``; the deterministic rod follows the root-mean-square amplitude, which adds
``(σ²/(2‖δ‖²)) δ`` to dδ/dt. Below the threshold this holds the rod at GD's stationary rounding level
``σ/√(2|ρ|)`` instead of letting it collapse; above it the rod grows from that level, as GD does. The term is
odd in δ, vanishes at δ = 0 (which stays invariant) and is ~σ²/‖δ‖ ≈ 1e-30 for an open rod.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import integrators
from ..errors import RodflowError
from ..linalg.eigs import top_eigs
from .base import Observation, Process, as_numpy, as_tensor, flatten_state, nest, unflatten_state, unnest
from .gradient_flow import _number, entry_bounds, entry_floors, integration_options, relative_scales
from . import register

SEEDS = ("precision", "none")
# which optimizer-state entries carry a half-vector: all but the rule's smooth ones (second moments), or none
ROD_STATES = ("momentum", "none")
# the δ equation's rate: ηs − 2 (default); GD's ln|ηs − 1| along δ (s: secant along δ); GD's ln(ηκ − 1) along each
# of the top Hessian eigenvectors (κ: the secant of δ's component there)
RATES = ("linear", "gd-multiplier", "gd-eigen")
#: "gd-eigen": a component p_i of δ below this fraction of ‖δ‖ takes its curvature from the eigenvalue, above it from
#: its own secant (measured: 0.01 and 0.1 give the same onset, spike, distance and loss error to 3 digits)
EIGEN_BLEND = 0.1
# rod_rtol per integrator: dopri keeps the tight value it always had; rkc's and srk4's come from the accuracy
# rule (B2a; srk4 at 1e-2 moved the quartic's loss error by 5%)
DEFAULT_ROD_RTOL = {"dopri": 1e-4, "rkc": 1e-3, "srk4": 1e-3}


def rod_norm(d: int, rtol: float, atol: float, rod_rtol: float):
    """Error norm of a rod state (c, δ): the centre by the mixed rtol/atol norm, δ relative to the rod length
    (``rod_rtol · max(|δ_i|, rms δ)``) down to the resolution ε·|c_i| of the ends c ± δ."""

    def norm(x, y0, y1):
        eps, tiny = torch.finfo(y0.dtype).eps, torch.finfo(y0.dtype).tiny
        cmax = torch.maximum(y0[:d].abs(), y1[:d].abs())
        sc = atol + rtol * cmax
        d0, d1 = y0[d:], y1[d:]
        rod = torch.maximum(d0.square().mean().sqrt(), d1.square().mean().sqrt())
        sd = rod_rtol * torch.maximum(torch.maximum(d0.abs(), d1.abs()), rod) + eps * cmax + tiny
        ratio = torch.cat([x[:d] / sc, x[d:] / sd])
        return float(torch.sqrt(torch.mean(ratio**2)))

    return norm


def map_rod_norm(d: int, rod_sizes: list[int], aux_sizes: list[int], rtol: float, atol: float, rod_rtol: float,
                 floors: list[float]):
    """Error norm of a rod of an optimizer's map, y = (x, δ, aux) with x = (w, rod state entries): w by the mixed
    rtol/atol norm, each state and aux entry relative to its own size (rtol · max(|y_i|, rms of the entry)) plus
    its floor (``gradient_flow.entry_floors``: rod entries first, then aux), δ relative to the rod length (as
    :func:`rod_norm`)."""
    n_rod = d + sum(rod_sizes)
    state_blocks = entry_bounds(d, rod_sizes) + entry_bounds(2 * n_rod, aux_sizes)

    def norm(err, y0, y1):
        eps, tiny = torch.finfo(y0.dtype).eps, torch.finfo(y0.dtype).tiny
        ymax = torch.maximum(y0.abs(), y1.abs())
        xmax = ymax[:n_rod]
        scales = torch.empty_like(ymax)
        scales[:d] = atol + rtol * xmax[:d]
        relative_scales(scales, ymax, state_blocks, floors, rtol)
        d0, d1 = y0[n_rod:2 * n_rod], y1[n_rod:2 * n_rod]
        rod = torch.maximum(d0.square().mean().sqrt(), d1.square().mean().sqrt())
        scales[n_rod:2 * n_rod] = rod_rtol * torch.maximum(torch.maximum(d0.abs(), d1.abs()), rod) + eps * xmax + tiny
        return float(torch.sqrt(torch.mean((err / scales) ** 2)))

    return norm


def drift_amplitude(v: float, k: float) -> float:
    """GD's period-2 amplitude at ηλ = 2 made by its own drift (``drift_seed``): along a direction whose ηλ rises
    by k per step (a step on ηλ = 1, N = 1/k steps to 2) while the minimiser moves by v per step, GD's linear
    recurrence x_{t+1} = x_t − ηλ_t (x_t − m_t) has the period-2 part v·√(2πN)·e^−2N there — from its closed-form
    solution, the e^−N part of a truncated exponential series times (N − 1)! k^(N−1) (Stirling); 120-digit runs
    of the recurrence agree within 0.02 nats (tests). Beyond all orders in k: no smooth flow has it."""
    n = 1.0 / k
    return v * math.sqrt(2.0 * math.pi * n) * math.exp(-2.0 * n)


def ulp(a: torch.Tensor) -> torch.Tensor:
    """Unit in the last place of each entry of ``a`` (0 where a = 0) in a's dtype."""
    _, e = torch.frexp(a)  # a = m 2^e, 0.5 <= |m| < 1
    eps = torch.finfo(a.dtype).eps
    return torch.where(a == 0, torch.zeros_like(a), torch.ldexp(torch.full_like(a, eps / 2), e))


def rounding_variance(c: torch.Tensor, delta: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """σ²: variance per GD step of the rounding error of ``w_{t+1} = w_t − step`` along δ/‖δ‖.

    ``step`` is GD's step η g at the rod (the larger of the two ends' steps, per coordinate).
    """
    a = torch.maximum(c.abs() + delta.abs(), step.abs())
    v2 = delta.square() / delta.square().sum()
    return (v2 * ulp(a).square()).sum() / 12.0


@register("rod_flow")
class RodFlow(Process):
    """Rod flow: centre c and half-vector δ of a rod whose ends model two consecutive GD iterates.

    Options: ``integrator`` ("srk4", default: fourth-order stabilised Runge-Kutta; "rkc": Runge-Kutta-Chebyshev;
    "dopri": Dormand-Prince 5(4), the default for optimizers with momentum) and its
    rtol/atol/max_step, with ``rod_rtol`` for δ relative to the rod length; ``correction=True`` adds the
    backward-error correction of the centre −½F_c F (F the centre's field; two HVPs per call), ``correction="full"``
    also its δ-part −½F_δ G (G the half-vector's field; four HVPs per call): the centre's whole second-order
    modified equation of the exact rod map (c, δ) ↦ (c + F, δ + G) (docs/rod_flow.md: closer to GD on four of
    the five cases measured, twice as far on the self-stabilization toy); ``correction="both"`` the whole rod's:
    the centre as "full" and δ's field G − ½(G_c F + G_δ G), from the same four HVPs — on a mode of a quadratic
    δ's rate becomes y − y²/2 (y = ηλ − 2), GD's ln(1 + y) to second order; ``seed`` = "precision" models the
    per-step rounding of GD that re-seeds the oscillation (``seed_scale`` multiplies its standard deviation),
    "none" turns it off;
    ``rate`` = "gd-multiplier" replaces the radial rate ηs − 2 of δ (s: secant sharpness along δ) by GD's per-step
    log-multiplier ln|ηs − 1| (science.md §7), floored at −``max_decay`` near ηs = 1; "linear" (default) keeps
    the equations above. With ``correction="both"`` "gd-multiplier" adds only what the second-order δ equation
    lacks along δ, ln(ηs − 1) − (y − y²/2), and takes −``max_decay`` as the target wherever ηs − 1 < e^−max_decay
    (at and below ηs = 1, where GD has no oscillation to keep). ``rate`` = "gd-eigen" gives δ GD's
    log-multiplier ln(ηκ − 1) along each of the top ``rate_eigs`` (default 3) Hessian eigenvectors of the centre
    (LOBPCG to relative residual ``rate_tol``, default 1e-3, warm-started, once per GD step): added to the δ equation
    along each, minus the rate it already has there, with κ the secant of δ's component there (the eigenvalue for a
    short rod; 2/η on a period-2 orbit, which stays GD's); elsewhere δ keeps its equation's own rate. It is right
    far above the threshold, where "both"'s y − y²/2 turns negative (ηλ > 4) and one radial scalar cannot serve a
    δ that mixes directions (docs/rod_flow.md). ``drift_seed=True`` (with "gd-eigen") adds what GD makes of its
    own drift and the rod cannot (its δ equation is homogeneous): where a tracked ηλ_i crosses 2 between two GD
    steps, δ's component along u_i is raised to v·√(2πN)·e^−2N (v: the centre's move along u_i over the step,
    N = 1/k, k: ηλ_i's rise over the step), GD's period-2 amplitude at ηλ = 2 in the 1-D linear model.

    With another update rule (``optimizer``), the rod is the rod of the rule's step map F on z = (w, state)
    (science.md §6): ``rod_state="momentum"`` (default) gives the momentum entries a half-vector and carries the
    rule's ``smooth`` entries (second moments) and the step count as auxiliary variables; "none" gives only w a
    half-vector (every state entry smooth). ``correction=true`` adds the centre's modified-equation term
    −½ (J f)ₓ, f the centre's field (one HVP, one gradient and a JVP of the rule per call; the smooth entries are
    left first order: their correction can drive a second moment negative in its start-up transient).
    """

    estimates = "midpoint"
    #: the column holding the rod's estimate of GD's oscillation amplitude (onset, ``rodflow.onset``): ‖δ‖ over
    #: the coordinates the ends c ± δ resolve (|δ_i| > eps·|c_i|), as GD's oscillation counts a coordinate only
    #: above its rounding level; below it δ is not a measurement of anything (the integrators do not control it
    #: there: its error norm floors at eps·|c_i|, and its wander there had fired false onsets)
    oscillation_column = "rod_resolved_length"
    #: an onset counts only where η × this column is ≥ 1: the rod open along a direction GD oscillates in
    #: (``rodflow.onset``; plain GD only)
    oscillation_gate = "secant_sharpness"

    def __init__(
        self,
        problem,
        lr,
        integrator: str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        rod_rtol: float | None = None,
        max_step: float = 50.0,
        correction: bool | str = False,
        seed: str = "precision",
        seed_scale: float = 1.0,
        rate: str = "linear",
        max_decay: float = 4.0,
        rate_eigs: int | None = None,
        rate_tol: float | None = None,
        drift_seed: bool = False,
        rod_state: str = "momentum",
        optimizer=None,
    ):
        super().__init__(problem, lr, optimizer)
        state_keys = tuple(self.rule.init(torch.zeros(1, dtype=problem.dtype)))
        self.integrator, self.rtol, self.atol, self.max_step = integration_options(
            "rod_flow", problem.dtype, integrator or self.rule.flow_integrator(state_keys), rtol, atol, max_step,
            stateful=bool(state_keys))
        self.rod_rtol = DEFAULT_ROD_RTOL[self.integrator] if rod_rtol is None else rod_rtol
        if not (_number(self.rod_rtol) and math.isfinite(self.rod_rtol) and self.rod_rtol > 0):
            raise RodflowError(f"rod_flow rod_rtol must be a finite number > 0, got {rod_rtol!r}")
        self.rod_rtol = float(self.rod_rtol)
        if not (isinstance(correction, bool) or correction in ("full", "both")):
            raise RodflowError(f"rod_flow correction must be true, false, 'full' or 'both', got {correction!r}")
        self.correction = correction
        if seed not in SEEDS:
            raise RodflowError(f"rod_flow seed must be one of {', '.join(SEEDS)}, got {seed!r}")
        self.seed = seed
        self.seed_scale = float(seed_scale)
        if not (math.isfinite(self.seed_scale) and self.seed_scale >= 0):
            raise RodflowError(f"rod_flow seed_scale must be a finite number >= 0, got {seed_scale!r}")
        if rate not in RATES:
            raise RodflowError(f"rod_flow rate must be one of {', '.join(RATES)}, got {rate!r}")
        self.rate = rate
        if not (_number(max_decay) and math.isfinite(max_decay) and max_decay > 0):
            raise RodflowError(f"rod_flow max_decay must be a finite number > 0, got {max_decay!r}")
        self.max_decay = float(max_decay)
        if rate != "gd-eigen" and (rate_eigs is not None or rate_tol is not None):
            raise RodflowError("rod_flow rate_eigs and rate_tol apply to rate='gd-eigen' only (drop them or set it)")
        rate_eigs = 3 if rate_eigs is None else rate_eigs
        if not (isinstance(rate_eigs, int) and not isinstance(rate_eigs, bool) and rate_eigs >= 1):
            raise RodflowError(f"rod_flow rate_eigs must be an integer >= 1, got {rate_eigs!r}")
        self.rate_eigs = min(rate_eigs, problem.d)
        rate_tol = 1e-3 if rate_tol is None else rate_tol
        if not (_number(rate_tol) and math.isfinite(rate_tol) and 0 < rate_tol < 1):
            raise RodflowError(f"rod_flow rate_tol must be a number in (0, 1), got {rate_tol!r}")
        self.rate_tol = float(rate_tol)
        if not isinstance(drift_seed, bool):
            raise RodflowError(f"rod_flow drift_seed must be true or false, got {drift_seed!r}")
        if drift_seed and rate != "gd-eigen":
            raise RodflowError("rod_flow drift_seed needs the tracked eigenpairs of rate='gd-eigen' (set it too)")
        self.drift_seed = drift_seed
        self._restart_tracking()
        self.d = problem.d
        if rod_state not in ROD_STATES:
            raise RodflowError(f"rod_flow rod_state must be one of {', '.join(ROD_STATES)}, got {rod_state!r}")
        self.keys = tuple(sorted(self.rule.init(torch.zeros(1, dtype=problem.dtype))))
        if not self.keys and rod_state != "momentum":
            raise RodflowError("rod_flow rod_state applies to optimizers with a state; plain GD has none (drop the option)")
        if self.keys:
            if rate != "linear":
                raise RodflowError(f"rod_flow rate={rate!r} models plain GD; with optimizer {self.rule.name!r} use "
                                   "rate='linear'")
            if correction in ("full", "both"):
                raise RodflowError(f"rod_flow correction={correction!r} models plain GD; with optimizer "
                                   f"{self.rule.name!r} use correction=true")
            if rod_state == "none" and all(k in self.rule.smooth for k in self.keys):
                raise RodflowError(f"rod_flow rod_state='none' takes the half-vector off momentum entries; optimizer "
                                   f"{self.rule.name!r} has none (drop the option)")
            rod = (lambda k: k not in self.rule.smooth) if rod_state == "momentum" else (lambda k: False)
            self.rod_keys = tuple(k for k in self.keys if rod(k))
            self.aux_keys = tuple(k for k in self.keys if not rod(k)) + ("step",)

    # ------------------------------------------------------------------------------------------- the ODE
    def field(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Right-hand side at state y = (c, δ): two gradient evaluations (+ two HVPs with correction, four with
        correction="full" or "both")."""
        d, eta = self.d, self.lr
        c, delta = y[:d], y[d:]
        # A rod shorter than the resolution of its ends (c + δ == c − δ in floating point) has a secant of pure
        # rounding noise: evaluate the two gradients at c ± sδ, resolvable, and divide their difference by s.
        # For such a rod the dynamics are linear in δ, so this is the same secant; the centre moves by O((s‖δ‖)²).
        n = float(delta.norm())
        s = 1.0
        if n > 0:
            floor = math.sqrt(torch.finfo(y.dtype).eps) * max(float(c.abs().max()), 1e-300)
            s = max(1.0, floor / n)
        _, gp = self.problem.loss_grad(c + s * delta)
        _, gm = self.problem.loss_grad(c - s * delta)
        gs = gp + gm
        if s != 1.0:
            gp, gm = 0.5 * gs + 0.5 * (gp - gm) / s, 0.5 * gs - 0.5 * (gp - gm) / s
        G = dd = 0.5 * eta * (gp - gm) - 2.0 * delta
        both = self.correction == "both"
        if self.rate == "gd-multiplier" and not both:
            dd = dd + self._rate_change(gp - gm, delta) * delta
        seed = None
        if self.seed == "precision" and self.seed_scale > 0:
            n2 = delta.square().sum()
            if n2 > 0:
                step = torch.maximum((eta * gp).abs(), (eta * gm).abs())
                sigma2 = self.seed_scale**2 * rounding_variance(c, delta, step)
                seed = (sigma2 / (2.0 * n2)) * delta
                if not both:
                    dd = dd + seed
        dc = -0.5 * eta * gs
        if self.correction:  # −½F_c F [− ½F_δ G]: F = −(η/2)gs, F_c = −(η/2)(H_+ + H_−), F_δ = −(η/2)(H_+ − H_−)
            full = self.correction in ("full", "both")
            V = torch.stack([gs, G if both else dd], dim=1) if full else gs[:, None]
            hp, hm = self.problem.hvp_block(c + delta, V), self.problem.hvp_block(c - delta, V)
            dc = dc - (eta * eta / 8.0) * (hp[:, 0] + hm[:, 0])
            if full:
                dc = dc + (eta / 4.0) * (hp[:, 1] - hm[:, 1])
            if both:  # G − ½G_c F − ½G_δ G: G_c = (η/2)(H_+ − H_−), G_δ = (η/2)(H_+ + H_−) − 2
                dd = 2.0 * G + (eta * eta / 8.0) * (hp[:, 0] - hm[:, 0]) - (eta / 4.0) * (hp[:, 1] + hm[:, 1])
                if self.rate == "gd-multiplier":
                    dd = dd + self._rate_residual(gp - gm, delta) * delta
                if seed is not None:
                    dd = dd + seed
        if self.rate == "gd-eigen" and self.eig is not None:
            dd = dd + self._eigen_residual(gp - gm, delta)
        return torch.cat([dc, dd])

    def _eigen_residual(self, gdiff: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """rate="gd-eigen": along each tracked eigenvector u_i, GD's per-step log-multiplier ln(ηκ_i − 1) minus the
        rate the δ equation already has there (y − y²/2 with correction="both", y otherwise; y = ηκ_i − 2), applied
        to δ's component p_i = u_iᵀδ. κ_i is the secant of that component, a_i/p_i with a_i = u_iᵀ(g_+ − g_−)/2
        (λ_i itself for a short rod: u_iᵀHδ = λ_i p_i; the rod's secant at a period-2 orbit, so the orbit stays
        GD's), blended into the eigenvalue λ_i where p_i is small against ‖δ‖ (a_i/p_i is then a ratio of
        cross-terms). Odd in δ."""
        U, lam = self.eig
        p = U.T @ delta
        a = 0.5 * (U.T @ gdiff)
        e2 = EIGEN_BLEND**2 * delta.square().sum()
        kappa = (a * p + lam * e2) / (p * p + e2) if float(e2) > 0 else lam
        x = self.lr * kappa
        y = x - 2.0
        base = y - 0.5 * y * y if self.correction == "both" else y
        target = torch.where(x - 1.0 > math.exp(-self.max_decay), torch.log((x - 1.0).clamp_min(1e-300)),
                             torch.full_like(x, -self.max_decay))
        return U @ ((target - base) * p)

    def _restart_tracking(self) -> None:
        """A (re)started rod tracks from scratch, as a new process would (gd-eigen, drift_seed)."""
        self.eig_basis, self.eig, self.eig_failures = None, None, 0
        self.last_eig, self.drift_seeds = None, 0  # drift_seed: (ηλ_i, centre) at the previous GD step

    def _start_tracking(self) -> None:
        """At time 0: fresh tracking, the first eigenpairs, and (drift_seed) their ηλ_i recorded."""
        self._restart_tracking()
        self._refresh_eigs()
        if self.drift_seed:
            self._seed_from_drift()

    def _refresh_eigs(self) -> None:
        """rate="gd-eigen": the top ``rate_eigs`` eigenpairs of H at the current centre (LOBPCG warm-started from
        the last basis; rate_tol), used by the field until the next GD step. An eigensolve that does not converge
        keeps the previous pairs (none at the start: no residual) and is counted (``rate_eig_failures``)."""
        if self.rate != "gd-eigen":
            return
        c = self.y[: self.d]
        res = top_eigs(lambda V: self.problem.hvp_block(c, V), self.d, self.rate_eigs, X0=self.eig_basis,
                       tol=self.rate_tol, dtype=self.problem.dtype, generator=torch.Generator().manual_seed(0),
                       device=self.problem.device)
        if not res.converged:
            self.eig_failures += 1
            return
        self.eig_basis = res.basis
        self.eig = (res.vectors, res.values)

    def _seed_from_drift(self) -> bool:
        """drift_seed: where a tracked ηλ_i has just crossed 2 from below (between the previous GD step and this
        one), GD's period-2 amplitude made by its own drift: for a drift v per step along u_i and ηλ_i rising by k
        per step (N = 1/k), the exact solution of the 1-D linear recurrence gives A = v·√(2πN)·e^−2N at ηλ = 2
        (docs/rod_flow.md). δ's component along u_i is raised to A where it is smaller (its sign kept; + at 0);
        the step's k is ηλ_i's change and v the centre's move along u_i over the last step. True if δ changed;
        False without eigenpairs (every eigensolve so far failed)."""
        if self.eig is None:
            return False
        c = self.y[: self.d]
        U, lam = self.eig
        now = (self.lr * lam).tolist()
        last, self.last_eig = self.last_eig, (now, c.clone())
        if last is None:
            return False
        before, c0 = last
        changed = False
        for i, (x0, x1) in enumerate(zip(before, now)):
            k = x1 - x0
            if not (x0 < 2.0 <= x1) or k <= 0:
                continue
            u = U[:, i]
            amp = drift_amplitude(abs(float(u @ (c - c0))), k)
            delta = self.y[self.d:]
            p = float(u @ delta)
            if abs(p) < amp:
                self.y = torch.cat([c, delta + (math.copysign(amp, p) - p) * u])
                self.drift_seeds += 1
                changed = True
        return changed

    def _eta_secant(self, gdiff: torch.Tensor, delta: torch.Tensor) -> float | None:
        """ηs, s = δᵀ(g_+ − g_−)/(2‖δ‖²) the secant sharpness along δ (even in δ); None for δ = 0."""
        n2 = float(delta.square().sum())
        return None if n2 == 0 else self.lr * float(gdiff @ delta) / (2.0 * n2)

    def _rate_residual(self, gdiff: torch.Tensor, delta: torch.Tensor) -> float:
        """With correction="both": GD's per-step log-multiplier ln(ηs − 1) minus the radial rate y − y²/2 (y = ηs − 2)
        that the second-order δ equation already has, for the secant sharpness s along δ (even in δ). Where ηs − 1
        is below e^−max_decay — at ηs = 1, where GD removes an oscillation in one step, and below it, where GD does
        not oscillate and δ is not an oscillation to keep — the target rate is −max_decay."""
        x = self._eta_secant(gdiff, delta)
        if x is None:
            return 0.0
        y = x - 2.0
        target = math.log(1.0 + y) if 1.0 + y > math.exp(-self.max_decay) else -self.max_decay
        return target - y + 0.5 * y * y

    def _rate_change(self, gdiff: torch.Tensor, delta: torch.Tensor) -> float:
        """GD's per-step log-multiplier ln|ηs − 1| minus the rod's radial rate ηs − 2, for the secant sharpness
        s = δᵀ(g_+ − g_−)/(2‖δ‖²) (even in δ: the term stays odd). ln|ηs − 1| → −∞ at ηs = 1, where GD removes
        the oscillation in one step: the rate is floored at −max_decay there (a decay e^−max_decay per step)."""
        x = self._eta_secant(gdiff, delta)
        if x is None:
            return 0.0
        gap = abs(x - 1.0)
        rate = math.log(gap) if gap > 0 else -math.inf
        return max(rate, -self.max_decay) - (x - 2.0)

    # ------------------------------------------------------------ any update rule: the rod of its map F
    def _sizes(self, w: torch.Tensor) -> None:
        init = self.rule.init(w)
        self.sizes = {k: init[k].numel() for k in self.keys}
        self.sizes["step"] = 1
        self.n_rod = self.d + sum(self.sizes[k] for k in self.rod_keys)

    def _split_map(self, y):
        """(x, δ, aux) of y = (x, δ, aux): x = (w, non-smooth state) the rod's centre, δ its half-vector, aux
        the smooth state entries and the step count."""
        n = self.n_rod
        return y[:n], y[n:2 * n], y[2 * n:]

    def _end_state(self, x, aux):
        """(w, optimizer state, step) at one end of the rod, or its centre."""
        state = unflatten_state(x[self.d:], self.sizes, self.rod_keys)
        extra = unflatten_state(aux, self.sizes, self.aux_keys)
        step = float(extra.pop("step"))
        state.update(extra)
        return x[: self.d], state, step

    def _phi(self, x, aux):
        """Φ = F(z) − z at one end: (Φ of the rod part, Φ of the smooth part per entry)."""
        w, state, step = self._end_state(x, aux)
        return self._map_step(state, self.problem.grad(w), step)

    def _map_step(self, state, g, step):
        """Φ given the gradient: (w's increment and the rod entries' changes as one vector, the smooth entries'
        changes)."""
        new = self.rule.update_state(state, g, step)
        inc = self.rule.increment(new, g, self.lr, step)
        rod = [inc] + [new[k].reshape(-1) - state[k].reshape(-1) for k in self.rod_keys]
        smooth = [new[k].reshape(-1) - state[k].reshape(-1) for k in self.aux_keys[:-1]]
        return torch.cat(rod), smooth

    def _map_field(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """The generic rod of a map (science.md §6): with Φ = F − id at the ends z̄ ± δ,
        dz̄/dt = ½(Φ₊ + Φ₋), dδ/dt = −½(Φ₊ − Φ₋) − 2δ; the smooth entries (no half-vector) follow ½(Φ₊ + Φ₋),
        the step count dt. Two gradient evaluations per call, as for plain GD."""
        x, delta, aux = self._split_map(y)
        n = float(delta.norm())
        s = 1.0
        if n > 0:  # a rod below the resolution of its ends: evaluate at x ± sδ (see ``field``)
            floor = math.sqrt(torch.finfo(y.dtype).eps) * max(float(x.abs().max()), 1e-300)
            s = max(1.0, floor / n)
        pp, sp = self._phi(x + s * delta, aux)
        pm, sm = self._phi(x - s * delta, aux)
        dx = 0.5 * (pp + pm)
        dd = -0.5 * (pp - pm) / s - 2.0 * delta
        if self.seed == "precision" and self.seed_scale > 0:
            n2 = delta.square().sum()
            if n2 > 0:
                sigma2 = self.seed_scale**2 * rounding_variance(x, delta, torch.maximum(pp.abs(), pm.abs()))
                dd = dd + (sigma2 / (2.0 * n2)) * delta
        da = [0.5 * (a + b) for a, b in zip(sp, sm)]
        if self.correction:
            dx = dx - 0.5 * self._map_jvp(x, aux, dx, torch.cat([*da, torch.ones(1, dtype=y.dtype, device=y.device)]))
        one = torch.ones(1, dtype=y.dtype, device=y.device)
        return torch.cat([dx, dd, *da, one])

    def _map_jvp(self, x, aux, u_x, u_aux):
        """(J f)_x at the centre for the direction (u_x, u_aux) of (x, aux), the step count included (its
        tangent is u_aux's last entry): the rod part of the derivative of Φ along it, from one HVP for ∇L's part
        and a forward-mode JVP of the rule's update (plus a central difference in the step count, whose
        functions are Python floats)."""
        w, state, step = self._end_state(x, aux)
        g = self.problem.grad(w)
        hv = self.problem.hvp(w, u_x[: self.d])
        tangent = {**unflatten_state(u_x[self.d:], self.sizes, self.rod_keys),
                   **unflatten_state(u_aux[:-1], self.sizes, self.aux_keys[:-1])}
        names = tuple(state)

        def phi(g, *values, step=step):
            return self._map_step(dict(zip(names, values)), g, step)[0]

        values = [state[k] for k in names]
        _, out = torch.func.jvp(phi, (g, *values), (hv, *[tangent[k].reshape(state[k].shape) for k in names]))
        h = 1e-4 * max(step, 1.0)
        return out + u_aux[-1] * (phi(g, *values, step=step + h) - phi(g, *values, step=step - h)) / (2 * h)

    def _start_map(self, w0):
        """z₀ = (w₀, the rule's initial state), z₁ = F(z₀): centre (z₀ + z₁)/2, half-vector (z₁ − z₀)/2; the smooth
        entries start at their average, the step count at 1.5 (the rod's ends take steps t + 1 and t + 2)."""
        self._sizes(w0)
        s0 = self.rule.init(w0)
        _, g0 = self.problem.loss_grad(w0)
        w1, s1 = self.rule.step(w0, s0, g0, self.lr, 1.0)
        z0 = torch.cat([w0, flatten_state(s0, self.rod_keys)]) if self.rod_keys else w0
        z1 = torch.cat([w1, flatten_state(s1, self.rod_keys)]) if self.rod_keys else w1
        smooth = [0.5 * (s0[k].reshape(-1) + s1[k].reshape(-1)) for k in self.aux_keys[:-1]]
        step = torch.full((1,), 1.5, dtype=w0.dtype, device=w0.device)
        y = torch.cat([0.5 * (z0 + z1), 0.5 * (z1 - z0), *smooth, step])
        n = self.n_rod
        self.floors = entry_floors(y, self.d, [self.sizes[k] for k in self.rod_keys], self.atol) + \
            entry_floors(y, 2 * n, [self.sizes[k] for k in self.aux_keys], self.atol)
        return y

    def _integrator(self, y0: torch.Tensor, t0: float = 0.0):
        if self.keys:
            norm = map_rod_norm(self.d, [self.sizes[k] for k in self.rod_keys],
                                [self.sizes[k] for k in self.aux_keys], self.rtol, self.atol, self.rod_rtol,
                                self.floors)
            return integrators.make(self.integrator, self._map_field, y0, rtol=self.rtol, atol=self.atol,
                                    norm=norm, max_step=self.max_step, t0=t0)
        norm = rod_norm(self.d, self.rtol, self.atol, self.rod_rtol)
        return integrators.make(self.integrator, self.field, y0, rtol=self.rtol, atol=self.atol, norm=norm,
                                max_step=self.max_step, t0=t0)

    # -------------------------------------------------------------------------------------- the process
    def start(self, w0):
        self.t = 0
        if self.keys:
            self.y = self._start_map(w0)
            self.ode = self._integrator(self.y)
            return
        _, g0 = self.problem.loss_grad(w0)
        w1 = w0 - self.lr * g0
        self.y = torch.cat([0.5 * (w0 + w1), 0.5 * (w1 - w0)])
        self._start_tracking()
        self.ode = self._integrator(self.y)

    def start_state(self, c: torch.Tensor, delta: torch.Tensor) -> None:
        """Start from an explicit rod (c, δ) instead of GD's first step (theory checks; plain GD)."""
        if self.keys:
            raise RodflowError("rod_flow.start_state takes a rod of plain GD; start other optimizers with start(w0)")
        self.t = 0
        self.y = torch.cat([c, delta]).to(self.problem.dtype)
        self._start_tracking()
        self.ode = self._integrator(self.y)

    def advance(self):
        if self.t > 0 and self.rate == "gd-eigen":  # new eigenpairs at the centre of this step
            self._refresh_eigs()
            if self.drift_seed and self._seed_from_drift():
                self.ode = self._integrator(self.y, t0=float(self.t))  # δ was set: integrate on from the new rod
            else:
                self.ode.field_changed()
        self.t += 1
        self.y = self.ode.advance_to(float(self.t))

    @property
    def centre(self) -> torch.Tensor:
        return self.y[: self.d]

    @property
    def delta(self) -> torch.Tensor:
        """The half-vector in parameter space."""
        if self.keys:
            return self.y[self.n_rod: self.n_rod + self.d]
        return self.y[self.d :]

    def point(self):
        return self.centre

    def observe(self) -> Observation:
        c, delta = self.centre, self.delta
        loss, g = self.problem.loss_grad(c)
        lp, gp = self.problem.loss_grad(c + delta)
        lm, gm = self.problem.loss_grad(c - delta)
        lp, lm = float(lp), float(lm)
        n2 = float(delta.square().sum())
        resolved = delta.abs() > torch.finfo(delta.dtype).eps * c.abs()
        resolved_length = float(torch.where(resolved, delta, torch.zeros_like(delta)).norm())
        secant = float((gp - gm) @ delta) / (2.0 * n2) if n2 > 0 else math.nan
        sign = -1.0 if self.t % 2 else 1.0  # (−1)^t
        extra, precond = {}, None
        if self.keys:  # the optimizer's threshold and preconditioner for the step from the centre
            x, _, aux = self._split_map(self.y)
            w, state, step = self._end_state(x, aux)
            new = self.rule.update_state(state, g, step)
            extra, precond = self.optimizer_scalars(new, step), self.rule.preconditioner(new, step)
        return Observation(
            c,
            {
                "loss": float(loss),
                "loss_pred": 0.5 * (lp + lm),
                "grad_norm": float(g.norm()),
                "loss_plus": lp,
                "loss_minus": lm,
                "rod_length": math.sqrt(n2),
                "rod_resolved_length": resolved_length,
                "secant_sharpness": secant,
                "ode_nfev": float(self.ode.nfev),
                "ode_naccept": float(self.ode.naccept),
                **({"rate_eig_failures": float(self.eig_failures)} if self.rate == "gd-eigen" else {}),
                **({"drift_seeds": float(self.drift_seeds)} if self.drift_seed else {}),
                **extra,
            },
            estimates="midpoint", references={"midpoint": c, "iterate": c - sign * delta},
            vectors={"delta": as_numpy(delta), "end_iterate": as_numpy(c - sign * delta)},
            preconditioner=precond,
        )

    def state_dict(self):
        state = {"t": self.t, "y": as_numpy(self.y)}
        if self.keys:
            state["floors"] = np.array(self.floors)
        if self.drift_seed:
            state["drift_seeds"] = self.drift_seeds
            if self.last_eig is not None:
                state.update(drift_eta_lam=np.array(self.last_eig[0]), drift_centre=as_numpy(self.last_eig[1]))
        if self.rate == "gd-eigen":
            state["eig_failures"] = self.eig_failures
            if self.eig is not None:
                state.update(eig_basis=as_numpy(self.eig_basis), eig_vectors=as_numpy(self.eig[0]),
                             eig_values=as_numpy(self.eig[1]))
        state.update(nest("ode", self.ode.state_dict()))
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.y = as_tensor(state["y"], self.problem.dtype, self.problem.device)
        if self.keys:
            self._sizes(self.y[: self.d])
            self.floors = [float(x) for x in state["floors"]]
        if self.drift_seed:
            self.drift_seeds = int(state["drift_seeds"])
            self.last_eig = None
            if "drift_centre" in state:
                self.last_eig = ([float(x) for x in state["drift_eta_lam"]],
                                 as_tensor(state["drift_centre"], self.problem.dtype, self.problem.device))
        if self.rate == "gd-eigen":
            self.eig_failures = int(state["eig_failures"])
            self.eig_basis, self.eig = None, None
            if "eig_vectors" in state:
                dt, dev = self.problem.dtype, self.problem.device
                self.eig_basis = as_tensor(state["eig_basis"], dt, dev)
                self.eig = (as_tensor(state["eig_vectors"], dt, dev), as_tensor(state["eig_values"], dt, dev))
        self.ode = self._integrator(self.y)  # then every field of the integrator is replaced:
        self.ode.load_state_dict(unnest("ode", state))
