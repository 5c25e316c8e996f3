"""Shared bits for the policy engine tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policies import CallContext, Decision, Policy, PolicyError, PolicyIssue, load_policy

EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"
WEDNESDAY_NOON = datetime(2025, 1, 8, 12, 0, tzinfo=UTC)

AP = """
approval_policies:
  - name: ops
    approvers: [ops@example.com]
    timeout: 10m
"""


def decide(policy: Policy, tool: str, args: dict[str, Any] | None = None, **kw: Any) -> Decision:
    kw.setdefault("now", WEDNESDAY_NOON)
    return policy.evaluate(CallContext(tool=tool, args=args or {}, **kw))


def issues_of(text: str, **kw: Any) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="bad.yaml", **kw)
    return info.value.issues


def only_issue(text: str, **kw: Any) -> PolicyIssue:
    found = issues_of(text, **kw)
    assert len(found) == 1, [i.format() for i in found]
    return found[0]
