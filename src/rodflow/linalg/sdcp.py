"""The semidefinite complementarity problem (SDCP) of the central flow, solved as a convex QP over PSD matrices.

Given a symmetric k×k matrix ``A`` and a linear operator ``B`` on symmetric k×k matrices that is symmetric and
positive semidefinite (``⟨X, B[Y]⟩ = ⟨B[X], Y⟩``, ``⟨X, B[X]⟩ ≥ 0``), find X with

    X ⪰ 0,   Z = A + B[X] ⪰ 0,   ⟨X, Z⟩ = 0,

which are exactly the KKT conditions of ``min_{X ⪰ 0} ½⟨X, B[X]⟩ + ⟨A, X⟩``. ``B`` is given as a 4-tensor,
``B[X]_ij = Σ_kl B_ijkl X_kl`` (summing over ordered pairs k, l), or built from vectors with
:func:`gram_operator` (``B[X]_ij = c ⟨g_ij, Σ_kl X_kl g_kl⟩``, the central flow's form).

Solver (all in ``svec`` coordinates, n = k(k+1)/2 unknowns, dense numpy):
- ``A ⪰ 0``: X = 0 exactly (the constraint is inactive).
- k = 1: the closed form X = max(0, −A/B).
- otherwise a primal-dual interior-point method (HKM direction, Mehrotra predictor-corrector) on the
  rescaled problem, handing its iterate, once close, to a few semismooth Newton steps on the natural residual
  (generalised Jacobian of the PSD projection, least-squares steps since B may be singular), which converge
  quadratically near a strictly complementary solution and remove the √μ-sized misalignment of range(X) and
  range(Z) an interior-point method leaves; near a solution that is not strictly complementary Newton runs on
  the rank of X read off the spectrum's gap instead. The result's ``residual`` is the natural residual
  ‖X − Π₊(X − Z)‖_F, which is zero exactly at a solution (it covers X ⪰ 0, Z ⪰ 0 and ⟨X, Z⟩ = 0 at once).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ..errors import RodflowError


@dataclasses.dataclass
class SDCPResult:
    X: np.ndarray  # (k, k) solution, symmetric PSD
    Z: np.ndarray  # (k, k) A + B[X]
    residual: float  # natural residual ‖X − Π₊(X − Z)‖_F
    iterations: int  # interior-point iterations (0 for the closed forms)
    method: str  # "inactive", "rank-one", "warm-newton", "interior-point", "interior-point+newton"


# ------------------------------------------------------------------------------------------ svec helpers
@functools.lru_cache(maxsize=64)
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.triu_indices(k)
    weight = np.where(i == j, 1.0, math.sqrt(2.0))
    for arr in (i, j, weight):
        arr.flags.writeable = False
    return i, j, weight


def svec(S: np.ndarray) -> np.ndarray:
    """Upper triangle with off-diagonals scaled by √2, so that svec(S)·svec(T) = ⟨S, T⟩."""
    i, j, weight = _pairs(S.shape[-1])
    return S[..., i, j] * weight


def smat(x: np.ndarray, k: int) -> np.ndarray:
    i, j, weight = _pairs(k)
    S = np.zeros(x.shape[:-1] + (k, k))
    S[..., i, j] = x / weight
    S[..., j, i] = x / weight
    return S


def operator_matrix(B: np.ndarray) -> np.ndarray:
    """The (n, n) svec matrix of the operator ``B[X]_ij = Σ_kl B_ijkl X_kl``."""
    k = B.shape[0]
    i, j, weight = _pairs(k)
    # B[X]_p = Σ_q m_q B_pq X_q with m_q = 1 (diagonal) or 2 (two ordered pairs); X_q = x_q / w_q.
    # In svec coordinates (x_q = w_q X_q) the matrix is w_p w_q B_pq.
    return weight[:, None] * weight[None, :] * B[i[:, None], j[:, None], i[None, :], j[None, :]]


def gram_operator(G: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The 4-tensor of ``B[X]_ij = scale · ⟨g_ij, Σ_kl X_kl g_kl⟩`` from vectors ``G`` of shape (k, k, d)."""
    k = G.shape[0]
    flat = G.reshape(k * k, -1)
    return scale * (flat @ flat.T).reshape(k, k, k, k)


