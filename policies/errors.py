"""Policy load errors that point at a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem found in a policy document; line and column are 1-based."""

    source: str
    line: int
    column: int
    path: str
    value: Any
    message: str
    hint: str

    def format(self) -> str:
        text = f"{self.source}:{self.line}:{self.column}: {self.message}"
        if self.path:
            text += f" [at {self.path}]"
        if self.value is not None:
            text += f" (value: {_short(self.value)})"
        if self.hint:
            text += f" hint: {self.hint}"
        return text

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if value is not None and not isinstance(value, str | int | float | bool):
            value = _short(value)
        return {
            "source": self.source,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "value": value,
            "message": self.message,
            "hint": self.hint,
        }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class PolicyError(Exception):
    """A policy document was rejected; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(issue.format() for issue in self.issues)
