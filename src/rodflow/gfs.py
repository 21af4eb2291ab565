"""GFS sharpness (science.md §4): the sharpness of the point gradient flow reaches from ``w``.

``Φ(w)`` is the limit of gradient flow ``dw/dt = −∇L(w)`` started at ``w`` (the time scale does not change the
limit) and ``φ(w) = λ_max(H(Φ(w)))``. When gradient flow does not reach a minimiser the answer is NaN with the
reason, never the sharpness of a non-minimiser.

Solvers, chosen automatically from ``problem.extras``:

- ``scalar-closed-form`` — ``L = ½(∏ w_i − y)²``. Gradient flow conserves ``w_i² − w_j²``, so
  ``Φ(w)_i² = w_i² + τ`` with ``τ`` the unique root of ``∏(w_i² + τ) = y²`` on ``τ > −min w_i²``. Signs are kept
  when ``y ∏ w_i > 0``. When ``y ∏ w_i < 0`` the flow drives ``τ`` down to ``−min w_i²``: if exactly one weight
  attains ``min |w_i|`` it reaches zero in finite time (``dτ/dt ∝ √(τ − τ_min)``), crosses, and the flow then
  converges with that one sign flipped; if two or more attain it they vanish together only asymptotically and
  the flow converges to a saddle with loss ``y²/2`` (NaN). ``φ = Σ_i y² / (w_i² + τ)``.
- ``squared-regression-dual`` — ``L = (1/2n)‖X(w⊙w) − y‖²``: ``dβ/dt = −(4/n) β ⊙ Xᵀr`` for ``β = w⊙w``, so
  ``β = β0 ⊙ exp(Xᵀc)``, ``w = w0 ⊙ exp(Xᵀc/2)``; the limit interpolates, ``Xβ(c) = y``, which is the
  stationarity condition of the convex ``F(c) = Σ_j β0_j exp((Xᵀc)_j) − yᵀc`` (solved by damped Newton).
  At a zero-residual point ``H = (4/n) diag(w) XᵀX diag(w)``, so ``φ = (4/n) λ_max(X diag(w²) Xᵀ)``.
- ``diagonal-dual`` — ``L = (1/2n)‖X(u⊙v) − y‖²`` over ``w = (u, v)``: with ``a = u + v``, ``b = u − v``,
  ``a = a0 ⊙ exp(z)``, ``b = b0 ⊙ exp(−z)``, ``z = Xᵀc`` (``u_i² − v_i²`` is conserved);
  ``F(c) = Σ_j (a0_j² e^{2z_j} + b0_j² e^{−2z_j})/8 − yᵀc`` and ``φ = (1/n) λ_max(X diag(u² + v²) Xᵀ)``.
- ``numerical`` — any problem: adaptive Dormand-Prince on ``−∇L`` (the controller holds the step at the
  stability limit ~3.3/S of the stiff flow; ``integrator="rkc"`` or ``"srk4"``: Dormand-Prince until that limit
  holds the step, then Runge-Kutta-Chebyshev (or the fourth-order stabilised method), cheaper on long stiff
  flows, solved a second time at 10× looser tolerances
  so that the integration error is part of ``error``), and every time ‖∇L‖ has fallen tenfold (or the work
  doubled) the
  flow's point is *projected* onto the minimisers: by Gauss-Newton when the loss is a least-squares residual
  ``½‖r‖²`` (``problem.has_residual``: every MSE problem; ``δ = −J⁺r`` by LSQR from J and Jᵀ products, to a zero
  residual, i.e. a global minimiser), else by Newton-CG (``δ = −H⁺∇L`` from HVPs). Both are minimum-norm steps,
  which land where the *linearised* flow lands, so a projection from distance δ errs by O(δ²) asymptotically
  even on a manifold of minimisers. φ is accepted when the last three projections of the same flow (all of
  which should give the same φ) contract with a fixed sign to within ``tol·φ`` (``_consecutive_error``; two
  projections suffice when they agree to the eigensolver's accuracy, one when it did not move); that estimate
  is reported as ``error``. A final negative-curvature check rejects saddles (not needed after a zero residual).
  Cross-entropy problems (``extras["cross_entropy_terms"]``) stop with the reason "no finite minimiser" as soon
  as the loss certifies that every label is predicted first from then on (``_no_finite_limit``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from .errors import RodflowError
from .integrators import ChebyshevRK, DormandPrince, IntegrationError, StabilizedRK4
from .linalg.eigs import top_eigs
from .problem import Problem
from .runconfig import count, nonnegative_float, positive_float, seed_value

Tensor = torch.Tensor
EPS = float(np.finfo(np.float64).eps)
METHODS = ("auto", "exact", "numerical")
# the gradient flow's integrator: Dormand-Prince 5(4) (default: at its stability limit its actual error is far
# below tolerance) or "rkc" / "srk4": Dormand-Prince until its step is stability-limited, then second-order
# Runge-Kutta-Chebyshev / the fourth-order stabilised method (fewer gradients on long stiff flows), solved twice
# (tolerances 10x apart) so that its integration error enters the reported error (docs/gfs.md)
INTEGRATORS = ("dopri", "rkc", "srk4")
STABILIZED = {"rkc": ChebyshevRK, "srk4": StabilizedRK4}


@dataclasses.dataclass
class GFSResult:
    """The GFS point and its sharpness, with how they were obtained."""

    sharpness: float  # φ(w); NaN when gradient flow does not reach a minimiser
    point: Tensor | None  # Φ(w), or the last point reached when NaN (None if there is none)
    method: str  # scalar-closed-form, squared-regression-dual, diagonal-dual or numerical
    converged: bool
    reason: str  # "" when converged, else why φ is NaN
    time: float  # gradient-flow time integrated (inf for the exact solvers: the limit is asymptotic)
    loss: float  # L(Φ(w))
    grad_norm: float  # ‖∇L(Φ(w))‖
    error: float  # estimated absolute error of `sharpness`
    grad_evals: int
    hvps: int
    wall_s: float = 0.0
    jvps: int = 0  # Jacobian products of the residual (Gauss-Newton projection)
    projection: str = ""  # numerical solver: how the flow's tail was replaced ("gauss-newton" or "newton")

    def as_row(self, prefix: str = "gfs_") -> dict[str, Any]:
        return {
            f"{prefix}sharpness": self.sharpness,
            f"{prefix}converged": float(self.converged),
            f"{prefix}error": self.error,
            f"{prefix}grad_evals": self.grad_evals,
            f"{prefix}hvps": self.hvps,
            f"{prefix}jvps": self.jvps,
            f"{prefix}wall_s": self.wall_s,
        }


@dataclasses.dataclass
class GFSOptions:
    """Numerical-solver options. ``tol``: target relative error of φ; ``integrator``: "dopri", "rkc" or "srk4"
    (see ``INTEGRATORS``); ``rtol``/``atol``: its local error tolerances (``atol`` relative to max(1, ‖w‖/√d));
    ``max_grad_evals``: budget, after which φ is NaN; ``lsqr_maxiter``: LSQR iterations per Gauss-Newton step."""

    method: str = "auto"
    integrator: str = "dopri"
    tol: float = 1e-4
    rtol: float = 1e-7
    atol: float = 1e-9
    max_grad_evals: int = 200_000
    cg_maxiter: int = 200
    lsqr_maxiter: int = 2000
    eig_tol: float = 1e-9
    seed: int = 0

    def __post_init__(self):
        """Every option checked and normalised (one-line errors naming it): the API, ``RunConfig`` and the CLI all
        build their GFS options through here."""
        if self.method not in METHODS:
            raise RodflowError(f"unknown GFS method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.integrator not in INTEGRATORS:
            raise RodflowError(f"unknown GFS integrator {self.integrator!r}; choose one of {', '.join(INTEGRATORS)}")
        for name, minimum in (("max_grad_evals", 10), ("cg_maxiter", 1), ("lsqr_maxiter", 1)):
            setattr(self, name, count(f"GFS option {name}", getattr(self, name), minimum))
        self.seed = seed_value("GFS option seed", self.seed)
        for name in ("tol", "rtol", "eig_tol"):
            setattr(self, name, positive_float(f"GFS option {name}", getattr(self, name)))
        self.atol = nonnegative_float("GFS option atol", self.atol)
        for name in ("tol", "rtol"):
            value = getattr(self, name)
            if not value < 1:
                raise RodflowError(f"GFS option {name} must be in (0, 1), got {value!r}")


def checked_options(options: dict[str, Any], what: str = "GFS option") -> GFSOptions:
    """:class:`GFSOptions` from a mapping: a one-line error for an unknown name (``what`` names the option in it,
    e.g. the CLI flag) or a bad value."""
    known = {f.name for f in dataclasses.fields(GFSOptions)}
    for key in options:
        if key not in known:
            raise RodflowError(f"unknown {what} {key!r}; options: {', '.join(sorted(known))}")
    return GFSOptions(**options)


def gfs_options(problem: Problem, **options: Any) -> GFSOptions:
    """Validated :class:`GFSOptions` for ``problem`` (one-line error for an unknown name, a bad value, or
    method="exact" on a problem without an exact solver)."""
    if not isinstance(problem, Problem):
        raise RodflowError(f"gfs needs a rodflow.Problem, got {type(problem).__name__}")
    opts = checked_options(options)
    if opts.method == "exact" and _exact_kind(problem) is None:
        raise RodflowError(
            f"problem {problem.name!r} has no exact GFS solver (scalar network, squared regression or diagonal "
            "linear network); use method='auto' or 'numerical'"
        )
    return opts


class GFSSolver:
    """Computes Φ and φ at many points of one problem, warm-starting the eigensolver between calls. A float32
    problem is solved in float64 (``problem.to``) when it can be rebuilt so; points and work counts then refer to
    that float64 copy (``solver.problem``)."""

    def __init__(self, problem: Problem, **options: Any):
        self.options = gfs_options(problem, **options)
        if problem.dtype != torch.float64:
            # φ to 1e-4 needs float64: in float32 two eigensolves at the same point already disagreed by more
            # than that (mlp-digits: projections gave 9.4 … 15.9 for φ = 16.04), so compute in float64 if we can
            try:
                problem = problem.to(torch.float64)
            except RodflowError:
                pass
        self.problem = problem
        self.basis: Tensor | None = None
        self.radius_basis: Tensor | None = None
        self.generator = torch.Generator().manual_seed(self.options.seed)
        self.exact = _exact_kind(problem)

    def state_dict(self) -> dict[str, Any]:
        """The warm-start state (eigensolver bases, random generator), so a resumed run repeats its φ exactly."""
        state: dict[str, Any] = {"generator": self.generator.get_state().numpy().copy()}
        for key in ("basis", "radius_basis"):
            value = getattr(self, key)
            if value is not None:
                state[key] = value.detach().cpu().numpy().copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(torch.from_numpy(np.array(state["generator"], dtype=np.uint8)))
        for key in ("basis", "radius_basis"):
            setattr(self, key, torch.from_numpy(np.array(state[key])).to(self.problem.device) if key in state else None)

    def __call__(self, w) -> GFSResult:
        w = _as_point(self.problem, w)
        start = time.perf_counter()
        with self.problem.counting() as spent:
            if self.exact is not None and self.options.method != "numerical":
                res = self.exact(self.problem, w, self)
                if res is None:  # outside the closed form's domain (e.g. y = 0): integrate instead
                    res = _numerical(self.problem, w, self)
            else:
                res = _numerical(self.problem, w, self)
                if self.options.integrator in STABILIZED and res.converged:
                    res = _checked(self.problem, w, self, res)
        res.grad_evals = spent.grad_evals
        res.hvps = spent.hvps
        res.jvps = spent.jvps
        res.wall_s = time.perf_counter() - start
        return res


def gfs_point(problem: Problem, w=None, **options: Any) -> GFSResult:
    """Φ(w) with diagnostics (``result.point``); ``w`` defaults to ``problem.w0``. Options: :class:`GFSOptions`."""
    return GFSSolver(problem, **options)(problem.w0 if w is None else w)


def gfs_sharpness(problem: Problem, w=None, **options: Any) -> GFSResult:
    """φ(w) = λ_max(H(Φ(w))) with diagnostics (``result.sharpness``; NaN with ``result.reason`` when undefined)."""
    return gfs_point(problem, w, **options)


# ------------------------------------------------------------------------------------------------- helpers
def _as_point(problem: Problem, w) -> Tensor:
    if isinstance(w, torch.Tensor):
        t = w.detach().to(dtype=problem.dtype, device=problem.device).reshape(-1)
    else:
        try:
            t = torch.as_tensor(np.asarray(w, dtype=float), dtype=problem.dtype, device=problem.device).reshape(-1)
        except (TypeError, ValueError):
            raise RodflowError(f"w must be a flat vector of numbers, got {type(w).__name__}") from None
    if t.numel() != problem.d:
        raise RodflowError(f"w has {t.numel()} entries but problem {problem.name!r} has {problem.d} parameters")
    if not bool(torch.isfinite(t).all()):
        raise RodflowError("w contains NaN or infinite entries")
    return t


def _exact_kind(problem: Problem):
    ex = problem.extras
    if "scalar_network" in ex:
        return _scalar_exact
    if "squared_regression" in ex:
        return _squared_regression_exact
    if "diagonal_network" in ex:
        return _diagonal_exact
    return None


def _finish(problem, point: Tensor, phi: float, method: str, error: float, reason: str = "") -> GFSResult:
    loss, g = problem.loss_grad(point)
    ok = not reason and math.isfinite(phi)
    return GFSResult(phi if ok else math.nan, point, method, ok, reason, math.inf if ok else math.nan,
                     float(loss), float(g.norm()), error if ok else math.nan, 0, 0)


def _nan(problem, point: Tensor | None, method: str, reason: str, t: float = math.nan) -> GFSResult:
    loss = gn = math.nan
    if point is not None and bool(torch.isfinite(point).all()):
        l, g = problem.loss_grad(point)
        loss, gn = float(l), float(g.norm())
    return GFSResult(math.nan, point, method, False, reason, t, loss, gn, math.nan, 0, 0)


# ------------------------------------------------------------------------------------------ scalar network
def scalar_network_gfs(w: np.ndarray, y: float) -> tuple[np.ndarray | None, float, str]:
    """(Φ(w), φ(w), reason) for ½(∏ w_i − y)², y ≠ 0, in float64; reason is "" on success."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    y = float(y)
    if y == 0 or not math.isfinite(y):
        raise ValueError("the scalar-network closed form needs a finite target y != 0")
    D = w.size
    signs = np.sign(w)
    zeros = np.flatnonzero(w == 0)
    if zeros.size >= 2:
        return None, math.nan, (f"{zeros.size} weights are exactly 0: ∇L = 0 at a non-minimiser (saddle), "
                                "gradient flow does not move")
    if zeros.size == 1:  # the flow leaves 0 at once, with the sign that makes ∏ w agree with y
        k = zeros[0]
        signs[k] = math.copysign(1.0, y * float(np.prod(np.delete(w, k))))
    elif np.sign(np.prod(w)) != np.sign(y):
        absw = np.abs(w)
        k = int(np.argmin(absw))
        if np.count_nonzero(absw == absw[k]) >= 2:
            return None, math.nan, ("y·∏w < 0 and the smallest |w_i| is shared by several weights: they vanish "
                                    "together and gradient flow converges to a saddle (loss y²/2)")
        signs[k] = -signs[k]  # the unique smallest weight crosses zero in finite time
    sq = w * w
    a = sq - sq.min()  # ≥ 0, exactly 0 at an argmin: Φ_i² = a_i + u with u = τ + min w²
    log_y2 = 2.0 * math.log(abs(y))

    def g(s: float) -> float:
        return float(np.sum(np.log(a + math.exp(s)))) - log_y2

    from scipy.optimize import brentq

    s_hi = log_y2 / D  # Σ log(a_i + u) ≥ D log u = log y² there
    step = 1.0
    s_lo = s_hi - step
    while g(s_lo) >= 0:
        step *= 2.0
        s_lo = s_hi - step
        if step > 4000:  # u below the smallest float: the target is unreachable in float64
            return None, math.nan, "the GFS is below float64 range"
    s = brentq(g, s_lo, s_hi, xtol=1e-15, rtol=4 * EPS, maxiter=500)
    u = math.exp(s)
    for _ in range(3):  # Newton polish in u: g(u) = Σ log(a_i + u) − log y², g' = Σ 1/(a_i + u)
        val = float(np.sum(np.log(a + u))) - log_y2
        du = -val / float(np.sum(1.0 / (a + u)))
        u_new = max(u + du, 0.5 * u)
        if u_new == u:
            break
        u = u_new
    r2 = a + u
    point = signs * np.sqrt(r2)
    phi = float(np.sum(y * y / r2))
    return point, phi, ""