def psd_operator(B: np.ndarray) -> np.ndarray:
    """The symmetric PSD operator nearest ``B`` (4-tensor): its svec matrix symmetrised, negative eigenvalues cut.
    For an operator that is PSD up to small cross terms (the central flow of an optimizer with a state)."""
    k = B.shape[0]
    i, j, weight = _pairs(k)
    M = psd_part(operator_matrix(B)) / (weight[:, None] * weight[None, :])
    out = np.zeros_like(B)
    for a, (p, q) in enumerate(zip(i, j)):
        for b, (r, t) in enumerate(zip(i, j)):
            out[p, q, r, t] = out[q, p, r, t] = out[p, q, t, r] = out[q, p, t, r] = M[a, b]
    return out


def apply_operator(B: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.einsum("ijkl,kl->ij", B, X)


def psd_part(S: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(0.5 * (S + S.T))
    return (vecs * np.maximum(vals, 0.0)) @ vecs.T


def natural_residual(X: np.ndarray, Z: np.ndarray) -> float:
    """‖X − Π₊(X − Z)‖_F: zero iff X ⪰ 0, Z ⪰ 0 and ⟨X, Z⟩ = 0."""
    return float(np.linalg.norm(X - psd_part(X - Z)))


def objective(A: np.ndarray, B: np.ndarray, X: np.ndarray) -> float:
    return float(0.5 * np.sum(X * apply_operator(B, X)) + np.sum(A * X))


# ------------------------------------------------------------------------------------------------ solve
def rank_one(a: float, b: float) -> float:
    """The k = 1 closed form: argmin_{x ≥ 0} ½ b x² + a x = max(0, −a/b)."""
    if a >= 0:
        return 0.0
    if not b > 0:
        raise RodflowError(
            "the SDCP is unbounded (B is zero along a direction that lowers the objective): the third derivative "
            "cannot hold the critical eigenvalue down; check the problem's third derivatives"
        )
    return -a / b


def solve_sdcp(A, B, tol: float = 1e-12, max_iter: int = 200, X0=None) -> SDCPResult:
    """Solve the SDCP ``X ⪰ 0, A + B[X] ⪰ 0, ⟨X, A + B[X]⟩ = 0`` (see the module docstring).

    ``A``: (k, k) symmetric; ``B``: (k, k, k, k) with the symmetries of a PSD operator on symmetric matrices.
    ``tol`` is the target natural residual of the internally rescaled problem. ``X0`` (optional, e.g. the
    previous solution along a trajectory) is tried first as the start of semismooth Newton; the
    interior-point method runs only if that does not reach ``tol``.
    """
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise RodflowError(f"A must be a square matrix, got shape {A.shape}")
    k = A.shape[0]
    if B.shape != (k, k, k, k):
        raise RodflowError(f"B must have shape {(k, k, k, k)} to match A, got {B.shape}")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise RodflowError("the SDCP data A, B contain NaN or infinite entries")
    A = 0.5 * (A + A.T)
    zero = np.zeros((k, k))
    if np.linalg.eigvalsh(A)[0] >= 0:
        return SDCPResult(zero, A.copy(), 0.0, 0, "inactive")
    if k == 1:
        x = rank_one(float(A[0, 0]), float(B[0, 0, 0, 0]))
        X = np.array([[x]])
        Z = A + apply_operator(B, X)
        return SDCPResult(X, Z, natural_residual(X, Z), 0, "rank-one")

    M = operator_matrix(B)
    M = 0.5 * (M + M.T)
    a = svec(A)
    sa = float(np.linalg.norm(a))
    sm = float(np.linalg.norm(M, 2))
    if sm <= 1e-300:
        raise RodflowError("the SDCP is unbounded: B is zero while A is not PSD")
    # Rescale: X = (sa/sm) X', A = sa A', B = sm B' makes ‖A'‖ = ‖B'‖ = 1.
    Ms, As = M / sm, a / sa
    x = None
    if X0 is not None:
        X0 = np.asarray(X0, dtype=float)
        if X0.shape != (k, k):
            raise RodflowError(f"X0 must have shape {(k, k)}, got {X0.shape}")
        x, _ = _polish(Ms, As, k, svec(X0) * (sm / sa), steps=8, tol=tol)
        if _residual(Ms, As, k, x) < tol:
            method, iterations = "warm-newton", 0
        else:
            x = None
    if x is None:
        x, iterations, polished = _interior_point(Ms, As, k, tol, max_iter)
        if not polished:
            x, polished = _polish(Ms, As, k, x, tol=tol)
        method = "interior-point+newton" if polished else "interior-point"
    X = smat(x, k) * (sa / sm)
    X = 0.5 * (X + X.T)
    Z = A + apply_operator(B, X)
    return SDCPResult(X, Z, natural_residual(X, Z), iterations, method)


def _residual(M: np.ndarray, a: np.ndarray, k: int, x: np.ndarray) -> float:
    """Natural residual of the (rescaled) svec problem at x."""
    return natural_residual(smat(x, k), smat(a + M @ x, k))


def _sym_kron(X: np.ndarray, Zinv: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """svec matrix of S ↦ ½(X S Z⁻¹ + Z⁻¹ S X)."""
    P = X @ basis @ Zinv
    return svec(0.5 * (P + np.swapaxes(P, -1, -2))).T


def _max_step(S: np.ndarray, D: np.ndarray) -> float:
    """Largest α ≤ 1 with S + α D ⪰ 0 (S ≻ 0)."""
    L = np.linalg.cholesky(S)
    Li = np.linalg.inv(L)
    lam = np.linalg.eigvalsh(Li @ D @ Li.T)[0]
    return 1.0 if lam >= 0 else min(1.0, -1.0 / lam)


# Natural residual (of the rescaled problem, ‖A‖ = ‖B‖ = 1) below which the interior-point method hands its
# iterate to semismooth Newton; later tries wait for a tenfold lower residual.
_NEWTON_FROM = 1e-3


def _interior_point(M: np.ndarray, a: np.ndarray, k: int, tol: float,
                    max_iter: int) -> tuple[np.ndarray, int, bool]:
    """HKM predictor-corrector; returns (x, iterations, whether x is a Newton-polished point below tol).

    On a degenerate problem (singular B, non-strict complementarity) the iterates approach the solution only
    like √μ and meet round-off (Z⁻¹ ill-conditioned) before reaching ``tol``, or, when the solution set is
    unbounded, drift along it towards infinity. Newton from a close iterate certifies a solution (its natural
    residual is below ``tol``) long before either, so it is tried as soon as the residual is small.
    """
    n = a.size
    basis = smat(np.eye(n), k)  # (n, k, k)
    ident = svec(np.eye(k))
    x = ident.copy()
    z = ident.copy()
    best_x, best_res = x, math.inf
    newton_below = _NEWTON_FROM
    it = 0
    for it in range(1, max_iter + 1):
        Xm, Zm = smat(x, k), smat(z, k)
        rp = z - a - M @ x
        mu = float(x @ z) / k
        res = _residual(M, a, k, x)
        if res < best_res:
            best_x, best_res = x, res
        if res < tol:
            break
        if res < newton_below:
            newton_below = 0.1 * res
            xp, _ = _polish(M, a, k, x, tol=tol)
            if _residual(M, a, k, xp) < tol:
                return xp, it, True
        if not np.isfinite(x).all() or np.abs(x).max() > 1e12:
            raise RodflowError(
                "the SDCP looks unbounded (X grows without limit): B is singular along a direction that lowers "
                "the objective"
            )
        if mu < 1e-15:
            break
        try:
            Zinv = np.linalg.inv(Zm)
            Zinv = 0.5 * (Zinv + Zinv.T)
            E = _sym_kron(Xm, Zinv, basis)
            K = np.eye(n) + E @ M
            base = -x + E @ rp
            # predictor (affine scaling)
            dx = np.linalg.solve(K, base)
            dz = M @ dx - rp
            dX, dZ = smat(dx, k), smat(dz, k)
            alpha = min(_max_step(Xm, dX), _max_step(Zm, dZ))
        except np.linalg.LinAlgError:  # iterates at round-off distance from the boundary: done
            break
        mu_aff = float((x + alpha * dx) @ (z + alpha * dz)) / k
        sigma = min(1.0, (max(mu_aff, 0.0) / mu) ** 3) if mu > 0 else 0.0
        # corrector
        corr = dX @ dZ @ Zinv
        rhs = base + sigma * mu * svec(Zinv) - svec(0.5 * (corr + corr.T))
        dx = np.linalg.solve(K, rhs)
        dz = M @ dx - rp
        dX, dZ = smat(dx, k), smat(dz, k)
        try:
            alpha = min(_max_step(Xm, dX), _max_step(Zm, dZ))
        except np.linalg.LinAlgError:
            break
        tau = 0.99
        x = x + tau * alpha * dx
        z = z + tau * alpha * dz
    return best_x, it, False


def _spectral_part(S: np.ndarray, cut: float = 0.0) -> np.ndarray:
    """The part of S on its eigenvalues above ``cut``: Π₊(S) for cut = 0."""
    vals, vecs = np.linalg.eigh(0.5 * (S + S.T))
    return (vecs * np.where(vals > cut, vals, 0.0)) @ vecs.T


def _projection_jacobian(S: np.ndarray, basis: np.ndarray, cut: float = 0.0) -> np.ndarray:
    """svec matrix of an element of the generalised Jacobian of ``_spectral_part(·, cut)`` at S (the Löwner
    divided differences); for cut = 0 that of Π₊."""
    lam, P = np.linalg.eigh(0.5 * (S + S.T))
    plus = np.where(lam > cut, lam, 0.0)
    diff = lam[:, None] - lam[None, :]
    pos = (lam[:, None] > cut) & (lam[None, :] > cut)
    with np.errstate(divide="ignore", invalid="ignore"):
        omega = np.where(np.abs(diff) > 1e-14 * max(1.0, np.abs(lam).max()),
                         (plus[:, None] - plus[None, :]) / diff, pos.astype(float))
    D = P @ ((P.T @ basis @ P) * omega) @ P.T
    return svec(D).T


def _face_cut(W: np.ndarray) -> float | None:
    """A cut in the largest gap of W's positive eigenvalues (W = X − Z), or None with fewer than two.

    Where both X and Z vanish (non-strict complementarity) W has eigenvalues near zero of either sign, and
    the plain semismooth Newton, which counts the positive ones as part of range(X), solves for an X that is
    indefinite there. The largest gap separates range(X) from those directions.
    """
    p = np.sort(np.linalg.eigvalsh(W))[::-1]
    p = p[p > 0]
    if p.size < 2:
        return None
    r = int(np.argmax(p[:-1] / p[1:]))
    return float(math.sqrt(p[r] * p[r + 1]))


def _newton(M: np.ndarray, a: np.ndarray, k: int, x: np.ndarray, steps: int,
            cut: float) -> tuple[np.ndarray, float]:
    """Semismooth Newton on F(x) = x − Π(x − a − M x), Π = ``_spectral_part(·, cut)``; the best point seen
    and its natural residual (the residual of the true problem, whatever the cut)."""
    n = x.size
    basis = smat(np.eye(n), k)
    ident = np.eye(n)

    def F(v, c):
        return v - svec(_spectral_part(smat(v - a - M @ v, k), c))

    best_x, best = x, float(np.linalg.norm(F(x, 0.0)))
    for _ in range(steps):
        if best < 1e-15:
            break
        J = ident - _projection_jacobian(smat(x - a - M @ x, k), basis, cut) @ (ident - M)
        # least squares with a cut-off: on degenerate problems (singular B, non-strict complementarity) J is
        # singular and a plain solve's huge components ruined the step; a full step that does not lower ‖F‖ at
        # once is still taken (the semismooth residual is not monotone), the best point seen is returned
        step = np.linalg.lstsq(J, -F(x, cut), rcond=1e-12)[0]
        x = x + step
        if not np.isfinite(x).all():
            break
        r = float(np.linalg.norm(F(x, 0.0)))
        if r < best:
            best_x, best = x, r
    return best_x, best


def _polish(M: np.ndarray, a: np.ndarray, k: int, x: np.ndarray, steps: int = 6,
            tol: float = 0.0) -> tuple[np.ndarray, bool]:
    """Semismooth Newton from x (e.g. the interior-point solution); the polished x and whether it improved.

    Near a strictly complementary solution this converges quadratically, removing the √μ-sized misalignment
    of the ranges of X and Z an interior-point method leaves. If it does not reach ``tol``, Newton is run
    again on the rank of X guessed from the spectrum's gap (``_face_cut``), which is smooth near a solution
    that is not strictly complementary. The best point of both is kept.
    """
    r0 = _residual(M, a, k, x)
    best_x, best = _newton(M, a, k, x, steps, 0.0)
    if not best < tol:
        cut = _face_cut(smat(x - a - M @ x, k))
        if cut is not None:
            face_x, face = _newton(M, a, k, x, steps, cut)
            if face < best:
                best_x, best = face_x, face
    # the final X must be PSD exactly: drop the (round-off sized) negative part
    return svec(psd_part(smat(best_x, k))), best < r0
