"""Synthetic datasets drawn from ``seed``: teacher–student regression, Chebyshev regression, sorting."""

from __future__ import annotations

import numpy as np

from ..errors import RodflowError
from . import Dataset, positive_int, register


@register("teacher")
def teacher(n: int = 200, classes: int = 1, dim: int = 10, teacher_width: int = 16, noise: float = 0.0,
            seed: int = 0) -> Dataset:
    """Gaussian teacher–student regression: x ~ N(0, I_dim), y = W₂ tanh(W₁ x) (+ noise), unit-variance y.

    ``classes`` is the number of outputs; the teacher's weights are N(0, 1/fan_in).
    """
    n, classes, dim, tw = (positive_int(k, v) for k, v in
                           (("n", n), ("classes", classes), ("dim", dim), ("teacher_width", teacher_width)))
    if noise < 0:
        raise RodflowError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    w1 = rng.standard_normal((tw, dim)) / np.sqrt(dim)
    w2 = rng.standard_normal((classes, tw)) / np.sqrt(tw)
    y = np.tanh(x @ w1.T) @ w2.T
    y = y / y.std(axis=0, keepdims=True).clip(min=1e-12)
    y = y + noise * rng.standard_normal(y.shape)
    return Dataset("teacher", x, y, classes, "regression", {"dim": dim, "teacher_width": tw, "noise": noise})


@register("chebyshev")
def chebyshev(n: int = 64, classes: int = 1, degree: int = 5, seed: int = 0) -> Dataset:
    """Chebyshev regression on [-1, 1]: y_j = Σ_{k≤degree} c_jk T_k(x), c ~ N(0, 1), unit-variance y.

    x is uniform on [-1, 1] (drawn from ``seed``); ``classes`` is the number of outputs.
    """
    n, classes = positive_int("n", n), positive_int("classes", classes)
    degree = positive_int("degree", degree, minimum=0)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 1))
    coef = rng.standard_normal((classes, degree + 1))
    y = np.stack([np.polynomial.chebyshev.chebval(x[:, 0], c) for c in coef], axis=1)
    y = (y - y.mean(axis=0)) / y.std(axis=0).clip(min=1e-12)
    return Dataset("chebyshev", x, y, classes, "regression", {"degree": degree})


@register("sorting")
def sorting(n: int = 128, classes: int = 8, length: int = 5, seed: int = 0) -> Dataset:
    """Sorting task: a causal model reads ``length`` random tokens (vocabulary ``classes``) then emits them sorted.

    x = (a_1..a_L, s_1..s_{L-1}) as int tokens, y = (s_1..s_L) with s = sorted(a); the model's outputs at
    positions L-1 .. 2L-2 predict y (teacher forcing).
    """
    n, classes = positive_int("n", n), positive_int("classes", classes, minimum=2)
    length = positive_int("length", length, minimum=2)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, classes, size=(n, length))
    s = np.sort(a, axis=1)
    x = np.concatenate([a, s[:, :-1]], axis=1).astype(np.int64)
    return Dataset("sorting", x, s.astype(np.int64), classes, "classification", {"length": length})