def _scalar_exact(problem: Problem, w: Tensor, solver: GFSSolver) -> GFSResult | None:
    spec = problem.extras["scalar_network"]
    y = float(spec["y"])
    if y == 0:
        return None
    point, phi, reason = scalar_network_gfs(_np64(w), y)
    if reason:
        return _nan(problem, w, "scalar-closed-form", reason)
    D = point.size
    err = 16 * D * EPS * phi  # a root of a monotone 1-D function to a few ulp; φ is a sum of D positive terms
    pt = torch.as_tensor(point, dtype=problem.dtype, device=problem.device)
    return _finish(problem, pt, phi, "scalar-closed-form", err)


# ------------------------------------------------------------------------------------ convex-dual solvers
def _newton_dual(X: np.ndarray, y: np.ndarray, grad_hess, maxiter: int = 200):
    """Minimise a smooth convex F(c) whose gradient is X β(c) − y by damped Newton (pseudo-inverse steps).

    ``grad_hess(c) -> (F, β, curvature weights q)`` with ∇²F = X diag(q) Xᵀ. Returns (c, β, converged, note).
    """
    n = X.shape[0]
    c = np.zeros(n)
    scale = max(1.0, float(np.linalg.norm(y)))
    F, beta, q = grad_hess(c)
    for it in range(maxiter):
        grad = X @ beta - y
        gn = float(np.linalg.norm(grad))
        if gn <= 1e-14 * scale * max(1.0, float(np.abs(X).max()) * float(np.abs(beta).sum()) / scale):
            return c, beta, True, ""
        Hm = (X * q) @ X.T
        step, *_ = np.linalg.lstsq(Hm, -grad, rcond=1e-13)
        slope = float(grad @ step)
        if not slope < 0:
            return c, beta, False, "Newton direction is not a descent direction"
        t = 1.0
        while True:
            c_new = c + t * step
            with np.errstate(over="ignore", invalid="ignore"):
                F_new, beta_new, q_new = grad_hess(c_new)
            if math.isfinite(F_new) and F_new <= F + 1e-4 * t * slope + 1e-15 * abs(F):
                break
            t *= 0.5
            if t < 1e-12:
                # no decrease possible at working precision: accept if the residual is already tiny
                ok = gn <= 1e-10 * scale
                return c, beta, ok, "" if ok else "line search failed (the dual may be unbounded)"
        if float(np.linalg.norm(c_new)) > 1e6:
            return c, beta, False, "the dual variable diverges: y is not reachable by an interpolating point"
        c, F, beta, q = c_new, F_new, beta_new, q_new
    grad = X @ beta - y
    ok = float(np.linalg.norm(grad)) <= 1e-10 * scale
    return c, beta, ok, "" if ok else f"Newton did not converge in {maxiter} iterations"


