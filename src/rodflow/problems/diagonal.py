"""Diagonal linear network f(x; u, v) = ⟨u ⊙ v, x⟩ with the squared loss (GFS exact solver: rodflow.gfs)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import RodflowError
from ..problem import Problem
from . import register


@register("diagonal-linear-network")
def diagonal_linear_network(
    n: int = 20, dim: int = 40, sparsity: int = 3, init_scale: float = 1.0, v_scale: float = 0.0, seed: int = 0,
    dtype=torch.float64, device=None,
):
    """Diagonal linear network ⟨u⊙v, x⟩, loss (1/2n)‖X(u⊙v) − y‖², w = (u, v); u0 = init_scale, v0 = v_scale."""
    if n < 1 or dim < 1 or not 0 <= sparsity <= dim:
        raise RodflowError("diagonal-linear-network needs n >= 1, dim >= 1 and 0 <= sparsity <= dim")
    if init_scale == 0 and v_scale == 0:
        raise RodflowError("diagonal-linear-network: init_scale = v_scale = 0 is a saddle; give a non-zero scale")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    beta = np.zeros(dim)
    idx = rng.choice(dim, size=sparsity, replace=False)
    beta[idx] = rng.uniform(0.5, 1.5, size=sparsity) * rng.choice([-1.0, 1.0], size=sparsity)
    y = X @ beta
    Xt = torch.as_tensor(X, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    w0 = torch.cat([torch.full((dim,), float(init_scale), dtype=dtype, device=device),
                    torch.full((dim,), float(v_scale), dtype=dtype, device=device)])

    def loss(w):
        return 0.5 * ((Xt @ (w[:dim] * w[dim:]) - yt) ** 2).mean()

    def residual(w):
        return (Xt @ (w[:dim] * w[dim:]) - yt) / math.sqrt(n)

    return Problem.from_loss(loss, w0, suggested_lr=0.05, extras={"diagonal_network": {"X": X, "y": y}},
                             residuals=[residual])
