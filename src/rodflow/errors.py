"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class RodflowError(ValueError):
    """Bad input or an unusable configuration. The message is a single line meant for the user."""


class RodflowWarning(UserWarning):
    """A measurement that could not be made (recorded as NaN with its reason) or a result to read with care."""
