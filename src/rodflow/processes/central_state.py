"""What an update rule other than plain GD adds to the central flow: its state, its substep and its threshold.

The central flow of a rule runs on y = (w, s, n): the iterate, the rule's state entries that have memory (``keys``)
and the step count n, read as gradient flow reads them (``state_convention``, "centred" by default). Momentum
entries are integrated (``momentum="ode"``, default) or held at their fixed point for the time-averaged gradient
(``"slaved"``: heavy ball b = Ḡ/(1 − β), Adam m̂ = Ḡ — the central-flow authors leave momentum out of their flows).

The oscillation x of GD around the flow has covariance Σ = U X Uᵀ on the critical eigenvectors, so the gradient
the optimizer feeds on has mean Ḡ = g + ½ Σ_kl X_kl g_kl (g_kl = ∇⟨u_k, H u_l⟩) and covariance (HU)X(HU)ᵀ. The
state's update is averaged over both (science.md §6's rule, split into mean and covariance):

    ds/dt = R(s, Ḡ) + Σ_kl X_kl D_kl,   D_kl = ½ ∇²_g R[h_k, h_l],  h_k = τ P u_k  (H u_k on the edge)

with R the rule's state rate (``centred_rate`` or ``dstate_dt``); D_kl comes from R at zero state by polarisation,
exact for rates affine in the state and quadratic in the gradient (every rule here). For RMSProp/Adam it is the
official flow's diag(HΣH) term of dν/dt; the feed at Ḡ rather than at g adds its cross term g ⊙ ∇⟨Σ, H⟩ (same
order in Σ). One substep of length dt updates the state first and then w with the new state, as the optimizers
do (for momentum this is symplectic Euler, stable on the oscillatory modes where forward Euler is not):

    s⁺ = s + dt·ds/dt,   n⁺ = n + dt,   w⁺ = w + dt·increment(s⁺, Ḡ, n⁺)

For GD this is the reference's w⁺ = w − dt·η Ḡ. The constraint is on the eigenvalues of P⁻¹H against the rule's
threshold τ(s, n): with Q = τ·P (a d-vector, or one value), H − Q ⪯ 0 on the critical generalised eigenvectors,
normalised u = √(2/τ)·v with vᵀPv = 1 (so uᵀHu = e = 2λ/τ, threshold 2 as for GD, and uᵀQu = 2). One substep
ahead, uᵢᵀ(H − Q)uⱼ changes by ⟨g_ij, w⁺ − w⟩ − ⟨uᵢ ⊙ uⱼ, Q⁺ − Q⟩, a function of X through the substep; the
central flow linearises it at X = 0 by forward differences of the substep along PSD directions of X (a covariance
only adds to second moments, so a zero second moment never goes negative under the difference; float64, no
gradient evaluations: the substep needs only the rule's arithmetic).
"""

from __future__ import annotations

import torch

from ..errors import RodflowError

Tensor = torch.Tensor
FD_STEP = 1e-6  # relative perturbation of the mean gradient or the state for the substep's derivative in X
MOMENTUM = ("ode", "slaved")


