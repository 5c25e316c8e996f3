"""YAML policy loader: strict schema checks with file, line, column, value and hint for each issue.

The typed node readers live in `policies._nodes`; `policies._sections` reads the document, with one module per
concern for its sections (`_approval_sections`, `_tool_sections`, `_test_sections`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from policies._sections import PolicyReader
from policies.errors import PolicyError, PolicyIssue
from policies.model import ParsedPolicy

if TYPE_CHECKING:
    from policies.engine import Policy

__all__ = ["ParsedPolicy", "load_policy", "load_policy_file", "parse_policy"]


def load_policy(text: str, source: str = "<policy>", team_sizes: dict[str, int] | None = None) -> Policy:
    """Parse, check and compile a policy; raises PolicyError listing every issue found."""
    from policies.engine import Policy

    parsed = parse_policy(text, source=source, team_sizes=team_sizes)
    return Policy(parsed, source=source, text=text)


def load_policy_file(path: str | Path, team_sizes: dict[str, int] | None = None) -> Policy:
    """Read ``path`` and :func:`load_policy` it, naming the file in every issue."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(
            [
                PolicyIssue(
                    str(path),
                    1,
                    1,
                    "",
                    None,
                    f"cannot read policy file: {exc}",
                    "check the path and that the file is UTF-8 text",
                )
            ]
        ) from exc
    return load_policy(text, source=str(path), team_sizes=team_sizes)


def parse_policy(
    text: str, source: str = "<policy>", team_sizes: dict[str, int] | None = None
) -> ParsedPolicy:
    reader = PolicyReader(source, team_sizes)
    parsed = reader.read(text)
    if reader.issues or parsed is None:
        if not reader.issues:
            reader.issues.append(PolicyIssue(source, 1, 1, "", None, "invalid policy", ""))
        raise PolicyError(sorted(reader.issues, key=lambda i: (i.line, i.column)))
    return parsed
