"""Dense output: the solution between two accepted steps from the values and slopes at the ends."""

from __future__ import annotations

from .base import Tensor


def hermite(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, h: float, theta: float) -> Tensor:
    """Cubic Hermite interpolant at t0 + θh of a step of length h from (y0, f0 = y'(t0)) to (y1, f1 = y'(t1)).

    Third-order accurate for smooth solutions. It differs from either quadratic through three of the four data
    by at most (4/27)|D| with D = h(f0 + f1) − 2(y1 − y0), the defect of the trapezoidal rule, which is what the
    RKC error estimate measures (0.4 D): a step whose estimate passes also bounds the spread of its interpolant.
    """
    d = y1 - y0
    a = h * f0
    b = 3.0 * d - 2.0 * a - h * f1
    c = a + h * f1 - 2.0 * d
    return y0 + theta * (a + theta * (b + theta * c))