class RuleState:
    """The central flow's view of an update rule (see the module docstring)."""

    def __init__(self, rule, lr: float, centred: bool, momentum: str, dtype: torch.dtype):
        if momentum not in MOMENTUM:
            raise RodflowError(f"central_flow momentum must be one of {', '.join(MOMENTUM)}, got {momentum!r}")
        self.rule = rule
        self.lr = float(lr)
        self.centred = centred
        self.slaved = momentum == "slaved" or not rule.fast
        probe = torch.zeros(1, dtype=dtype)
        init = rule.init(probe)
        instant = rule.instantaneous()
        bad = [k for k in sorted(init) if k in instant and k not in rule.fast]
        if bad:
            raise RodflowError(f"central_flow needs the memory of optimizer {rule.name!r}'s {', '.join(bad)}: with "
                               "its decay at 0 it is a function of the gradient, not a state (use a decay > 0)")
        # momentum without memory (β = 0) is the gradient itself: held at its fixed point, not integrated
        self.keys = tuple(k for k in sorted(init)
                          if not ((self.slaved or k in instant) and k in rule.fast))
        self.held = tuple(k for k in rule.fast if k not in self.keys)  # momentum entries at their fixed point
        if self.keys and not centred:  # the dynamics must exist: a one-line error now
            rule.dstate_dt(init, probe, 1.0, self.keys)

    # ----------------------------------------------------------------------------------------- state
    def start(self, w0: Tensor, g0: Tensor) -> tuple[dict[str, Tensor], float]:
        """(s, n) at time 0, as gradient flow starts: centred halfway through the first step (count ½), or the
        post-update state of the first step (count 1)."""
        state = self.rule.flow_start(w0, g0)
        if self.centred:
            init = self.rule.init(w0)
            return {k: 0.5 * (init[k] + state[k]) for k in self.keys}, 0.5
        return {k: state[k] for k in self.keys}, 1.0

    def complete(self, s: dict[str, Tensor], v: Tensor, n: float) -> dict[str, Tensor]:
        """The rule's full state: the integrated entries, and momentum held at its fixed point for gradient v."""
        full = self._filled(s, v)
        return self.rule.quasi_static(full, v, n) if self.held else full

    def _filled(self, s: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
        """The integrated entries ``s`` with the rule's other entries at zero (shaped from ``like``)."""
        return {**{k: torch.zeros_like(x) for k, x in self.rule.init(like).items() if k not in s}, **s}

    def rate(self, s: dict[str, Tensor], g: Tensor, n: float) -> dict[str, Tensor]:
        """R(s, g): ds/dt of the integrated entries for gradient g."""
        if not self.keys:
            return {}
        full = self.complete(s, g, n)
        if self.centred:  # the update s_t -> s_{t+1} has count t + 1 = n + 1/2 (gradient flow's convention)
            return self.rule.centred_rate(full, g, n + 0.5, self.keys)
        return self.rule.dstate_dt(full, g, n, self.keys)

    def curvature(self, n: float, a: Tensor, b: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """½ ∇²_g R[a, b] by polarisation at zero state: (R(a+b) + R(−a−b) − R(a−b) − R(−a+b)) / 8."""
        zero = {k: torch.zeros_like(x) for k, x in like.items()}
        parts = [self.rate(zero, a + b, n), self.rate(zero, -a - b, n), self.rate(zero, a - b, n),
                 self.rate(zero, b - a, n)]
        return {k: (parts[0][k] + parts[1][k] - parts[2][k] - parts[3][k]) / 8.0 for k in self.keys}

    def substep(self, s: dict[str, Tensor], n: float, g: Tensor, dG: Tensor | None, dS: dict[str, Tensor] | None,
                dt: float) -> tuple[Tensor, dict[str, Tensor]]:
        """(w⁺ − w, s⁺) of one substep with mean gradient Ḡ = g + dG and the covariance term dS of ds/dt."""
        G = g if dG is None else g + dG
        ds = self.rate(s, G, n)
        new = {k: s[k] + dt * (ds[k] if dS is None else ds[k] + dS[k]) for k in self.keys}
        step = self.rule.increment(self.complete(new, G, n + dt), G, self.lr, n + dt)
        return dt * step, new

    def check_linear(self, s: dict[str, Tensor], g: Tensor, n: float) -> None:
        """With momentum held at its fixed point the step must be linear in the gradient (the SDCP's lever acts
        through it); a one-line error otherwise."""
        if not self.held:
            return
        a = self.rule.increment(self.complete(s, g, n), g, self.lr, n)
        b = self.rule.increment(self.complete(s, 2.0 * g, n), 2.0 * g, self.lr, n)
        if not torch.allclose(b, 2.0 * a, rtol=1e-6, atol=0.0):
            raise RodflowError(f"central_flow needs optimizer {self.rule.name!r}'s step to be linear in the gradient "
                               "once its momentum is at its fixed point; it is not (use momentum='ode')")

    def full_state(self, s: dict[str, Tensor]) -> dict[str, Tensor]:
        """The rule's state with its held momentum entries at zero (P and τ do not read them)."""
        return self._filled(s, s[self.keys[-1]] if s else torch.zeros(1, dtype=torch.float64))

    def preconditioner(self, s: dict[str, Tensor], n: float) -> Tensor | None:
        return self.rule.preconditioner(self.full_state(s), n) if self.rule.preconditioned else None

    def threshold(self, s: dict[str, Tensor], n: float) -> float:
        return float(self.rule.threshold(self.full_state(s), self.lr, n))

    def q(self, s: dict[str, Tensor], n: float) -> Tensor:
        """Q = τ·P (one value when P is the identity or scalar)."""
        P = self.preconditioner(s, n)
        tau = self.threshold(s, n)
        if P is None:
            return torch.full((1,), tau, dtype=torch.float64)
        return tau * P.to(torch.float64)


def perturbation(g: Tensor, dG: Tensor, s: dict[str, Tensor], dS: dict[str, Tensor]) -> float:
    """The step h of a difference along (dG, dS): the largest relative change of Ḡ or of a state entry is
    FD_STEP (1 when the direction moves nothing)."""
    ratios = []
    top = float(dG.abs().max())
    if top > 0 and float(g.abs().max()) > 0:
        ratios.append(float(g.abs().max()) / top)
    for k, v in dS.items():
        top = float(v.abs().max())
        if top > 0 and float(s[k].abs().max()) > 0:
            ratios.append(float(s[k].abs().max()) / top)
    return FD_STEP * min(ratios) if ratios else 1.0
