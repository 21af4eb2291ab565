"""The central-flow reference problem: a 433-parameter swish MLP on ½·MSE (shared/reference/README.md §1)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import RodflowError
from ..problem import Problem
from . import register

# layout of the flat vector: W1 (16×8), b1, W2 (16×16), b2, W3 (1×16), b3, each row-major
_SHAPES = ((16, 8), (16,), (16, 16), (16,), (1, 16), (1,))


def reference_data(n: int = 128, seed_data: int = 0, seed_init: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, w0) by the reference's recipe: standard normal data, PyTorch-style uniform initialisation."""
    rng = np.random.default_rng(seed_data)
    x = rng.standard_normal((n, 8))
    y = rng.standard_normal(n)
    rng = np.random.default_rng(seed_init)
    fan_in = (8, 8, 16, 16, 16, 16)
    parts = [rng.uniform(-1 / np.sqrt(f), 1 / np.sqrt(f), size=s) for f, s in zip(fan_in, _SHAPES)]
    return x, y, np.concatenate([p.reshape(-1) for p in parts])


def mlp_forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x) = W3 s(W2 s(W1 x + b1) + b2) + b3 with s(z) = z·sigmoid(z), for a batch x of shape (n, 8)."""
    tensors, i = [], 0
    for s in _SHAPES:
        size = int(np.prod(s))
        tensors.append(w[i : i + size].reshape(s))
        i += size
    W1, b1, W2, b2, W3, b3 = tensors
    h = torch.nn.functional.silu(x @ W1.T + b1)
    h = torch.nn.functional.silu(h @ W2.T + b2)
    return (h @ W3.T + b3)[:, 0]


def mlp_problem(x, y, w0, dtype=torch.float64, name: str = "reference-mlp", device=None) -> Problem:
    """L(w) = (1/n) Σ ½ (f(x_i) − y_i)² for given data and start (e.g. the arrays of the reference file)."""
    x = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    y = torch.as_tensor(np.asarray(y), dtype=dtype, device=device)
    if x.dim() != 2 or x.shape[1] != 8 or y.shape != (x.shape[0],):
        raise RodflowError("reference-mlp needs x of shape (n, 8) and y of shape (n,)")
    w0 = torch.as_tensor(np.asarray(w0), dtype=dtype, device=device)
    if w0.shape != (433,):
        raise RodflowError(f"reference-mlp has 433 parameters, w0 has shape {tuple(w0.shape)}")

    def loss(w):
        r = mlp_forward(w, x) - y
        return 0.5 * (r * r).mean()

    return Problem.from_loss(loss, w0, name=name, suggested_lr=0.2)


@register("reference-mlp")
def reference_mlp(n: int = 128, seed_data: int = 0, seed_init: int = 1, dtype=torch.float64, device=None):
    """Swish MLP 8-16-16-1 (433 parameters), ½·MSE on Gaussian data: the central-flow reference (EoS at lr 0.2)."""
    if int(n) < 1:
        raise RodflowError(f"reference-mlp needs n >= 1, got {n}")
    x, y, w0 = reference_data(int(n), int(seed_data), int(seed_init))
    return mlp_problem(x, y, w0, dtype=dtype, device=device)
