"""`Status`: how a method's run ended, as data — kind, step and reason.

A ``Status`` is also the string it has always been (``"ok"``, ``"failed at step N: reason"``,
``"diverged at step N (reason)"``), so ``result.status["gd"] == "ok"`` keeps working; code that needs the
parts reads ``.kind``, ``.step`` and ``.reason`` instead of parsing the text. status.json stores both.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

KINDS = ("ok", "failed", "diverged", "incomplete")
_TEXT = re.compile(r"^(failed|diverged|incomplete) at step (\d+)(?:: (.*)| \((.*)\))?$", re.S)


class Status(str):
    """A method's status: ``kind`` (ok, failed, diverged; incomplete for a killed run read back), the
    ``step`` it happened at, and the ``reason``."""

    kind: str
    step: int | None
    reason: str

    def __new__(cls, kind: str = "ok", step: int | None = None, reason: str = "") -> "Status":
        if kind not in KINDS:
            raise ValueError(f"status kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "ok":
            text, step, reason = "ok", None, ""
        elif kind == "failed":
            text = f"failed at step {step}: {reason}" if step is not None else f"failed: {reason}"
        elif kind == "incomplete":  # a killed (or running) run read back: the last step it recorded
            text = f"incomplete at step {step} ({reason})" if step is not None else f"incomplete ({reason})"
        else:
            text = f"diverged at step {step} ({reason})"
        obj = super().__new__(cls, text)
        obj.kind, obj.step, obj.reason = kind, (None if step is None else int(step)), reason
        return obj

    def __getnewargs__(self):  # pickling (sweep workers) keeps the fields
        return (self.kind, self.step, self.reason)

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "reason": self.reason}

    @classmethod
    def from_record(cls, record: Any) -> "Status":
        """From status.json: a ``{kind, step, reason}`` dict, or the text older runs stored."""
        if isinstance(record, Status):
            return record
        if isinstance(record, Mapping):
            return cls(record.get("kind", "ok"), record.get("step"), record.get("reason", ""))
        text = str(record)
        if text == "ok":
            return cls()
        if text.startswith("failed: "):
            return cls("failed", None, text[len("failed: "):])
        if text.startswith("incomplete (") and text.endswith(")"):
            return cls("incomplete", None, text[len("incomplete ("):-1])
        match = _TEXT.match(text)
        if match is None:
            return cls("failed", None, text)  # an unrecognised text: keep it as the reason
        kind, step, after_colon, in_parens = match.groups()
        return cls(kind, int(step), after_colon if kind == "failed" else (in_parens or ""))


def statuses_record(status: Mapping[str, Status]) -> dict[str, Any]:
    """The two views status.json holds: ``status`` (text per method) and ``methods`` (fields per method)."""
    return {"status": {m: str(s) for m, s in status.items()},
            "methods": {m: Status.from_record(s).to_dict() for m, s in status.items()}}


def read_statuses(record: Mapping[str, Any]) -> dict[str, Status]:
    """Per-method statuses from a status.json (or checkpoint) record, new or old layout."""
    if "methods" in record:
        return {m: Status.from_record(v) for m, v in record["methods"].items()}
    return {m: Status.from_record(v) for m, v in record.get("status", {}).items()}
