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
