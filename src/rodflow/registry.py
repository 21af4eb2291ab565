"""A small name -> factory registry shared by problems, processes and update rules."""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, Generic, TypeVar

from .errors import RodflowError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(obj: F) -> F:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> F:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RodflowError(f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items


def parameters(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword parameters of a factory with their defaults (``inspect.Parameter.empty`` if required)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = p.default
    return out


def check_params(kind: str, name: str, fn: Callable[..., Any], given: dict[str, Any], skip=()) -> None:
    """One-line error for a keyword the factory does not take."""
    known = parameters(fn, skip)
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(known) or "none"
            raise RodflowError(f"{kind} {name!r} has no parameter {key!r}{hint}; its parameters: {listed}")


def _value_type(param: inspect.Parameter) -> tuple[str | None, bool]:
    """(int, float, bool, str or None: the type a parameter's value must have, whether None is allowed), from
    its annotation, else from the type of its default."""
    ann = param.annotation
    text = None if ann is inspect.Parameter.empty else (ann if isinstance(ann, str) else getattr(ann, "__name__", ""))
    if text is not None:
        text = text.replace(" ", "")
        optional = "|None" in text or text.startswith("Optional[")
        base = text.replace("|None", "").removeprefix("Optional[").removesuffix("]") if optional else text
        return (base if base in ("int", "float", "bool", "str") else None), optional
    default = param.default
    for kind in (bool, int, float, str):
        if type(default) is kind:
            return kind.__name__, False
    return None, True


def check_values(kind: str, name: str, fn: Callable[..., Any], given: dict[str, Any], skip=(),
                 finite: bool = False) -> dict[str, Any]:
    """The keywords ``given`` with each value checked against its parameter's type (annotation, else the
    default's type): a one-line error naming the parameter and what it needs. Integral floats become ints;
    ``seed`` parameters must be integers in 0..MAX_SEED; ``finite`` refuses infinite floats (NaN always)."""
    import numpy as np

    from .runconfig import seed_value

    params = {p.name: p for p in inspect.signature(fn).parameters.values() if p.name not in skip}
    out = dict(given)
    for key, value in given.items():
        if key not in params:
            continue
        need, optional = _value_type(params[key])
        if need is None or (value is None and optional):
            continue
        what = f"{kind} {name!r}: {key}"
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if need == "int":
            if key == "seed" or key.endswith("_seed") or key.startswith("seed_"):
                out[key] = seed_value(what, value)
                continue
            if not number or not float(value).is_integer():
                default = params[key].default
                positive = isinstance(default, int) and not isinstance(default, bool) and default > 0
                raise RodflowError(f"{what} must be a{' positive' if positive else 'n'} integer, got {value!r}")
            out[key] = int(value)
        elif need == "float":
            if not number:
                raise RodflowError(f"{what} must be a number, got {value!r}")
            if math.isnan(float(value)) or (finite and not math.isfinite(float(value))):
                raise RodflowError(f"{what} must be {'finite' if finite else 'a number, not NaN'}, got {value!r}")
        elif need == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise RodflowError(f"{what} must be true or false, got {value!r}")
        elif need == "str" and not isinstance(value, str):
            raise RodflowError(f"{what} must be a string, got {value!r}")
    return out
