"""What every integrator shares: the error type, the vector-field and norm signatures, the default error norm."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

Tensor = torch.Tensor
VectorField = Callable[[float, Tensor], Tensor]
#: ``norm(err, y0, y1)``: the size of a local error estimate ``err`` of a step from y0 to y1; ≤ 1 accepts it.
Norm = Callable[[Tensor, Tensor, Tensor], float]


class IntegrationError(RuntimeError):
    """An integration that cannot go on (step-size underflow, a non-finite state or stiffness estimate)."""


#: field evaluations allowed per unit of time in one ``advance_to`` call (one GD step for the flows): a flow
#: that needs more is stiffening without bound — in practice diverging while its reported point stays bounded
#: (a rod whose half-vector explodes) — and is stopped with an IntegrationError instead of grinding on.
#: The tightest solves measured need 74 per unit on average (rod flow on the CNN, DOPRI at rtol 1e-10, part B2_B8 of
#: `make bench`); 10 000 carry a stiffness of ≈ 7e4 per unit with srk4 (500 steps of 20 stages).
MAX_EVALS_PER_UNIT = 10_000


def check_work(nfev: int, nfev0: int, t0: float, t: float, T: float, rho: float | None = None) -> None:
    """Raise IntegrationError if an ``advance_to(T)`` started at (t0, nfev0) has spent more than
    MAX_EVALS_PER_UNIT field evaluations per unit of its interval (at least one unit) and is now at t."""
    cap = MAX_EVALS_PER_UNIT * max(1.0, T - t0)
    if nfev - nfev0 > cap:
        stiff = f", stiffness ≈ {rho:.3g}" if rho is not None else ""
        raise IntegrationError(f"more than {cap:.0f} field evaluations to go from t={t0:g} to t={T:g} (stuck at "
                               f"t={t:.6g}{stiff}): the flow stiffens without bound, it is probably diverging")


def rms_norm(rtol: float, atol: float) -> Norm:
    """The mixed absolute/relative RMS norm over components: err_i / (atol + rtol·max(|y0_i|, |y1_i|))."""

    def norm(x: Tensor, y0: Tensor, y1: Tensor) -> float:
        scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
        return float(torch.sqrt(torch.mean((x / scale) ** 2)))

    return norm


def snapshot(x: Tensor) -> np.ndarray:
    """A tensor as a NumPy copy on the CPU, for a checkpoint (``restore`` reads it back)."""
    return x.detach().cpu().numpy().copy()


def restore(x, like: Tensor) -> Tensor:
    """A checkpointed (NumPy) array back as a tensor in ``like``'s dtype and on its device."""
    return torch.from_numpy(np.array(x)).to(like)
