"""Top-k Hessian eigenpairs from Hessian-vector products: block LOBPCG, warm-startable.

`top_eigs` runs locally optimal block preconditioned conjugate gradients (Knyazev 2001) without a
preconditioner, for the largest *algebraic* eigenvalues. Each iteration does a Rayleigh-Ritz step on the
orthonormalised span of the current block X, the residuals W and the previous search directions P; only
W costs HVPs. A block of ``k + guard`` vectors is iterated and the first k are required to converge: the guard
vectors speed up convergence when eigenvalue k is close to k+1. Passing the previous call's ``basis`` as X0
(warm start) makes tracking along a trajectory cheap. Problems too small for a block method are solved
densely from d HVPs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

Tensor = torch.Tensor
MatMat = Callable[[Tensor], Tensor]


@dataclasses.dataclass
class EigResult:
    values: Tensor  # (k,) descending
    vectors: Tensor  # (d, k), orthonormal columns
    residuals: Tensor  # (k,) ‖H v − λ v‖
    hvps: int
    iterations: int
    converged: bool
    basis: Tensor  # (d, k + guard): warm start for the next call


def default_tol(dtype: torch.dtype, tol: float | None = None) -> float:
    """Relative residual tolerance: 1e-7 in float64, floored at 100 ulp of the working precision."""
    floor = 100 * torch.finfo(dtype).eps
    return max(1e-7 if tol is None else tol, floor)


def top_eigs(
    matmat: MatMat,
    d: int,
    k: int = 1,
    X0: Tensor | None = None,
    tol: float | None = None,
    maxiter: int = 300,
    guard: int | None = None,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> EigResult:
    """Largest-k eigenpairs of the symmetric operator ``matmat`` (V ↦ H V on (d, m) blocks).

    Converged means every one of the k residuals satisfies ‖H v − λ v‖ ≤ tol · max|λ|, which bounds the
    eigenvalue error by the same amount. Not converging within ``maxiter`` is reported, not raised.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, d)
    tol = default_tol(dtype, tol)
    guard = max(2, min(k, 8)) if guard is None else guard
    m = min(k + guard, d)
    if 3 * m >= d or d <= 24:
        return _dense(matmat, d, k, m, dtype)

    X = _start_block(X0, d, m, dtype, generator)
    AX = matmat(X)
    hvps = m
    X, AX, theta = _rayleigh_ritz(X, AX, m)
    P = AP = None
    converged = False
    it = 0
    for it in range(1, maxiter + 1):
        R = AX - X * theta
        res = R.norm(dim=0)
        scale = theta.abs().max().clamp_min(torch.finfo(dtype).tiny)
        if bool((res[:k] <= tol * scale).all()):
            converged = True
            break
        # residual directions only for the wanted vectors not yet converged: the guard vectors improve through
        # the Rayleigh-Ritz step on span(X, W, P) without costing HVPs of their own
        active = res > tol * scale
        active[k:] = False
        W = _orthonormal(_project_out(R[:, active], [X]))
        if W is None:
            break
        AW = matmat(W)
        hvps += W.shape[1]
        blocks, ablocks = [X, W], [AX, AW]
        if P is not None:
            P, AP = _orthonormal_pair(P, AP, [(X, AX), (W, AW)])
            if P is not None:
                blocks.append(P)
                ablocks.append(AP)
        S = torch.cat(blocks, dim=1)
        AS = torch.cat(ablocks, dim=1)
        T = S.T @ AS
        evals, C = torch.linalg.eigh(0.5 * (T + T.T))
        order = torch.argsort(evals, descending=True)[:m]
        C = C[:, order]
        theta = evals[order]
        X, AX = S @ C, AS @ C
        P, AP = S[:, m:] @ C[m:], AS[:, m:] @ C[m:]
        if it % 25 == 0:  # refresh against drift of the recurrence for AX
            X = _orthonormal(X)
            AX = matmat(X)
            hvps += m
            X, AX, theta = _rayleigh_ritz(X, AX, m)
            P = AP = None
    res = (AX - X * theta).norm(dim=0)
    return EigResult(theta[:k].clone(), X[:, :k].clone(), res[:k], hvps, it, converged, X.clone())


