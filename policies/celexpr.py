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
    field_problem = unknown_field(source)
    if field_problem is not None:
        return None, field_problem
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


# -- flattening map selections into plain variables -------------------------------------------
# Converting a Python dict into a CEL map costs the cel extension microseconds per call, while a
# plain scalar variable costs almost nothing. So ``args.amount`` is rewritten to the variable
# ``_v_args_amount`` (and likewise for ``time.*`` and ``agent.*``) whenever an expression only
# ever *selects* fields of these maps. The evaluator uses the rewritten program only when every
# selected argument is present; otherwise it falls back to the original program, so results
# and errors are exactly those of the original expression.

FLAT_PREFIX = "_v_"
FLATTENABLE: tuple[str, ...] = ("args", "time", "agent")
TIME_FIELDS: frozenset[str] = frozenset(
    {"weekday", "weekday_number", "is_weekend", "hour", "minute", "date", "day", "month", "year", "timezone"}
)
AGENT_FIELDS: frozenset[str] = frozenset({"name", "id", "labels"})
_SELECT = re.compile(
    r"(?<![A-Za-z0-9_.])(args|time|agent)(?![A-Za-z0-9_])(\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)(\s*\()?)?"
)
_HAS = re.compile(r"(?<![A-Za-z0-9_.])has\s*\(")


def code_segments(source: str) -> list[tuple[bool, str]]:
    """``source`` split into (is_code, text) pieces; string and bytes literals are not code."""
    out: list[tuple[bool, str]] = []
    i = start = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch not in "'\"":
            i += 1
            continue
        k = i
        while k > 0 and source[k - 1] in "rRbB" and i - k < 2:
            k -= 1
        raw = "r" in source[k:i].lower() and (k == 0 or not (source[k - 1].isalnum() or source[k - 1] == "_"))
        quote = ch * 3 if source.startswith(ch * 3, i) else ch
        j = i + len(quote)
        while j < n:
            if not raw and source[j] == "\\":
                j += 2
                continue
            if source.startswith(quote, j):
                j += len(quote)
                break
            j += 1
        out.append((True, source[start:i]))
        out.append((False, source[i:j]))
        i = start = j
    out.append((True, source[start:]))
    return out


@dataclass(frozen=True, slots=True)
class Flattened:
    """The rewritten expression and the ``(map, field)`` selections it turned into variables."""

    source: str
    fields: frozenset[tuple[str, str]]


def flat_name(base: str, field: str) -> str:
    return f"{FLAT_PREFIX}{base}_{field}"


def flatten(source: str) -> Flattened | None:
    """Rewrite ``args.x``/``time.x``/``agent.x`` to variables, or None when that is not exact."""
    pieces: list[str] = []
    fields: set[tuple[str, str]] = set()
    for is_code, text in code_segments(source):
        if not is_code:
            pieces.append(text)
            continue
        if _HAS.search(text) or FLAT_PREFIX in text:
            return None
        position = 0
        for match in _SELECT.finditer(text):
            if match.group(3) is None or match.group(4) is not None:
                return None  # the map itself is used (size(args), args['k'], 'k' in args, a method call)
            base, field = match.group(1), match.group(3)
            fields.add((base, field))
            pieces.append(text[position : match.start()])
            pieces.append(flat_name(base, field))
            position = match.end(2) - (len(match.group(4) or ""))
        pieces.append(text[position:])
    return Flattened(source="".join(pieces), fields=frozenset(fields))


def unknown_field(source: str) -> CelProblem | None:
    """A ``time.x`` or ``agent.x`` selection of a field those maps never have."""
    offset = 0
    for is_code, text in code_segments(source):
        if is_code:
            for match in _SELECT.finditer(text):
                base, field = match.group(1), match.group(3)
                if field is None or match.group(4) is not None:
                    continue
                known = TIME_FIELDS if base == "time" else AGENT_FIELDS if base == "agent" else None
                if known is not None and field not in known:
                    at = offset + match.start(3)
                    return CelProblem(
                        message=f"'{base}' has no field '{field}'",
                        hint=f"{base} fields: {', '.join(sorted(known))}",
                        line=source.count("\n", 0, at) + 1,
                        column=at - (source.rfind("\n", 0, at) + 1) + 1,
                    )
        offset += len(text)
    return None
