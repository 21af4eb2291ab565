"""rodflow: gradient descent at the edge of stability, side by side with the flows that model it."""

from __future__ import annotations

import os as _os

# One BLAS thread per process by default (2-core machines oversubscribe badly otherwise); set before NumPy
# loads. The CLI's --threads and the environment override it.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

from . import optimizers, problems, processes  # noqa: E402
from .errors import RodflowError, RodflowWarning  # noqa: E402
from .problem import Problem  # noqa: E402
from .records import Result, load  # noqa: E402
from .runconfig import RunConfig  # noqa: E402
from .simulate import resume, simulate  # noqa: E402

__all__ = ["Problem", "Result", "RodflowError", "RodflowWarning", "RunConfig", "load", "problems", "processes",
           "resume", "simulate"]
