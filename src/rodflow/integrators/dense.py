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


def hermite5(p0, p1, p2, t: float) -> Tensor:
    """Quintic Hermite interpolant at time t through three points ``(t_i, y_i, f_i = y'(t_i))``, by Newton's
    divided differences on the doubled nodes t0, t0, t1, t1, t2, t2 (fifth-order accurate for smooth y)."""
    z = [p0[0], p0[0], p1[0], p1[0], p2[0], p2[0]]
    col = [p0[1], p0[1], p1[1], p1[1], p2[1], p2[1]]
    slopes = {0: p0[2], 2: p1[2], 4: p2[2]}
    coef = [col[0]]
    for k in range(1, 6):  # k-th divided differences
        col = [slopes[i] if k == 1 and z[i] == z[i + 1] else (col[i + 1] - col[i]) / (z[i + k] - z[i])
               for i in range(6 - k)]
        coef.append(col[0])
    out = coef[5]
    for k in range(4, -1, -1):
        out = coef[k] + (t - z[k]) * out
    return out