def squared_regression_gfs(X, y, w) -> tuple[np.ndarray | None, float, float, str]:
    """(Φ(w), φ, error estimate, reason) for L = (1/2n)‖X(w⊙w) − y‖²."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    n = X.shape[0]
    beta0 = w * w

    def fgq(c):
        z = X.T @ c
        beta = beta0 * np.exp(z)
        return float(beta.sum() - y @ c), beta, beta

    c, beta, ok, note = _newton_dual(X, y, fgq)
    point = w * np.exp(0.5 * (X.T @ c))
    if not ok:
        return point, math.nan, math.nan, f"gradient flow does not interpolate: {note}"
    M = (X * (point * point)) @ X.T * (4.0 / n)
    phi = float(np.linalg.eigvalsh(0.5 * (M + M.T))[-1])
    err = _dual_error(X, y, beta, phi, n, 4.0)
    return point, phi, err, ""


def diagonal_network_gfs(X, y, u, v) -> tuple[np.ndarray | None, np.ndarray | None, float, float, str]:
    """(Φ_u, Φ_v, φ, error estimate, reason) for L = (1/2n)‖X(u⊙v) − y‖²."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = X.shape[0]
    a0, b0 = u + v, u - v
    A, B = a0 * a0, b0 * b0

    def fgq(c):
        z = X.T @ c
        ep, em = np.exp(2 * z), np.exp(-2 * z)
        F = float((A * ep + B * em).sum() / 8 - y @ c)
        return F, (A * ep - B * em) / 4, (A * ep + B * em) / 2

    c, beta, ok, note = _newton_dual(X, y, fgq)
    z = X.T @ c
    a, b = a0 * np.exp(z), b0 * np.exp(-z)
    pu, pv = 0.5 * (a + b), 0.5 * (a - b)
    if not ok:
        return pu, pv, math.nan, math.nan, f"gradient flow does not interpolate: {note}"
    M = (X * (pu * pu + pv * pv)) @ X.T / n
    phi = float(np.linalg.eigvalsh(0.5 * (M + M.T))[-1])
    err = _dual_error(X, y, beta, phi, n, 1.0)
    return pu, pv, phi, err, ""


