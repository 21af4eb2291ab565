"""The problem registry: ``make(name, **params)`` builds a registered :class:`rodflow.Problem`.

A new problem is one new module here with a ``@register("name")`` factory, plus its import line below.
A factory takes keyword parameters with defaults (every problem runs with none given), ``dtype`` and
``device`` (tensors it creates go there; the problem's functions run there).
"""

from __future__ import annotations

from typing import Any

from ..errors import RodflowError
from ..checks import trusted
from ..devices import resolve_device
from ..problem import Problem, resolve_dtype
from ..registry import Registry, check_params, check_values, parameters

REGISTRY: Registry = Registry("problem")
register = REGISTRY.register


def names() -> list[str]:
    """Names of all registered problems."""
    return REGISTRY.names()


def params(name: str) -> dict[str, Any]:
    """Parameters of a registered problem and their defaults."""
    return parameters(REGISTRY.get(name), skip=("dtype", "device"))


def describe(name: str) -> str:
    """First line of a problem's docstring."""
    doc = (REGISTRY.get(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def make(name: str, dtype: str = "float64", device: str | None = None, **kwargs: Any) -> Problem:
    """Build the registered problem ``name`` with parameter overrides ``kwargs``, in ``dtype`` on ``device``
    ("cpu" by default; "cuda", "cuda:1", "mps", "auto")."""
    if not isinstance(name, str):
        raise RodflowError(f"problems.make needs a problem name (a string; see rodflow.problems.names()), got {name!r}")
    factory = REGISTRY.get(name)
    check_params("problem", name, factory, kwargs, skip=("dtype", "device"))
    # each value of its parameter's type: integers integral (depth=2.5 or "3" is a slip), numbers finite
    kwargs = check_values("problem", name, factory, kwargs, skip=("dtype", "device"), finite=True)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    try:
        with trusted():
            problem = factory(dtype=torch_dtype, device=torch_device, **kwargs)
    except RodflowError:
        raise
    except (TypeError, ValueError) as exc:
        raise RodflowError(f"problem {name!r}: bad parameter ({exc})") from None
    problem.name = name
    given = dict(kwargs)
    problem.params = {**{k: v for k, v in params(name).items()}, **given}
    problem._rebuild = lambda dt, dev: make(name, dtype=dt, device=dev, **given)
    return problem


# Built-in problems: one import line per module.
from . import toys  # noqa: E402,F401
from . import diagonal  # noqa: E402,F401
from . import networks  # noqa: E402,F401
from . import reference_mlp  # noqa: E402,F401
