"""ODE integration for the flows (time in GD steps), laid out as in diffrax: the vector field belongs to a
process; here are the solvers (``dopri``: Dormand-Prince 5(4); ``rkc``: damped Runge-Kutta-Chebyshev;
``srk4``: fourth-order stabilised Runge-Kutta; the last two share ``stabilized.Stabilized``), the stiffness
estimate (``spectral``), dense output (``dense``) and error norms (``base.rms_norm``; rod flow adds its own).
Every solver has ``advance_to(T)`` (dense output at any T past the last one asked for), ``step()``,
``field_changed()`` (the process changed its field from the current point on), ``t``/``y``/``fy``,
``nfev``/``naccept``/``nreject`` and ``state_dict``/``load_state_dict`` (exact resume).

A new solver is one module here plus a line in ``SOLVERS``; a flow that takes ``integrator=`` gets it.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import RodflowError
from .base import IntegrationError, Norm, Tensor, VectorField, rms_norm
from .dopri import DormandPrince
from .rkc import ChebyshevRK, _rkc_step
from .srk4 import StabilizedRK4

#: the flows' integrator unless an integrated momentum asks for ``dopri`` (``UpdateRule.flow_integrator``)
DEFAULT = "srk4"
#: name → what it is (shown in errors and ``rodflow methods``)
SOLVERS = {
    "srk4": "fourth-order stabilised Runge-Kutta (4-20 stages), stages from a power-iteration stiffness estimate",
    "rkc": "damped second-order Runge-Kutta-Chebyshev, stages from a power-iteration stiffness estimate",
    "dopri": "Dormand-Prince 5(4), explicit, step capped near 3.3/ρ by stability",
}


def check_name(name: Any, method: str) -> str:
    if not isinstance(name, str) or name not in SOLVERS:
        raise RodflowError(f"{method} integrator must be one of {', '.join(SOLVERS)}, got {name!r}")
    return name


def make(name: str, field: VectorField, y0: Tensor, *, rtol: float, atol: float, norm: Norm | None = None,
         max_step: float = math.inf, t0: float = 0.0, grid: float | None = 1.0):
    """An integrator of dy/dt = field(t, y) (autonomous for ``rkc`` and ``srk4``) from y0 at t0. ``grid``: the
    spacing of the times that will be read (t0 + k·grid; the flows read GD steps), for ``srk4``'s dense-output
    error control (None: anywhere)."""
    if name == "dopri":
        return DormandPrince(field, y0, t0=t0, rtol=rtol, atol=atol, max_step=max_step, norm=norm)
    if name == "rkc":
        return ChebyshevRK(lambda y: field(0.0, y), y0, rtol=rtol, atol=atol, norm=norm, max_step=max_step, t0=t0)
    if name == "srk4":
        return StabilizedRK4(lambda y: field(0.0, y), y0, rtol=rtol, atol=atol, norm=norm, max_step=max_step, t0=t0,
                             grid=grid)
    raise RodflowError(f"unknown integrator {name!r}; choose one of {', '.join(SOLVERS)}")


__all__ = ["ChebyshevRK", "DEFAULT", "DormandPrince", "StabilizedRK4", "IntegrationError", "SOLVERS", "check_name",
           "make", "rms_norm", "_rkc_step"]
