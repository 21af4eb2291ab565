"""What every CLI command shares: the typer ``app``, the ``@command`` decorator (bad input -> one line on
stderr, exit status 2), value parsing and thread settings. ``rodflow.cli`` and every module in
``rodflow.commands`` import from here, so no command module imports ``rodflow.cli`` back."""

from __future__ import annotations

import ast
import functools
import os
from typing import Any, List

import typer

from ..errors import RodflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GD at the edge of stability, side by side with gradient, central and rod flow.")


def command(fn):
    """Register a command whose bad input ends in one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RodflowError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return app.command()(wrapper)


def check_out(out, overwrite: bool, resumable: bool = False) -> None:
    """An existing run directory is replaced only with --overwrite (a killed run there could be resumed)."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RodflowError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a run" if (out / "config.json").is_file() else "files"
        resume = f", --resume {out} to continue it" if resumable else ""
        raise RodflowError(f"{out} already holds {what}; pass --overwrite to replace it{resume}, or another --out")


def parse_value(text: str) -> Any:
    """A CLI value: a Python literal (number, list, tuple, True/False/None) or else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("nan", "inf", "+inf", "-inf"):  # not Python literals, but numbers a user means
        return float(lowered)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(items: List[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RodflowError(f"{what} {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key.strip() in out:
            raise RodflowError(f"{what} {key.strip()} is given twice ({out[key.strip()]!r} and {parse_value(value)!r}); "
                               "give it once")
        out[key.strip()] = parse_value(value)
    return out


def parse_options(items: List[str] | None, flag: str = "--opt",
                  what: str = "a method: method.option=value, e.g. gradient_flow.rtol=1e-9") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_pairs(items, flag).items():
        if "." not in key:
            raise RodflowError(f"{flag} {key}=... must name {what}")
        method, option = key.split(".", 1)
        out.setdefault(method, {})[option] = value
    return out


def set_threads(threads: int) -> None:
    if threads < 1:
        raise RodflowError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    try:  # BLAS is already loaded: adjust it in place where threadpoolctl is available
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass
