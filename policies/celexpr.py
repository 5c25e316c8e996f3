"""Compiling CEL conditions once and checking the names they use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cel

#: The variables a condition may read; anything else is rejected at load time.
CEL_VARIABLES: frozenset[str] = frozenset({"args", "tool", "server", "agent", "justification", "now", "time"})

# Comprehension macros bind their own names (``args.items.exists(i, i > 3)``); the cel module
# reports those as variables, so they are collected here and excused.
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_ERROR_AT = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")


@dataclass(frozen=True, slots=True)
class CelProblem:
    """Why an expression was rejected; ``line``/``column`` are 1-based inside the expression."""

    message: str
    hint: str
    line: int = 1
    column: int = 1


def compile_condition(source: str) -> tuple[Any, CelProblem | None]:
    """The compiled program, or None and the problem with its position inside ``source``."""
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError, TypeError) as exc:
        return None, _syntax_problem(source, str(exc))
    unknown = sorted(set(program.variables()) - CEL_VARIABLES - set(_BOUND.findall(source)))
    if unknown:
        name = unknown[0]
        offset = _find_identifier(source, name)
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        return None, CelProblem(
            message=f"CEL expression uses unknown variable '{name}'",
            hint=_unknown_hint(name),
            line=line,
            column=column,
        )
    return program, None


def _syntax_problem(source: str, text: str) -> CelProblem:
    match = _ERROR_AT.search(text)
    if match is None:
        first = text.splitlines()[0] if text else "invalid expression"
        return CelProblem(message=f"CEL syntax error: {first}", hint=_SYNTAX_HINT)
    line, column, detail = int(match.group(1)), int(match.group(2)), match.group(3).strip()
    return CelProblem(message=f"CEL syntax error: {detail}", hint=_SYNTAX_HINT, line=line, column=column)


_SYNTAX_HINT = (
    "conditions are CEL, e.g. \"args.amount > 100 && args.currency == 'USD'\"; "
    "strings take single quotes inside the YAML string"
)


def _unknown_hint(name: str) -> str:
    allowed = ", ".join(sorted(CEL_VARIABLES))
    return f"conditions may use {allowed}; tool arguments are under args (did you mean args.{name}?)"


def _find_identifier(source: str, name: str) -> int:
    match = re.search(rf"(?<![A-Za-z0-9_.]){re.escape(name)}(?![A-Za-z0-9_])", source)
    return match.start() if match else 0
