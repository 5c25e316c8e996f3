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
    assert any("defaults.unknown_tools is allow" in w for w in warnings)
    assert decide(policy, "anything_else", {}).action == "allow"  # Preloop's own default, said out loud


def test_anything_that_could_change_a_decision_fails_the_import_once_each() -> None:
    with pytest.raises(PolicyError) as info:
        convert_preloop("""
approval_workflows:
  - name: w
    approver_users: [ann@example.com]
tools:
  - tool_name: t
    approval_workflow: missing
    rate_limit: 3
    conditions:
      - expression: "args.x > 1"
        action: escalate
        weight: 2
      - {type: regex, expression: "^prod"}
defaults: {unknown_tools: sometimes}
""", source="p.yaml")
    messages = [(issue.path, issue.message) for issue in info.value.issues]
    assert messages == [
        ("tools[0] (t)", "approval workflow 'missing' is not defined"),
        ("tools[0] (t).conditions[0]", "field 'weight' has no equivalent and could change a decision"),
        ("tools[0] (t).conditions[0]", "action 'escalate' has no equivalent"),
        ("tools[0] (t).conditions[1]", "condition type 'regex' has no equivalent (only CEL expressions map)"),
        ("tools[0] (t)", "field 'rate_limit' has no equivalent and could change a decision"),
        ("defaults.unknown_tools", "'sometimes' is not an action"),
    ]
    assert all(issue.source == "p.yaml" and issue.hint for issue in info.value.issues)


def test_cosmetic_leftovers_are_warnings_in_the_output() -> None:
    text, warnings = convert_preloop("""
approval_workflows:
  - {name: w, approver_users: [ann@example.com], notification_channels: [email, sms], priority: urgent}
tools:
  - {tool_name: t, approval_workflow: w, tags: [ops]}
defaults: {unknown_tools: deny}
retention_days: 30
""")
    joined = "\n".join(warnings)
    for fragment in ("'sms' has no equivalent", "field 'priority'", "field 'tags'", "field 'retention_days'"):
        assert fragment in joined, fragment
    assert "#  - " in text and "retention_days" in text
    assert decide(load_policy(text), "t", {}).action == "require_approval"


def test_defaults_section_keeps_deny_by_default() -> None:
    text, _ = convert_preloop("""
approval_workflows:
  - {name: sre, approver_teams: [sre]}
  - {name: finance, approver_users: [cfo@example.com]}
tools:
  - {tool_name: read_logs, approval_required: false}
defaults:
  unknown_tools: deny
  default_approval_workflow: finance
""")
    policy = load_policy(text)
    assert decide(policy, "read_logs", {}).action == "allow"
    assert decide(policy, "rm_rf", {}).action == "deny"
    assert policy.default_approval_policy is not None and policy.default_approval_policy.name == "finance"


def test_require_approval_for_new_tools_and_contradictions() -> None:
    text, _ = convert_preloop("""
approval_workflows: [{name: sre, approver_teams: [sre]}]
tools: []
defaults: {require_approval_for_new_tools: true, default_approval_workflow: sre}
""")
    unknown = decide(load_policy(text), "new_tool", {})
    assert unknown.action == "require_approval" and unknown.approval_policy is not None
    assert unknown.approval_policy.name == "sre"
    with pytest.raises(PolicyError) as info:
        convert_preloop("""
approval_workflows: [{name: sre, approver_teams: [sre]}]
defaults: {require_approval_for_new_tools: true, unknown_tools: allow}
""")
    assert [issue.message for issue in info.value.issues] == [
        "require_approval_for_new_tools: true contradicts unknown_tools: allow"]


def test_escalation_without_delay_follows_preloop() -> None:
    text, warnings = convert_preloop("""
approval_workflows:
  - {name: flat, approver_teams: [sre], escalation_users: [cto@example.com], timeout_seconds: 600}
  - name: nested
    approver_teams: [sre]
    timeout: 600
    escalation: {enabled: true, escalate_to: [cto, vp_engineering], escalation_delay: 300}
defaults: {unknown_tools: deny}
""")
    policy = load_policy(text)
    flat, nested = policy.approval_policy("flat"), policy.approval_policy("nested")
    assert flat is not None and nested is not None
    assert flat.timeout_seconds == 1200 and [e.after_seconds for e in flat.escalation] == [600]
    assert any("escalates at the timeout (600s)" in w for w in warnings)
    assert nested.timeout_seconds == 600 and nested.escalation[0].after_seconds == 300
    assert nested.escalation[0].teams + nested.escalation[0].users == ["cto", "vp_engineering"] or set(
        nested.escalation[0].teams + nested.escalation[0].users) == {"cto", "vp_engineering"}


SEED_TOOL = {
    "tool_name": "deploy_production",
    "source": "external_mcp_server",
    "approval_required": True,
    "approval_policy_id": "pol_xyz123",
    "conditions": [{"type": "argument", "expression": "args.environment == 'production'", "enabled": True}],
}
SEED_POLICY = {
    "id": "pol_xyz123",
    "name": "Production Deployments",
    "approvers": ["ann@example.com", "ben@example.com"],
    "teams": ["platform_team"],
    "notification_channels": ["email", "slack", "mobile"],
    "timeout_seconds": 600,
    "quorum": 1,
}


@pytest.mark.parametrize("document", [[SEED_POLICY, SEED_TOOL], [SEED_TOOL, SEED_POLICY]])
def test_seed_json_shapes_import_validate_and_explain(document: list[dict[str, object]]) -> None:
    import json

    text, warnings = convert_preloop(json.dumps(document))
    policy = load_policy(text)
    ap = policy.approval_policy("Production Deployments")
    assert ap is not None
    assert (ap.approvers, ap.teams, ap.quorum, ap.timeout_seconds) == (
        ["ann@example.com", "ben@example.com"], ["platform_team"], 1, 600)
    assert ap.channels == ["email", "slack", "push"]
    prod = decide(policy, "deploy_production", {"environment": "production"}, server="external_mcp_server")
    assert prod.action == "require_approval" and prod.approval_policy is ap
    assert decide(policy, "deploy_production", {"environment": "staging"},
                  server="external_mcp_server").action == "allow"
    assert any("'mobile'" not in w for w in warnings)


def test_preloop_user_ids_as_approvers_fail_with_the_fix() -> None:
    import json

    with pytest.raises(PolicyError) as info:
        convert_preloop(json.dumps({**SEED_POLICY, "approvers": ["user_123", "bob@example.com"]}))
    [issue] = info.value.issues
    assert issue.message == "approver 'user_123' is not an email (a Preloop user id?)"
    assert "replace it with the person's email" in issue.hint


def test_single_json_objects_import() -> None:
    import json

    text, _ = convert_preloop(json.dumps({**SEED_TOOL, "approval_policy_id": None, "approval_required": False}))
    assert decide(load_policy(text), "deploy_production", {"environment": "production"},
                  server="external_mcp_server").action == "allow"
    policy_only, _ = convert_preloop(json.dumps(SEED_POLICY))
    assert load_policy(policy_only).approval_policy("Production Deployments") is not None


def test_convert_rejects_non_mapping() -> None:
    with pytest.raises(PolicyError) as info:
        convert_preloop("- a\n- b\n", source="x.yaml")
    assert info.value.issues[0].source == "x.yaml"
