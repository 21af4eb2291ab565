"""Toy problems with known structure (science.md §4-§5)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import RodflowError
from ..problem import Problem
from . import register


def _vector(values, dtype, what: str, length: int | None = None, device=None) -> torch.Tensor:
    need = f"{what} must be a flat list of finite numbers, e.g. [1.0, 4.0]"
    if isinstance(values, (str, bytes, bool)):
        raise RodflowError(f"{need}, got {values!r}")
    try:
        array = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise RodflowError(f"{need}, got {values!r}") from None
    if array.ndim != 1:
        raise RodflowError(f"{need}, got {values!r}")
    if not np.isfinite(array).all():
        raise RodflowError(f"{need}; got {values!r}")
    t = torch.as_tensor(array, dtype=dtype, device=device)
    if length is not None and t.numel() != length:
        raise RodflowError(f"{what} must have {length} entries, got {t.numel()}")
    return t


@register("quadratic")
def quadratic(
    lambdas: Sequence[float] = (1.0, 4.0, 12.0), w0: Sequence[float] | None = None, dtype=torch.float64, device=None
):
    """Quadratic ½ Σ λ_i w_i² (sharpness max λ_i); default w0 all ones."""
    lam = _vector(lambdas, dtype, "lambdas", device=device)
    w0 = torch.ones_like(lam) if w0 is None else _vector(w0, dtype, "w0", lam.numel(), device=device)
    return Problem.from_loss(lambda w: 0.5 * (lam * w * w).sum(), w0, suggested_lr=0.1)


@register("quartic")
def quartic(S: float = 12.0, Q: float = 1.0, w0: float = 0.01, dtype=torch.float64, device=None):
    """Quartic (S/2)w² − (Q/4)w⁴, Q > 0: GD at lr > 2/S settles on the period-2 orbit δ*² = (S − 2/η)/Q."""
    if Q <= 0:
        raise RodflowError(f"quartic needs Q > 0, got Q={Q}")
    x0 = _vector(w0, dtype, "w0", 1, device=device)
    return Problem.from_loss(lambda w: 0.5 * S * (w * w).sum() - 0.25 * Q * (w**4).sum(), x0, suggested_lr=0.2)


@register("self-stabilization")
def self_stabilization(alpha: float = 1.0, w0: Sequence[float] = (0.5, 2.0), dtype=torch.float64, device=None):
    """Self-stabilization caricature ½ y x² − α y over w = (x, y): sharpness ≈ y rises under GD to 2/η."""
    x0 = _vector(w0, dtype, "w0", 2, device=device)
    return Problem.from_loss(lambda w: 0.5 * w[1] * w[0] ** 2 - alpha * w[1], x0, suggested_lr=0.1)


@register("sharp-valley")
def sharp_valley(
    zeta: float = 1.0, eps: float = 0.01, w0: Sequence[float] = (0.1, 5.0), dtype=torch.float64, device=None
):
    """Sharp-valley family f = g + ε h, g = ½(y + ζx)x², h = −x − y over w = (x, y) (Berthier 2026)."""
    x0 = _vector(w0, dtype, "w0", 2, device=device)

    def loss(w):
        x, y = w[0], w[1]
        return 0.5 * (y + zeta * x) * x**2 + eps * (-x - y)

    return Problem.from_loss(loss, x0, suggested_lr=0.3)


@register("scalar-network")
def scalar_network(depth: int = 2, y: float = 1.0, w0: Sequence[float] | None = None, dtype=torch.float64, device=None):
    """Scalar network ½(∏ w_i − y)² of depth D; default w0 = (3, 0.5, ..., 0.5) (unbalanced)."""
    depth = int(depth)
    if depth < 1:
        raise RodflowError(f"scalar-network needs depth >= 1, got {depth}")
    if w0 is None:
        w0 = [3.0] + [0.5] * (depth - 1)
    x0 = _vector(w0, dtype, "w0", depth, device=device)
    target = float(y)
    return Problem.from_loss(
        lambda w: 0.5 * (torch.prod(w) - target) ** 2,
        x0,
        suggested_lr=0.2,
        extras={"scalar_network": {"depth": depth, "y": target}},
        residuals=[lambda w: (torch.prod(w) - target).reshape(1)],
    )


@register("squared-regression")
def squared_regression(
    n: int = 20, dim: int = 40, sparsity: int = 3, init_scale: float = 1.0, seed: int = 0, dtype=torch.float64,
    device=None,
):
    """Squared regression f(x; w) = ⟨w ⊙ w, x⟩ with loss (1/2n)‖X(w⊙w) − y‖² on a sparse Gaussian teacher."""
    if n < 1 or dim < 1 or not 0 <= sparsity <= dim:
        raise RodflowError("squared-regression needs n >= 1, dim >= 1 and 0 <= sparsity <= dim")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    beta = np.zeros(dim)
    beta[rng.choice(dim, size=sparsity, replace=False)] = rng.uniform(0.5, 1.5, size=sparsity)
    y = X @ beta
    Xt = torch.as_tensor(X, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    w0 = torch.full((dim,), float(init_scale), dtype=dtype, device=device)
    return Problem.from_loss(
        lambda w: 0.5 * ((Xt @ (w * w) - yt) ** 2).mean(),
        w0,
        suggested_lr=0.05,
        extras={"squared_regression": {"X": X, "y": y}},
        residuals=[lambda w: (Xt @ (w * w) - yt) / math.sqrt(n)],
    )
