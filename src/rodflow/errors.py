"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class RodflowError(ValueError):
    """Bad input or an unusable configuration. The message is a single line meant for the user."""


class RodflowWarning(UserWarning):
    """A measurement that could not be made (recorded as NaN with its reason) or a result to read with care."""


def _install_one_line_format() -> None:
    """A RodflowWarning prints as one line (``RodflowWarning: message``), not with the file, line number and
    source line of the code that emitted it; other warnings keep Python's format."""
    import warnings

    if getattr(warnings.formatwarning, "_rodflow", False):
        return
    previous = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if isinstance(category, type) and issubclass(category, RodflowWarning):
            return f"{category.__name__}: {' '.join(str(message).split())}\n"
        return previous(message, category, filename, lineno, line)

    formatwarning._rodflow = True
    warnings.formatwarning = formatwarning


_install_one_line_format()
