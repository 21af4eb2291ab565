"""Central flow (Cohen, Damian, Talwalkar, Kolter, Lee 2025; science.md §2), discretised as the public reference.

    dw/dt = −η [ g(w) + ½ ∇_w ⟨Σ, H(w)⟩ ],   Σ = U X Uᵀ on the critical eigenspace of H,

with time in GD steps. Discretisation (per unit of time, ``substeps`` forward-Euler substeps of dt = 1/substeps):

1. L, g = ∇L and the tracked top eigenpairs (λ_i, v_i) of H at w (warm-started LOBPCG). Effective eigenvalues
   e_i = η λ_i; those with e_i > 2·``threshold`` are *critical* (k of them).
2. In the reference normalisation u_i = √η v_i (UᵀU = η I): g_ij = ∇_w(u_iᵀ H u_j) for i ≤ j by nested
   autodiff (``problem.third``), k(k+1)/2 third-derivative products.
3. The effective matrix M_ij = u_iᵀ H u_j = diag(e) moves along the flow as dM_ij/dt = ⟨g_ij, dw/dt⟩. Its
   value one substep ahead must stay ≤ 2 (in the Loewner order):
       α + β[X] ⪰ 0,  α = diag(2 − e) + dt·A,  A_ij = η⟨g_ij, g⟩,
       β[X]_ij = dt·(η/2) Σ_kl X_kl ⟨g_ij, g_kl⟩,
   and X is the solution of the SDCP  X ⪰ 0, α + β[X] ⪰ 0, ⟨X, α + β[X]⟩ = 0  (``rodflow.linalg.sdcp``;
   X = 0 when α ⪰ 0, closed form when k = 1).
4. w ← w − dt·η (g + ½ Σ_kl X_kl g_kl)  (sum over ordered pairs k, l), so Σ = U X Uᵀ = η V X Vᵀ.

Predicted time-averaged GD loss: L + ½⟨Σ, H⟩ = L + tr(Σ)/η (the critical eigenvalues of H are 2/η), which is
the reference's ``L + tr X`` because tr Σ = η tr X. Predicted mean squared gradient norm of GD: with
w_GD = w + x, E[x xᵀ] = Σ, g(w + x) ≈ g + H x, so E‖g‖² ≈ ‖g‖² + tr(H Σ H) = ‖g‖² + 4 tr(Σ)/η².

Eigenvector tracking: ``neigs`` eigenpairs at least, plus LOBPCG guard vectors; whenever the last tracked
eigenvalue is itself critical, one more is tracked (immediately, in the same substep), so every critical
eigenvalue is always captured and at least one non-critical tracked eigenvalue certifies it. The residual
tolerance is ``eig_tol``, relaxed to 1e-5 while the top effective eigenvalue is below 0.9 of the threshold
(there the eigenpairs only certify that nothing is critical).

Another update rule than plain GD (momentum, RMSProp, Adam, ...; science.md §6): the flow runs on (w, state, step
count), the constraint is on the eigenvalues of P⁻¹H against the rule's threshold and the state's update feels
the oscillation's covariance (``central_state.py``; options ``momentum`` "ode" (default) or "slaved",
``state_convention`` "centred" (default) or "post-update", as for gradient flow). Its rows add ``threshold``;
``tracked_sharpness``/``tracked_eigs`` are then eigenvalues of P⁻¹H, ``loss_pred`` = L + ½⟨Σ, H⟩ and
``grad_sq_pred`` = ‖g‖² + tr(HΣH) with H U = τ P U on the edge.

Row t of the record describes the interval [t, t+1) as the reference does: loss and eigenvalues at w_t
(substep 0), tr Σ and the eigenvalues of Σ averaged over the substeps of [t, t+1). So the step t → t+1 is
computed on arriving at w_t (counted as the cost of that row), and ``advance`` commits it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import RodflowError
from ..linalg.eigs import top_eigs
from ..linalg.sdcp import gram_operator, psd_operator, solve_sdcp
from .base import Observation, Process, as_numpy, as_tensor
from .central_state import RuleState, perturbation
from . import register

FAR_FRACTION = 0.9  # top effective eigenvalue below FAR_FRACTION·threshold·2: loose eigen-tolerance
FAR_TOL = 1e-5
# another rule than GD: top effective eigenvalue below SKIP_FRACTION·threshold·2 at a step's first substep — the
# other substeps skip the eigensolve (nothing can become critical within the step: that would take λ_max(P⁻¹H)
# doubling within one step; the trajectory is the same, X = 0 either way)
SKIP_FRACTION = 0.5
_STEP_ERRORS = (RodflowError, RuntimeError, ArithmeticError, torch.linalg.LinAlgError, np.linalg.LinAlgError)


@register("central_flow")
class CentralFlow(Process):
    """Central flow by forward Euler with the reference's SDCP, linearised one substep ahead."""

    estimates = "iterate"
    #: the column counting active constraints: central flow enters the edge of stability when it is >= 1
    edge_column = "n_critical"

    def __init__(
        self,
        problem,
        lr,
        substeps: int = 4,
        threshold: float = 0.975,
        neigs: int = 1,
        max_k: int = 8,
        eig_tol: float = 1e-6,
        qp_tol: float = 1e-12,
        sdcp_over: str = "critical",
        seed: int = 0,
        state_convention: str = "centred",
        momentum: str = "ode",
        optimizer=None,
    ):
        super().__init__(problem, lr, optimizer)
        if isinstance(substeps, bool) or not isinstance(substeps, (int, float)) or int(substeps) != substeps \
                or substeps < 1:
            raise RodflowError(f"central_flow substeps must be a positive integer, got {substeps!r}")
        if not 0 < float(threshold) <= 1:
            raise RodflowError(f"central_flow threshold must be in (0, 1] (a fraction of 2/lr), got {threshold!r}")
        if isinstance(neigs, bool) or int(neigs) != neigs or neigs < 1:
            raise RodflowError(f"central_flow neigs must be a positive integer, got {neigs!r}")
        if isinstance(max_k, bool) or int(max_k) != max_k or max_k < neigs:
            raise RodflowError(f"central_flow max_k must be an integer >= neigs ({neigs}), got {max_k!r}")
        if not float(eig_tol) > 0 or not float(qp_tol) > 0:
            raise RodflowError("central_flow eig_tol and qp_tol must be positive")
        if sdcp_over not in ("critical", "tracked"):
            raise RodflowError(f"central_flow sdcp_over must be 'critical' or 'tracked', got {sdcp_over!r}")
        self.sdcp_over = sdcp_over
        if state_convention not in ("centred", "post-update"):
            raise RodflowError(f"central_flow state_convention must be 'centred' or 'post-update', "
                               f"got {state_convention!r}")
        # another rule than plain GD: its state, velocity and threshold (central_state.py)
        self.dyn = None if self.rule.name == "gd" else RuleState(self.rule, lr, state_convention == "centred",
                                                                   momentum, problem.dtype)
        if state_convention != "centred" and not (self.dyn and self.dyn.keys):
            raise RodflowError(f"central_flow state_convention applies to optimizers with an integrated state; "
                               f"optimizer {self.rule.name!r} has none here (drop the option)")
        if momentum != "ode" and not self.rule.fast:
            raise RodflowError(f"central_flow momentum applies to optimizers with momentum; optimizer "
                               f"{self.rule.name!r} has none (drop the option)")
        self.substeps = int(substeps)
        self.threshold = float(threshold)
        self.neigs = min(int(neigs), problem.d)
        self.max_k = int(max_k)
        self.eig_tol = float(eig_tol)
        self.qp_tol = float(qp_tol)
        self.seed = int(seed)
        # per-step arrays have a fixed length; never the parameter dimension (simulate treats (d,) as a point)
        self.n_report = self.max_k + 1 if self.max_k == problem.d else self.max_k

    # --------------------------------------------------------------------------------------- interface
    def start(self, w0):
        self.t = 0
        self.w = w0.clone()
        self.k_track = self.neigs
        self.basis: torch.Tensor | None = None
        self.V_prev: torch.Tensor | None = None
        self.X_prev: np.ndarray | None = None
        self.top_eff: float | None = None
        self.gen = torch.Generator().manual_seed(self.seed)
        if self.dyn is not None:
            _, g0 = self.problem.loss_grad(w0)
            self.s, self.n = self.dyn.start(w0, g0)
            self.dyn.check_linear(self.s, g0, self.n)
        self._prepare()

    def advance(self):
        if self._error is not None:
            raise RuntimeError(f"central flow step {self.t} -> {self.t + 1} failed: {self._error}")
        self.w = self._next
        if self.dyn is not None:
            self.s, self.n = self._next_state
        self.t += 1
        self._prepare()

    def point(self):
        return self.w

    def observe(self) -> Observation:
        r = self._row
        loss = r["loss"]
        tr = r.get("trace_sigma", math.nan)
        gsq = r["grad_sq"]
        if self.dyn is None:  # on the edge ½⟨Σ, H⟩ = tr Σ/η and tr(HΣH) = 4 tr Σ/η²
            half_sigma_h, h_sigma_h = tr / self.lr, 4.0 * tr / self.lr**2
        else:
            half_sigma_h, h_sigma_h = r.get("half_sigma_h", math.nan), r.get("h_sigma_h", math.nan)
        scalars = {
            "loss": loss,
            "loss_pred": loss + half_sigma_h,
            "grad_norm": math.sqrt(gsq) if math.isfinite(gsq) else math.nan,
            "grad_sq_pred": gsq + h_sigma_h,
            "trace_sigma": tr,
            "n_critical": r.get("n_critical", math.nan),
            "k_tracked": r.get("k_tracked", math.nan),
            "tracked_sharpness": r.get("tracked_sharpness", math.nan),
            "qp_residual": r.get("qp_residual", math.nan),
            "eig_unconverged": r.get("eig_unconverged", math.nan),
        }
        arrays = {
            "X_eigs": r.get("X_eigs", np.full(self.n_report, np.nan)),
            "tracked_eigs": r.get("tracked_eigs", np.full(self.n_report, np.nan)),
        }
        obs = Observation(self.w, scalars, arrays, estimates=self.estimates)
        if self.dyn is not None:
            scalars["critical_capped"] = r.get("critical_capped", math.nan)
            scalars.update(self.optimizer_scalars(self.dyn.full_state(self.s), self.n))
            obs.preconditioner = self.dyn.preconditioner(self.s, self.n)
        return obs

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"t": self.t, "w": as_numpy(self.w), "k_track": self._in["k_track"],
                                 "gen": self._in["gen"].numpy().copy()}
        for key in ("basis", "V_prev"):
            if self._in[key] is not None:
                state[key] = as_numpy(self._in[key])
        if self._in["X_prev"] is not None:
            state["X_prev"] = self._in["X_prev"].copy()
        if self._in["top_eff"] is not None:
            state["top_eff"] = self._in["top_eff"]
        if self.dyn is not None:
            state["count"] = self.n
            state.update({f"state.{k}": as_numpy(v) for k, v in self.s.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dtype = self.problem.dtype
        self.t = int(state["t"])
        self.w = as_tensor(state["w"], dtype, self.problem.device)
        self.k_track = int(state["k_track"])
        self.gen = torch.Generator()
        self.gen.set_state(torch.from_numpy(np.array(state["gen"], dtype=np.uint8)))
        self.basis = as_tensor(state["basis"], dtype, self.problem.device) if "basis" in state else None
        self.V_prev = as_tensor(state["V_prev"], dtype, self.problem.device) if "V_prev" in state else None
        self.X_prev = np.asarray(state["X_prev"], dtype=float) if "X_prev" in state else None
        self.top_eff = float(state["top_eff"]) if "top_eff" in state else None
        if self.dyn is not None:
            self.n = float(state["count"])
            self.s = {k: as_tensor(state[f"state.{k}"], dtype, self.problem.device) for k in self.dyn.keys}
        self._prepare()

    # ------------------------------------------------------------------------------------------ a step
    def _prepare(self) -> None:
        """Compute the step [t, t+1) from w_t: the row of time t and the next iterate."""
        self._in = {"k_track": self.k_track, "gen": self.gen.get_state(), "basis": self.basis,
                    "V_prev": self.V_prev, "X_prev": self.X_prev, "top_eff": self.top_eff}
        self._error = None
        self._row: dict[str, Any] = {}
        if self.dyn is not None:
            return self._prepare_rule()
        w = self.w
        dt = 1.0 / self.substeps
        factors, traces, residual, unconverged = [], [], 0.0, 0
        try:
            for s in range(self.substeps):
                g = self._gradient(w, s)
                if g is None:
                    # diverged inside the step: commit the non-finite point, so the run records the
                    # divergence at t + 1 (with row t intact) instead of a failure
                    self._row.update(trace_sigma=float(np.mean(traces)), qp_residual=residual,
                                     eig_unconverged=unconverged)
                    self._next = w
                    return
                eig = self._eigs(w)
                unconverged += int(not eig.converged)
                e = self.lr * eig.values
                k = int((e > 2.0 * self.threshold).sum())
                if s == 0:
                    self._record_eigs(eig, k)
                direction = g
                X = None
                if self.sdcp_over == "tracked":  # every tracked eigenvector enters (the reference's choice)
                    k = eig.values.numel()
                if k > 0:
                    X, G, res = self._sdcp(w, g, eig.vectors[:, :k], e[:k], dt)
                    residual = max(residual, res)
                    if X is not None:
                        coef = torch.as_tensor(X, dtype=w.dtype, device=w.device)
                        direction = g + 0.5 * torch.einsum("kl,kld->d", coef, G)
                self.X_prev = X
                if X is not None:
                    vals, Q = np.linalg.eigh(X)
                    F = torch.as_tensor(Q * np.sqrt(np.maximum(vals, 0.0)), dtype=w.dtype, device=w.device)
                    factors.append(math.sqrt(self.lr) * eig.vectors[:, :k] @ F)
                    traces.append(self.lr * float(np.trace(X)))
                else:
                    traces.append(0.0)
                w = w - (dt * self.lr) * direction
        except _STEP_ERRORS as exc:
            return self._fail(exc)
        self._row.update(trace_sigma=float(np.mean(traces)), X_eigs=self._sigma_eigs(factors), qp_residual=residual,
                         eig_unconverged=unconverged)
        self._next = w

    def _gradient(self, w, sub: int):
        """g at w (the row's loss and ‖g‖² at substep 0); None when a later substep finds it non-finite (the
        flow diverged inside the step), an error at substep 0."""
        loss, g = self.problem.loss_grad(w)
        if sub == 0:
            self._row.update(loss=float(loss), grad_sq=float(g @ g))
        if not (math.isfinite(float(loss)) and bool(torch.isfinite(g).all())):
            if sub == 0:
                raise ArithmeticError("non-finite loss or gradient")
            return None
        return g

    def _record_eigs(self, eig, k: int) -> None:
        """The row's eigenvalue columns (substep 0)."""
        tracked = np.full(self.n_report, np.nan)
        tracked[: eig.values.numel()] = eig.values.cpu().numpy()
        self._row.update(n_critical=k, k_tracked=eig.values.numel(), tracked_sharpness=float(eig.values[0]),
                         tracked_eigs=tracked)

    def _fail(self, exc) -> None:
        """Record a failed step (``advance`` raises it; the row keeps what was computed)."""
        self._error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self._row.setdefault("loss", math.nan)
        self._row.setdefault("grad_sq", math.nan)

    def _sigma_eigs(self, factors) -> np.ndarray:
        """Eigenvalues of Σ averaged over the substeps, (1/n) Σ_s F_s F_sᵀ: the nonzero ones of FᵀF/n."""
        x_eigs = np.full(self.n_report, np.nan)
        if factors:
            F = torch.cat(factors, dim=1)
            ev = torch.linalg.eigvalsh(F.T @ F / self.substeps).flip(0).cpu().numpy()
            ev = ev[ev > 1e-10 * max(float(ev[0]), 0.0)]  # the numerical rank of the average
            n = min(ev.size, self.n_report)
            x_eigs[:n] = ev[:n]
        return x_eigs

    def _prepare_rule(self) -> None:
        """The step [t, t+1) of the central flow of another rule than GD (central_state.py) from (w_t, s_t, n_t):
        substeps of the rule's own ordering (state, then w), with the SDCP on the generalised eigenvalues of
        (H, P) against the rule's threshold, linearised one substep ahead as for GD."""
        dyn = self.dyn
        dtype = self.problem.dtype
        w, s, n = self.w, dict(self.s), self.n
        dt = 1.0 / self.substeps
        factors, traces, halves, hsh, residual, unconverged, capped = [], [], [], [], 0.0, 0, 0
        far = False
        try:
            for sub in range(self.substeps):
                g = self._gradient(w, sub)
                if g is None:
                    break  # diverged inside the step: commit the non-finite point (see _prepare)
                s64 = {key: v.to(torch.float64) for key, v in s.items()}
                g64 = g.to(torch.float64)
                P = dyn.preconditioner(s64, n)
                tau = dyn.threshold(s64, n)
                if not (math.isfinite(tau) and tau > 0) or (P is not None and not bool((P > 0).all())):
                    raise ArithmeticError("the optimizer's threshold or preconditioner is not positive")
                factor = 2.0 / tau  # effective eigenvalue e = 2λ/τ: the threshold sits at 2, as for GD
                scale = None if P is None else P.rsqrt().to(dtype)
                k = 0
                if sub == 0 or not far:
                    # Adam's bias-corrected start-up can put more than max_k directions above its (small) early
                    # threshold: the constraint then holds the top max_k, and the substep is counted
                    self._capped = False
                    eig = self._eigs(w, factor, scale, cap=True)
                    capped += int(self._capped)
                    unconverged += int(not eig.converged)
                    e = factor * eig.values
                    k = int((e > 2.0 * self.threshold).sum())
                    if sub == 0:
                        self._record_eigs(eig, k)
                        far = self.sdcp_over == "critical" and float(e[0]) < SKIP_FRACTION * 2.0 * self.threshold
                    if self.sdcp_over == "tracked":
                        k = eig.values.numel()
                dG, dS, X = None, None, None
                if k > 0:
                    V = eig.vectors[:, :k].to(torch.float64)
                    U = math.sqrt(factor) * (V if P is None else P.rsqrt().reshape(-1, 1) * V)  # uᵀHu = e, uᵀQu = 2
                    X, G, D, res = self._sdcp_rule(w, g64, s64, n, U, e[:k].to(torch.float64), tau, P, dt)
                    residual = max(residual, res)
                    if X is not None:
                        Xt = torch.as_tensor(X, dtype=torch.float64, device=g64.device)
                        dG = 0.5 * torch.einsum("kl,kld->d", Xt, G)
                        dS = {key: sum(float(X[a, b]) * D[a][b][key] for a in range(k) for b in range(k))
                              for key in dyn.keys}
                self.X_prev = X
                if X is not None:
                    vals, Qx = np.linalg.eigh(X)
                    F = torch.as_tensor(Qx * np.sqrt(np.maximum(vals, 0.0)), dtype=torch.float64, device=g64.device)
                    factors.append((U @ F).to(dtype))
                    traces.append(float((Xt * (U.T @ U)).sum()))
                    halves.append(0.5 * float((torch.diagonal(Xt) * e[:k].to(torch.float64)).sum()))  # ½⟨Σ, H⟩
                    PU = U if P is None else P.reshape(-1, 1) * U
                    hsh.append(tau**2 * float((Xt * (PU.T @ PU)).sum()))  # tr(HΣH), H U = τ P U on the edge
                else:
                    traces.append(0.0)
                    halves.append(0.0)
                    hsh.append(0.0)
                step, s64 = dyn.substep(s64, n, g64, dG, dS, dt)
                w = w + step.to(dtype)
                s = {key: v.to(dtype) for key, v in s64.items()}
                n = n + dt
        except _STEP_ERRORS as exc:
            return self._fail(exc)
        mean = (lambda xs: float(np.mean(xs)) if xs else math.nan)
        self._row.update(trace_sigma=mean(traces), half_sigma_h=mean(halves), h_sigma_h=mean(hsh),
                         X_eigs=self._sigma_eigs(factors), qp_residual=residual, eig_unconverged=unconverged,
                         critical_capped=capped)
        self._next = w
        self._next_state = (s, n)

    def _sdcp_rule(self, w, g, s, n, U, e, tau, P, dt):
        """The SDCP of one substep for a rule (central_state.py): X (None if inactive), the third-derivative
        vectors g_ij (k, k, d, float64), the covariance terms D[k][l] of ds/dt and the residual. The change of
        uᵢᵀ(H − Q)uⱼ over the substep is linearised in X by differences of the substep."""
        dyn = self.dyn
        k = U.shape[1]
        Uw = U.to(w.dtype)
        G = torch.empty((k, k, w.numel()), dtype=torch.float64, device=g.device)
        for i in range(k):
            for j in range(i, k):
                G[i, j] = self.problem.third(w, Uw[:, i], Uw[:, j]).to(torch.float64)
                G[j, i] = G[i, j]
        UU = U.T[:, None, :] * U.T[None, :, :]  # u_i ⊙ u_j, (k, k, d)
        Q = dyn.q(s, n)

        def change(step, new):  # the change of uᵢᵀ(H − Q)uⱼ over a substep, to first order
            return torch.einsum("ijd,d->ij", G, step) - (UU * (dyn.q(new, n + dt) - Q)).sum(-1)

        base = change(*dyn.substep(s, n, g, None, None, dt))  # X = 0
        A = -base.cpu().numpy()
        Hu = tau * (U if P is None else P.reshape(-1, 1) * U)  # H u_k on the edge
        D = [[None] * k for _ in range(k)]
        for a in range(k):
            for b in range(a, k):
                D[a][b] = D[b][a] = dyn.curvature(n, Hu[:, a], Hu[:, b], s) if dyn.keys else {}

        def response(C):
            """d/dε of the change over the substep at X = εC for a PSD direction C, by a forward difference: a PSD
            covariance only adds to second moments, so the perturbed state stays valid (a zero second moment
            stays >= 0, where a central difference would take its square root below 0)."""
            dG = 0.5 * torch.einsum("kl,kld->d", C, G)
            dS = {key: sum(float(C[i, j]) * D[i][j][key] for i in range(k) for j in range(k)) for key in dyn.keys}
            h = perturbation(g, dG, s, dS)
            up = change(*dyn.substep(s, n, g, h * dG, {key: h * v for key, v in dS.items()}, dt))
            return (-(up - base) / h).cpu().numpy()

        eye = torch.eye(k, dtype=torch.float64, device=g.device)
        diag = [response(torch.outer(eye[a], eye[a])) for a in range(k)]
        B = np.zeros((k, k, k, k))
        for a in range(k):
            B[:, :, a, a] = diag[a]
            for b in range(a + 1, k):
                v = eye[a] + eye[b]  # X_ab = X_ba = 1 is (e_a + e_b)(e_a + e_b)ᵀ − E_aa − E_bb
                B[:, :, a, b] = B[:, :, b, a] = 0.5 * (response(torch.outer(v, v)) - diag[a] - diag[b])
        B = 0.5 * (B + B.transpose(2, 3, 0, 1))  # symmetric up to the rule's cross terms and rounding
        alpha = np.diag(2.0 - e.cpu().numpy()) + A
        X0 = self.X_prev if self.X_prev is not None and self.X_prev.shape == (k, k) else None
        sol = solve_sdcp(alpha, psd_operator(B), tol=self.qp_tol, X0=X0)
        if sol.method == "inactive":
            return None, G, D, 0.0
        return sol.X, G, D, sol.residual

    def _eigs(self, w, factor=None, scale=None, cap=False):
        """Tracked top eigenpairs of H (``scale``: of P^{-1/2} H P^{-1/2}, scale = P^{-1/2}); effective
        eigenvalues are ``factor`` (default lr) times them. More than ``max_k`` critical ones fail the step, or
        with ``cap`` leave the constraint on the top max_k (``self._capped`` set)."""
        d = self.problem.d
        factor = self.lr if factor is None else factor
        # Far below the threshold the eigenpairs only have to certify that nothing is critical: a relative
        # residual of FAR_TOL bounds the eigenvalue error by FAR_TOL·λ₁, far inside the FAR_FRACTION margin.
        far = self.top_eff is not None and self.top_eff < FAR_FRACTION * 2.0 * self.threshold
        tol = max(self.eig_tol, FAR_TOL) if far else self.eig_tol
        matmat = self.problem.hvp_operator(w)  # one gradient graph for every HVP at w
        if scale is not None:
            plain, r = matmat, scale.reshape(-1, 1)

            def matmat(Y):
                return r * plain(r * Y)
        while True:
            eig = top_eigs(matmat, d, self.k_track, X0=self.basis,
                           tol=tol, dtype=w.dtype, generator=self.gen, device=w.device)
            self.basis = eig.basis
            last_critical = factor * float(eig.values[-1]) > 2.0 * self.threshold
            if not last_critical or self.k_track >= d:
                break
            if self.k_track >= self.max_k:
                if cap:
                    self._capped = True
                    break
                raise RuntimeError(
                    f"more than max_k={self.max_k} eigenvalues are above {self.threshold}·2/lr; raise max_k"
                )
            self.k_track += 1
        V = eig.vectors
        if self.V_prev is not None:  # fix the sign of each eigenvector against the previous substep's
            m = min(V.shape[1], self.V_prev.shape[1])
            signs = torch.ones(V.shape[1], dtype=V.dtype, device=V.device)
            signs[:m] = torch.where((V[:, :m] * self.V_prev[:, :m]).sum(0) < 0, -1.0, 1.0).to(V.dtype)
            V = V * signs
            eig.vectors = V
        self.V_prev = V
        self.top_eff = factor * float(eig.values[0])
        return eig

    def _sdcp(self, w, g, V, e, dt):
        """X of one substep (None if inactive), the third-derivative vectors g_ij (k, k, d), the residual."""
        k = V.shape[1]
        U = math.sqrt(self.lr) * V
        G = torch.empty((k, k, w.numel()), dtype=w.dtype, device=w.device)
        for i in range(k):
            for j in range(i, k):
                G[i, j] = self.problem.third(w, U[:, i], U[:, j])
                G[j, i] = G[i, j]
        A = (self.lr * torch.einsum("ijd,d->ij", G, g)).cpu().numpy()
        Gn = G.cpu().numpy()
        alpha = np.diag(2.0 - e.cpu().numpy()) + dt * A
        beta = gram_operator(Gn, dt * self.lr / 2.0)
        X0 = self.X_prev if self.X_prev is not None and self.X_prev.shape == (k, k) else None
        sol = solve_sdcp(alpha, beta, tol=self.qp_tol, X0=X0)
        if sol.method == "inactive":
            return None, G, 0.0
        return sol.X, G, sol.residual
