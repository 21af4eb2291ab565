"""Further CLI command groups, one module each: a module here registers its commands on ``app`` with
``@command`` (both from ``rodflow.commands.base``) and is imported automatically (no list to edit)."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "base":
            continue
        importlib.import_module(f"{__name__}.{info.name}")
