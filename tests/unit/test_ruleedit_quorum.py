"""Setting an approval policy's quorum in a draft: every other value survives, bad input says why."""

from __future__ import annotations

import pytest

from backend.errors import ValidationFailed
from backend.policy_store import ruleedit
from policies import load_policy

DRAFT = """\
version: "1"
approval_policies:
  - {name: sre, teams: [sre], quorum: 1, timeout: 10m}
  - {name: finance, approvers: [a@x.test, b@x.test], quorum: 1}
tools:
  - name: refund
    rules:
      - {action: require_approval, approval_policy: finance}
"""


def test_set_quorum_rewrites_only_that_policy() -> None:
    assert ruleedit.approval_policy_names(DRAFT) == ["sre", "finance"]
    new = ruleedit.set_quorum(DRAFT, "finance", 2)
    policy = load_policy(new, "draft.yaml")
    quorums = {ap.name: ap.quorum for ap in policy.approval_policies}
    assert quorums == {"sre": 1, "finance": 2}
    assert ruleedit.load(new)["approval_policies"][0] == {"name": "sre", "teams": ["sre"], "quorum": 1,
                                                         "timeout": "10m"}


def test_set_quorum_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValidationFailed, match="no approval policy 'ops'"):
        ruleedit.set_quorum(DRAFT, "ops", 2)
    with pytest.raises(ValidationFailed, match="at least 1"):
        ruleedit.set_quorum(DRAFT, "sre", 0)
    with pytest.raises(ValidationFailed, match="not valid YAML"):
        ruleedit.set_quorum("tools: [", "sre", 2)
    assert ruleedit.approval_policy_names("tools: [") == []
    assert ruleedit.approval_policy_names("tools: []\n") == []