def _dual_error(X, y, beta, phi, n, factor) -> float:
    """Error of φ from the remaining residual: a Newton step of size ~‖r‖/σ_min moves w relatively by about
    that much, and φ is quadratic in w; floored at 100 ulp."""
    r = float(np.linalg.norm(X @ beta - y))
    return phi * (r / max(float(np.linalg.norm(y)), 1e-300)) + 100 * EPS * phi


def _squared_regression_exact(problem: Problem, w: Tensor, solver: GFSSolver) -> GFSResult:
    spec = problem.extras["squared_regression"]
    point, phi, err, reason = squared_regression_gfs(spec["X"], spec["y"], _np64(w))
    pt = torch.as_tensor(point, dtype=problem.dtype, device=problem.device)
    if reason:
        return _nan(problem, pt, "squared-regression-dual", reason)
    return _finish(problem, pt, phi, "squared-regression-dual", err)


def _diagonal_exact(problem: Problem, w: Tensor, solver: GFSSolver) -> GFSResult:
    spec = problem.extras["diagonal_network"]
    p = w.numel() // 2
    wn = _np64(w)
    pu, pv, phi, err, reason = diagonal_network_gfs(spec["X"], spec["y"], wn[:p], wn[p:])
    pt = torch.as_tensor(np.concatenate([pu, pv]), dtype=problem.dtype, device=problem.device)
    if reason:
        return _nan(problem, pt, "diagonal-dual", reason)
    return _finish(problem, pt, phi, "diagonal-dual", err)


