"""A small name -> factory registry shared by problems, processes and update rules."""

from __future__ import annotations

import difflib
import inspect
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
