"""Converting Preloop's policy format: mapped fields, and warnings for everything else."""

from __future__ import annotations

import pytest

from policies import PolicyError, load_policy
from policies.preloop_import import convert_preloop
from tests.unit.policies.helpers import decide

PRELOOP = """
approval_workflows:
  - name: prod-approvals
    approvals_required: 2
    approver_users: [alice@example.com, bob@example.com]
    approver_teams: [sre]
    escalation_users: [cto@example.com]
    escalation_after_seconds: 300
    timeout_seconds: 900
    is_default: true
tools:
  - tool_name: deploy
    approval_workflow: prod-approvals
    conditions:
      - expression: "arguments.environment == 'production'"
        action: require_approval
      - expression: "arguments.environment == 'dev'"
        action: allow
  - tool_name: drop_table
    approval_workflow: prod-approvals
  - tool_name: read_logs
    approval_required: false
"""


def test_convert_maps_workflows_tools_and_conditions() -> None:
    text, warnings = convert_preloop(PRELOOP)
    policy = load_policy(text)
    ap = policy.approval_policy("prod-approvals")
    assert ap is not None
    assert (ap.approvers, ap.teams, ap.quorum, ap.timeout_seconds) == (
        ["alice@example.com", "bob@example.com"], ["sre"], 2, 900)
    assert [level.to_dict() for level in ap.escalation] == [
        {"after_seconds": 300, "users": ["cto@example.com"], "teams": []}]
    prod = decide(policy, "deploy", {"environment": "production"})
    assert prod.action == "require_approval" and prod.approval_policy is ap
    assert decide(policy, "deploy", {"environment": "dev"}).action == "allow"
    assert decide(policy, "drop_table", {}).action == "require_approval"
    assert decide(policy, "read_logs", {}).action == "allow"
    assert any("rewrote" in w and "args.environment" in w for w in warnings)
    assert any("unknown_tools: allow" in w for w in warnings)


def test_unmappable_things_are_reported_not_dropped() -> None:
    text, warnings = convert_preloop("""
approval_workflows:
  - name: w
    approver_users: [ann@example.com]
    escalation_users: [boss@example.com]
    timeout_seconds: 600
    notification_channels: [email, sms]
    priority: urgent
tools:
  - tool_name: t
    approval_workflow: missing
    rate_limit: 3
    conditions:
      - expression: "args.x > 1"
        action: escalate
        weight: 2
retention_days: 30
""")
    joined = "\n".join(warnings)
    for fragment in ("'sms' has no equivalent", "field 'priority'", "escalation_users has no delay",
                     "approval workflow 'missing' is not defined", "field 'rate_limit'",
                     "action 'escalate' has no equivalent", "field 'weight'", "field 'retention_days'",
                     "does not validate yet"):
        assert fragment in joined, fragment
    # the output carries the same notes as comments
    assert "#  - " in text and "retention_days" in text


def test_convert_rejects_non_mapping() -> None:
    with pytest.raises(PolicyError) as info:
        convert_preloop("- a\n- b\n", source="x.yaml")
    assert info.value.issues[0].source == "x.yaml"
