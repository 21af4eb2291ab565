"""Reading TOML config files (comparisons, sweeps) with one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import RodflowError


def read_toml(path: str | os.PathLike, what: str, hint: str) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict, with ``name`` defaulting to the file's stem.

    ``what`` names the kind of file in errors ("config", "sweep config"); ``hint`` says where to look.
    """
    path = Path(path)
    if not path.is_file():
        raise RodflowError(f"{what} {path} not found; give the path of a .toml file ({hint})")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RodflowError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise RodflowError(f"{what} {path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    config.setdefault("name", path.stem)
    return config