# ---------------------------------------------------------------------------------------------- numerical
def _top(problem: Problem, w: Tensor, solver: GFSSolver, sign: float = 1.0, basis=None):
    res = top_eigs(
        (lambda V: problem.hvp_block(w, V)) if sign > 0 else (lambda V: -problem.hvp_block(w, V)),
        problem.d, 1, X0=basis, tol=solver.options.eig_tol, dtype=w.dtype, generator=solver.generator,
        device=w.device,
    )
    return float(res.values[0]), res


def _cg(problem: Problem, w: Tensor, b: Tensor, maxiter: int, rtol: float, curv_scale: float):
    """Solve H x = b from x = 0 by conjugate gradients (minimum-norm solution for consistent PSD systems).

    Returns (x, status) with status "converged", "negative curvature" or "maxiter"."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = math.sqrt(rr)
    if b_norm == 0:
        return x, "converged"
    best = (math.inf, x)
    for _ in range(maxiter):
        Hp = problem.hvp(w, p)
        pHp = float(p @ Hp)
        if not pHp > 0:
            # a numerically null direction (|pᵀHp| at roundoff level) ends CG at the minimum-norm iterate
            # (a residual-sized curvature, ~√(‖∇L‖·S), is null at this accuracy)
            null = max(1e3 * float(torch.finfo(b.dtype).eps) * curv_scale, math.sqrt(b_norm * curv_scale))
            if abs(pHp) <= null * float(p @ p):
                return x, "converged"
            return x, "negative curvature"
        alpha = rr / pHp
        x = x + alpha * p
        r = r - alpha * Hp
        rr_new = float(r @ r)
        if math.sqrt(rr_new) <= rtol * b_norm:
            return x, "converged"
        best = min(best, (math.sqrt(rr_new), x), key=lambda z: z[0])
        p = r + (rr_new / rr) * p
        rr = rr_new
    # ill-conditioned: the best iterate is still a useful Newton step if it reduced the residual a lot;
    # the caller accepts it only if the gradient then falls superlinearly
    return (best[1], "converged") if best[0] <= 1e-3 * b_norm else (x, "maxiter")


RKC_CHECK = 10.0  # the check solve's tolerances are this much looser


def _checked(problem: Problem, w: Tensor, solver: GFSSolver, first: GFSResult) -> GFSResult:
    """RKC's integration error in φ, which the projections cannot see (they all start from the same slightly
    wrong trajectory): solve again with ``RKC_CHECK``-fold looser tolerances and add the change of φ to the
    error of the first solve (which is reported). With a global error ∝ rtol^p (p > 0) the looser solve errs
    10^p times more, so |Δφ| ≥ (1 − 10^−p)·|its error| bounds the first solve's integration error with room."""
    check = _numerical(problem, w, solver, loosen=RKC_CHECK)
    if not check.converged:
        return _unchecked(first, check)
    first.error = max(first.error, check.error) + abs(check.sharpness - first.sharpness)
    return first


def _unchecked(first: GFSResult, check: GFSResult) -> GFSResult:
    """The looser check solve did not converge (e.g. its budget): φ is NaN, with why."""
    return GFSResult(math.nan, first.point, first.method, False,
                     f"the looser RKC check solve failed ({check.reason}); use integrator='dopri' or raise "
                     "max_grad_evals", first.time, first.loss, first.grad_norm, math.nan, 0, 0,
                     projection=first.projection)


def _numerical(problem: Problem, w: Tensor, solver: GFSSolver, loosen: float = 1.0) -> GFSResult:
    opts = solver.options
    method = "numerical"
    start_evals = problem.counts.grad_evals
    scale = max(1.0, float(w.norm()) / math.sqrt(problem.d))
    rtol, atol = min(opts.rtol * loosen, 1e-3), opts.atol * scale * loosen
    # "rkc" starts with Dormand-Prince too (5th order: far cheaper while the flow is not stiff) and switches once
    # DOPRI's step is held by its stability limit (h·S ≳ 2 of its ≈ 3.3), where RKC's cost grows only like √S
    ode = DormandPrince(lambda t, x: -problem.grad(x), w, rtol=rtol, atol=atol)
    floor = 1e3 * float(torch.finfo(w.dtype).eps)
    # the residual norm at w sets the scale of "zero residual" for the Gauss-Newton projection
    r_floor = floor * max(1.0, math.sqrt(max(2.0 * float(problem.loss(w)), 0.0))) if problem.has_residual else 0.0
    g0 = float(ode.fy.norm())
    next_try = g0  # try a projection at once: a start near a minimiser needs no integration
    last_try = 0
    history: list[_Candidate] = []  # successful projections of this flow, in order
    ce_terms = problem.extras.get("cross_entropy_terms")
    steps = 0
    # residual norm of the last failed Gauss-Newton projection; the sharpness at the last projection's start
    gn_state = {"failed_at": math.inf, "S": 0.0}
    while True:
        x, g = ode.y, -ode.fy
        gn = float(g.norm())
        if not (math.isfinite(gn) and bool(torch.isfinite(x).all())):
            return _nan(problem, None, method, f"gradient flow diverged (non-finite) at t={ode.t:.4g}", ode.t)
        if ce_terms and steps % 5 == 0:
            note = _no_finite_limit(problem, w, x, ce_terms)
            if note:
                return _nan(problem, x, method, f"{note} (t = {ode.t:.4g})", ode.t)
        steps += 1
        used = problem.counts.grad_evals - start_evals
        # retry when ‖∇L‖ fell tenfold, or when the work doubled (an explicit method at its stability limit
        # keeps the stiff component of ∇L at the size of its error tolerance, so ‖∇L‖ can plateau)
        if gn <= next_try or used >= max(2 * last_try, last_try + 200):
            last_try = used
            cand = _project(problem, x, g, solver, floor, r_floor, gn_state)
            if opts.integrator in STABILIZED and isinstance(ode, DormandPrince) and ode.h * gn_state["S"] >= 2.0:
                extra = {"dense_output": False} if opts.integrator == "srk4" else {}
                ode = STABILIZED[opts.integrator](lambda y: -problem.grad(y), x, lambda y: _radius(problem, y, solver),
                                                  rtol=rtol, atol=atol, t0=ode.t, **extra)
            if cand is not None:
                # one projection is trusted alone only if it did not move (the flow point is a minimiser to
                # working precision): |S(projection) − S(flow point)| is no bound on φ's error (measured: 1.2e-3
                # where the error was 1.0e-2), so otherwise two projections of the same flow must agree
                history.append(cand)
                err = cand.first_order if cand.step == 0 else _consecutive_error(history, opts.eig_tol)
                if err <= opts.tol * abs(cand.phi):
                    note = "" if cand.global_min else _saddle_note(problem, cand.point, cand.phi, solver)
                    if note:
                        return _nan(problem, cand.point, method, note, ode.t)
                    loss, gp = problem.loss_grad(cand.point)
                    return GFSResult(cand.phi, cand.point, method, True, "", ode.t, float(loss), float(gp.norm()),
                                     err, 0, 0, projection=cand.kind)
            next_try = 0.1 * gn
        if problem.counts.grad_evals - start_evals > opts.max_grad_evals:
            # ‖w‖ growing while L falls is the sign of a flow with no finite limit (e.g. cross-entropy on data
            # the network separates): more budget will not help there
            return _nan(problem, x, method,
                        f"budget of {opts.max_grad_evals} gradient evaluations exhausted at t={ode.t:.4g} "
                        f"(L = {float(problem.loss(x)):.4g}, ‖∇L‖ = {gn:.3g}, ‖w‖ {float(w.norm()):.4g} → "
                        f"{float(x.norm()):.4g}, {_curvature_note(problem, x, solver)}); raise max_grad_evals", ode.t)
        try:
            ode.step()
        except IntegrationError as exc:
            return _nan(problem, x, method, f"gradient flow integration failed: {exc}", ode.t)


def _no_finite_limit(problem: Problem, w0: Tensor, x: Tensor, terms: int) -> str:
    """Why gradient flow from ``x`` has no finite limit, or "" when that is not (yet) certain.

    Cross-entropy averages ``terms`` values −log p(label), each at most ``terms``·L. Once ``terms``·L < ln 2 every
    label has p > ½ (is the top class), at ``x`` and at every later point of the flow (L only falls). A network
    whose logits end in a linear layer has no critical point there: scaling that layer's weights by c scales the
    logits, and d/dc of −log softmax(c z)[label] at c = 1 is Σ softmax(z)_k z_k − z_label < 0 when z_label is the
    largest logit. So the flow's limit, which would be a critical point below L(x), does not exist: L → 0 while
    ‖w‖ → ∞."""
    loss = float(problem.loss(x))
    if not terms * loss < math.log(2.0):
        return ""
    return (f"no finite minimiser: cross-entropy L = {loss:.3g} < ln 2/{terms} puts every label first from here on, "
            "where the network (logits from a linear last layer) has no critical point, so gradient flow has no "
            f"finite limit (L → 0 while ‖w‖ grows: {float(w0.norm()):.4g} → {float(x.norm()):.4g} so far)")


@dataclasses.dataclass
class _Candidate:
    """A projection of a gradient-flow point onto the minimisers, and how far it is from the flow's limit."""

    point: Tensor
    phi: float
    first_order: float  # |S(projection) − S(flow point)| + eigensolver error (φ's error when step = 0)
    step: float  # ‖projection − flow point‖: the remaining distance the flow has to travel
    global_min: bool  # a zero residual was reached: a global minimiser (no saddle check needed)
    kind: str  # "gauss-newton" or "newton"


def _consecutive_error(history: list[_Candidate], eig_tol: float) -> float:
    """Error of the last projection's φ from the last three projections of the same flow (whose limit, hence φ,
    is the same for all of them); inf while they do not show the asymptotic behaviour.

    Asymptotically a projection from distance δ lands O(δ²) from the flow's limit (the linearised flow ends at
    the minimum-norm projection), so the errors e_k shrink geometrically with a fixed sign and the differences
    Δ_k = φ_k − φ_{k−1} keep their sign and contract by q = Δ_k/Δ_{k−1}; then |e_k| ≈ q/(1−q)·|Δ_k|. Measured
    on MLPs on digits, the pre-asymptotic errors shrank only in proportion to δ (7.7e-3, 2.4e-3 at δ = 0.33,
    0.099) or even grew while δ fell (5.6e-3 → 7.2e-3 with a coincidentally small Δ = 1.6e-3), so: the last two
    differences must have the same sign and contract at least twofold in both Δ and δ, the larger of the two
    ratios is used, and a safety factor 2 is applied. Differences at the eigensolver's noise level count as 0."""
    if len(history) < 2:
        return math.inf
    a, b = history[-2], history[-1]
    noise = 10.0 * eig_tol * abs(b.phi)
    d1 = b.phi - a.phi
    if abs(d1) <= noise:  # two projections agree to the eigensolver's accuracy
        return abs(d1) + eig_tol * abs(b.phi)
    if len(history) < 3:
        return math.inf
    d0 = a.phi - history[-3].phi
    q = d1 / d0 if d0 != 0 else math.inf
    rho = b.step / a.step if a.step > 0 else math.inf
    ratio = max(q, rho)
    if not (0.0 < q and ratio <= 0.5):
        return math.inf
    return 2.0 * abs(d1) * ratio / (1.0 - ratio) + eig_tol * abs(b.phi)