def _dense(matmat: MatMat, d: int, k: int, m: int, dtype: torch.dtype) -> EigResult:
    H = matmat(torch.eye(d, dtype=dtype))
    evals, V = torch.linalg.eigh(0.5 * (H + H.T))
    order = torch.argsort(evals, descending=True)
    evals, V = evals[order], V[:, order]
    res = (H @ V[:, :k] - V[:, :k] * evals[:k]).norm(dim=0)
    return EigResult(evals[:k].clone(), V[:, :k].clone(), res, d, 0, True, V[:, :m].clone())


def _start_block(X0, d, m, dtype, generator) -> Tensor:
    cols = []
    if X0 is not None:
        X0 = X0.to(dtype).reshape(d, -1)[:, :m]
        cols.append(X0)
    missing = m - (X0.shape[1] if X0 is not None else 0)
    if missing > 0:
        cols.append(torch.randn(d, missing, dtype=dtype, generator=generator))
    X = _orthonormal(torch.cat(cols, dim=1))
    if X is None or X.shape[1] < m:  # degenerate warm start: fill with random directions
        extra = torch.randn(d, m, dtype=dtype, generator=generator)
        X = _orthonormal(torch.cat([X, extra], dim=1) if X is not None else extra)[:, :m]
    return X


def _rayleigh_ritz(X: Tensor, AX: Tensor, m: int):
    T = X.T @ AX
    evals, C = torch.linalg.eigh(0.5 * (T + T.T))
    order = torch.argsort(evals, descending=True)[:m]
    C = C[:, order]
    return X @ C, AX @ C, evals[order]


def _project_out(W: Tensor, bases: list[Tensor]) -> Tensor:
    for _ in range(2):
        for B in bases:
            W = W - B @ (B.T @ W)
    return W


def _orthonormal(W: Tensor, rtol: float = 1e-10) -> Tensor | None:
    """Orthonormal basis of span(W), dropping directions that are numerically dependent."""
    if W.shape[1] == 0:
        return None
    norms = W.norm(dim=0)
    keep = norms > rtol * norms.max().clamp_min(torch.finfo(W.dtype).tiny)
    if not bool(keep.any()):
        return None
    W = W[:, keep] / norms[keep]
    Q, R = torch.linalg.qr(W)
    diag = R.diagonal().abs()
    good = diag > max(rtol, 10 * torch.finfo(W.dtype).eps) * diag.max()
    return Q[:, good] if bool(good.any()) else None


def _orthonormal_pair(P: Tensor, AP: Tensor, against: list[tuple[Tensor, Tensor]]):
    """Orthonormalise P against orthonormal blocks, applying the same linear map to AP."""
    for _ in range(2):
        for B, AB in against:
            coef = B.T @ P
            P = P - B @ coef
            AP = AP - AB @ coef
    norms = P.norm(dim=0)
    if not bool((norms > 0).all()):
        return None, None
    Q, R = torch.linalg.qr(P)
    diag = R.diagonal().abs()
    if bool((diag < 1e-8 * diag.max()).any()):  # ill-conditioned: restart without P
        return None, None
    AQ = torch.linalg.solve_triangular(R, AP, upper=True, left=False)
    return Q, AQ


class SharpnessTracker:
    """Top-k eigenpairs of a problem's Hessian along a trajectory, warm-started from the previous call."""

    def __init__(self, problem, k: int = 1, tol: float | None = None, seed: int = 0, maxiter: int = 300):
        self.problem = problem
        self.k = k
        self.tol = tol
        self.maxiter = maxiter
        self.generator = torch.Generator().manual_seed(seed)
        self.basis: Tensor | None = None

    def __call__(self, w: Tensor) -> EigResult:
        result = top_eigs(
            self.problem.hvp_operator(w),
            self.problem.d,
            self.k,
            X0=self.basis,
            tol=self.tol,
            maxiter=self.maxiter,
            dtype=w.dtype,
            generator=self.generator,
        )
        self.basis = result.basis
        return result

    def state_dict(self) -> dict:
        return {} if self.basis is None else {"basis": self.basis.numpy().copy()}

    def load_state_dict(self, state: dict) -> None:
        self.basis = torch.as_tensor(state["basis"]) if "basis" in state else None