def _radius(problem: Problem, x: Tensor, solver: GFSSolver) -> float:
    """Spectral radius of the flow's Jacobian −H for the Chebyshev integrator: λ_max(H) to 1e-3 (warm-started;
    the integrator adds a safety factor). Negative curvature only adds slowly growing modes, which RKC's
    stability polynomial follows like e^z, so it does not enter the stage count."""
    res = top_eigs(lambda V: problem.hvp_block(x, V), problem.d, 1, X0=solver.radius_basis, tol=1e-3,
                   dtype=x.dtype, generator=solver.generator, device=x.device)
    solver.radius_basis = res.basis
    return max(float(res.values[0]), 0.0)


def _torch(v: np.ndarray, like: Tensor) -> Tensor:
    """A SciPy vector as a flat tensor in ``like``'s dtype, on its device."""
    return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(-1).to(like)


def _np64(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


DENSE_D = 1024  # below this many parameters an unconverged λ_min falls back to the dense Hessian (d HVPs)


def _lambda_min(problem: Problem, x: Tensor, solver: GFSSolver) -> tuple[float, bool]:
    """(λ_min(H(x)), exact). LOBPCG on −H; the bottom of a Hessian is often a cluster near 0 where it converges
    slowly, and an unconverged Rayleigh quotient only bounds λ_min from above, so small problems then fall back
    to the dense Hessian. ``exact`` is False only for an unconverged large problem (value = upper bound)."""
    neg, res = _top(problem, x, solver, sign=-1.0)
    if res.converged:
        return -neg, True
    if problem.d <= DENSE_D:
        return float(torch.linalg.eigvalsh(problem.hessian(x))[0]), True
    return -neg, False


def _curvature_note(problem: Problem, x: Tensor, solver: GFSSolver) -> str:
    """λ_min(H) at the point where the budget ran out: negative means the flow is still crossing a saddle or
    degenerate region (no minimiser's basin reached yet), so more budget may not help (see docs/gfs.md)."""
    lam, exact = _lambda_min(problem, x, solver)
    rel, note = ("=", "") if exact else ("≤", " (eigensolver not converged)")
    if lam < 0:
        return f"λ_min(H) {rel} {lam:.8g} < 0: not yet in a minimiser's basin{note}"
    return f"λ_min(H) {rel} {lam:.8g}{note}"


def _project(problem: Problem, x: Tensor, g: Tensor, solver: GFSSolver, floor: float, r_floor: float,
             gn_state: dict | None = None):
    """Project a point of the flow onto the minimisers: Gauss-Newton when the loss is a least-squares residual
    (lands on a zero-residual point), else, or if that fails, Newton-CG. None while neither converges (not yet
    in a minimiser's basin: keep integrating)."""
    s_old, res_old = _top(problem, x, solver, basis=solver.basis)
    if gn_state is not None:
        gn_state["S"] = s_old if math.isfinite(s_old) else 0.0
    if not s_old > 0:
        return None
    y, kind, global_min = None, "", False
    if problem.has_residual:
        y = _gauss_newton(problem, x, solver, r_floor, {"failed_at": math.inf} if gn_state is None else gn_state)
        kind, global_min = "gauss-newton", y is not None
    if y is None:
        y = _newton(problem, x, g, solver, floor, s_old)
        kind = "newton"
    if y is None:
        return None
    s_new, res_new = _top(problem, y, solver, basis=res_old.basis)
    solver.basis = res_new.basis
    first_order = abs(s_new - s_old) + solver.options.eig_tol * abs(s_new)
    return _Candidate(y, s_new, first_order, float((y - x).norm()), global_min, kind)


def _gauss_newton(problem: Problem, x: Tensor, solver: GFSSolver, r_floor: float, state: dict) -> Tensor | None:
    """Gauss-Newton to a zero residual: δ = −J⁺r, the minimum-norm least-squares step (LSQR from 0, products
    with J and Jᵀ only). Near a manifold of interpolating minimisers this is the projection gradient flow's
    linearisation ends at. The first steps may be far from quadratic (the minimum-norm step moves far along
    directions of small singular value, where the flow is slow); how close the result is to the flow's limit is
    judged by the caller from the step length. None unless ‖r‖ decreases at every step (at least twofold from
    the third step on, fourfold from the fifth) and reaches ``r_floor`` (a zero residual) within 12 steps.

    Wasted work is capped: LSQR stops after ``min(lsqr_maxiter, 2m + 50)`` iterations for m residuals (in exact
    arithmetic it ends within rank(J) ≤ m), and after a failure the projection is not tried again until the
    residual norm has fallen below a third of the failed one's (the loss tenfold) — ``state["failed_at"]``."""
    from scipy.sparse.linalg import LinearOperator, lsqr

    opts = solver.options
    y = x
    r, jv, jtu = problem.jacobian_operator(y)
    rn = float(r.norm())
    rn0 = rn
    if not rn0 < state["failed_at"] / 3.0:
        return None
    iter_lim = min(int(opts.lsqr_maxiter), 2 * r.numel() + 50)
    for it in range(12):
        if rn <= r_floor:
            return y
        op = LinearOperator(
            (r.numel(), problem.d), dtype=np.float64,
            matvec=lambda v, jv=jv: _np64(jv(_torch(v, y))),
            rmatvec=lambda u, jtu=jtu: _np64(jtu(_torch(u, y))),
        )
        sol = lsqr(op, _np64(-r), atol=1e-12, btol=1e-12, iter_lim=iter_lim)
        delta = _torch(sol[0], y)
        y_new = y + delta
        r_new, jv_new, jtu_new = problem.jacobian_operator(y_new)
        rn_new = float(r_new.norm())
        # the first steps may barely help (measured ratios up to 0.95), from the third on the residual must at
        # least halve and from the fifth fall fourfold (Gauss-Newton to a zero residual converges quadratically):
        # a residual that cannot vanish nearby, or a limit where J loses rank, decreases only linearly, and every
        # further step costs a full LSQR solve (transformer-sorting: 24 006 J products in one solve before the
        # cap; 12 halving steps = 5 052 J products with it)
        need = rn if it < 2 else (0.5 * rn if it < 4 else 0.25 * rn)
        if not (math.isfinite(rn_new) and rn_new < need):
            state["failed_at"] = rn0  # not converging to a zero residual: keep integrating
            return None
        y, r, jv, jtu, rn = y_new, r_new, jv_new, jtu_new, rn_new
    if rn <= r_floor:
        return y
    state["failed_at"] = rn0
    return None


def _newton(problem: Problem, x: Tensor, g: Tensor, solver: GFSSolver, floor: float, s_old: float):
    """Newton-CG (minimum-norm steps from HVPs) to a stationary point; None unless ‖∇L‖ falls quadratically."""
    opts = solver.options
    y = x
    gn0 = gn = float(g.norm())
    for _ in range(4):
        if gn <= floor * s_old * max(1.0, float(y.norm())):
            break
        delta, status = _cg(problem, y, -g, opts.cg_maxiter, rtol=1e-10, curv_scale=s_old)
        if status != "converged":
            return None
        y_new = y + delta
        _, g_new = problem.loss_grad(y_new)
        gn_new = float(g_new.norm())
        if not gn_new <= max(0.25 * gn * min(1.0, gn / gn0) ** 0.5, floor * s_old * max(1.0, float(y.norm()))):
            return None  # not converging quadratically: outside the Newton region
        y, g, gn = y_new, g_new, gn_new
    return y


def _saddle_note(problem: Problem, y: Tensor, phi: float, solver: GFSSolver) -> str:
    """"" if ``y`` has no significant negative curvature, else why φ is NaN (a saddle, not a minimiser)."""
    lam_min, _ = _lambda_min(problem, y, solver)
    if -lam_min > max(1e3 * solver.options.tol, 1e-6) * phi:
        return f"gradient flow reaches a stationary point that is not a minimiser (λ_min(H) = {lam_min:.3g})"
    return ""


# ------------------------------------------------------------------------------------------------ cost
def cost_ratios(problem: Problem, w=None, repeats: int = 5) -> dict[str, float]:
    """Wall time of one Jacobian product (J v or Jᵀu of the residual) and of one HVP, each relative to one gradient,
    at ``w`` (median of ``repeats`` timings): the weights that turn a GFS evaluation's work counts into
    gradient-equivalents (:func:`gradient_equivalents`). A problem without a residual has no ``jvp`` entry."""
    w = _as_point(problem, problem.w0 if w is None else w)
    v = torch.randn(problem.d, generator=torch.Generator().manual_seed(0), dtype=w.dtype).to(w.device)

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(max(1, int(repeats))):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    before = problem.counts.copy()
    try:
        grad = timed(lambda: problem.grad(w))
        out = {"hvp": timed(lambda: problem.hvp(w, v)) / grad}
        if problem.has_residual:
            r, jv, jtu = problem.jacobian_operator(w)
            u = torch.ones_like(r)
            out["jvp"] = 0.5 * (timed(lambda: jv(v)) + timed(lambda: jtu(u))) / grad
    finally:
        problem.counts = before  # timing is not the caller's work
    return out


def gradient_equivalents(result: "GFSResult | dict", ratios: dict[str, float]) -> float:
    """A GFS evaluation's work in gradients: grads + ρ_J·(J products) + ρ_H·HVPs (``ratios`` from
    :func:`cost_ratios`; a mapping with ``grad_evals``/``jvps``/``hvps`` or ``gfs_*`` keys also works)."""
    if isinstance(result, GFSResult):
        get = lambda k: getattr(result, k)  # noqa: E731
    else:  # a metrics row names them gfs_* (its own grad_evals column is the method's work, not φ's)
        prefix = "gfs_" if "gfs_grad_evals" in result else ""
        get = lambda k: result.get(prefix + k, 0.0)  # noqa: E731
    jvps = float(get("jvps") or 0.0)
    return float(get("grad_evals")) + ratios.get("jvp", 0.0) * jvps + ratios["hvp"] * float(get("hvps"))


# --------------------------------------------------------------------------------------------- monotonicity
def monotonicity(phi, error=None, rel_floor: float = 0.0) -> dict[str, float]:
    """Increases of φ along a run beyond what the solver's own error explains.

    ``phi`` and ``error`` are sequences over the evaluated steps (NaNs skipped). An increase from one evaluation
    to the next counts when it exceeds the sum of the two error estimates (plus ``rel_floor``·φ). Returns the
    number of evaluations, of counted increases, the largest and total counted increase (absolute and relative
    to φ), and the number of NaN evaluations.
    """
    phi = np.asarray(phi, dtype=float)
    err = np.zeros_like(phi) if error is None else np.asarray(error, dtype=float)
    ok = np.isfinite(phi)
    p, e = phi[ok], np.where(np.isfinite(err[ok]), err[ok], 0.0)
    out = {"gfs_evals": int(ok.sum()), "gfs_nan": int((~ok).sum()), "gfs_increases": 0,
           "gfs_max_increase": 0.0, "gfs_max_increase_rel": 0.0, "gfs_total_increase": 0.0}
    if p.size < 2:
        return out
    rise = np.diff(p)
    tol = e[1:] + e[:-1] + rel_floor * np.abs(p[1:])
    bad = rise > tol
    out["gfs_increases"] = int(bad.sum())
    if bad.any():
        out["gfs_max_increase"] = float(rise[bad].max())
        out["gfs_max_increase_rel"] = float((rise[bad] / np.abs(p[:-1][bad])).max())
        out["gfs_total_increase"] = float(rise[bad].sum())
    return out
