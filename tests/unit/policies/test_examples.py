"""Every strategy of the seed through the ready examples in policies/examples/."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policies import AgentInfo, load_policy_file
from policies.testing import run_policy_tests
from tests.unit.policies.helpers import EXAMPLES, decide

STRATEGIES = ["blanket", "conditional", "amount", "time_based", "team_quorum", "escalation", "demo"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_example_loads_and_its_own_tests_pass(name: str) -> None:
    policy = load_policy_file(EXAMPLES / f"{name}.yaml")
    results = run_policy_tests(policy)
    assert len(results) >= 3
    failures = [(r.label, r.problems) for r in results if not r.passed]
    assert failures == []


def test_every_example_file_is_covered() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(STRATEGIES)


def test_blanket_requires_approval_for_every_call_and_globs_match() -> None:
    policy = load_policy_file(EXAMPLES / "blanket.yaml")
    for args in ({}, {"version": "1"}, {"anything": [1, 2]}):
        assert decide(policy, "deploy_production", args).action == "require_approval"
    d = decide(policy, "delete_user", {"id": 3})
    assert d.action == "require_approval" and d.rule is not None and d.rule.tool == "delete_*"
    assert d.risk == "critical"
    assert decide(policy, "undelete_user").action == "deny"  # glob anchors at the start


def test_conditional_first_match_wins() -> None:
    policy = load_policy_file(EXAMPLES / "conditional.yaml")
    prod = decide(policy, "deploy", {"environment": "production"})
    assert (prod.action, prod.rule.index if prod.rule else None) == ("require_approval", 0)
    assert prod.approval_policy is not None and prod.approval_policy.name == "prod-deploys"
    assert decide(policy, "deploy", {"environment": "dev"}).action == "allow"
    denied = decide(policy, "deploy", {"environment": "mars"})
    assert denied.action == "deny" and denied.message is not None and "Unknown environment" in denied.message


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(0, "allow"), (100, "allow"), (101, "require_approval"), (99.99, "allow"), (10000, "require_approval"),
     (10001, "deny")],
)
def test_amount_thresholds(amount: float, expected: str) -> None:
    policy = load_policy_file(EXAMPLES / "amount.yaml")
    assert decide(policy, "refund", {"amount": amount}).action == expected


def test_time_based_uses_the_policy_timezone() -> None:
    policy = load_policy_file(EXAMPLES / "time_based.yaml")
    # Friday 23:30 UTC is Saturday 00:30 in Berlin: a weekend there.
    d = decide(policy, "deploy", now=datetime(2025, 1, 10, 23, 30, tzinfo=UTC))
    assert d.action == "require_approval" and d.rule is not None and d.rule.index == 0
    # Friday 16:30 UTC is 17:30 in Berlin: still office hours.
    assert decide(policy, "deploy", now=datetime(2025, 1, 10, 16, 30, tzinfo=UTC)).action == "allow"
    # Friday 17:30 UTC is 18:30 in Berlin: after hours.
    d = decide(policy, "deploy", now=datetime(2025, 1, 10, 17, 30, tzinfo=UTC))
    assert d.action == "require_approval" and d.rule is not None and d.rule.index == 1
    # Summer time: 07:30 UTC is 09:30 CEST.
    assert decide(policy, "deploy", now=datetime(2025, 7, 9, 7, 30, tzinfo=UTC)).action == "allow"


def test_team_quorum_policy_fields() -> None:
    policy = load_policy_file(EXAMPLES / "team_quorum.yaml")
    two = policy.approval_policy("two-of-five")
    assert two is not None
    assert (len(two.approvers), two.quorum, two.decline_mode, two.require_passkey) == (
        5, 2, "when_quorum_unreachable", True)
    mixed = decide(policy, "drop_table", {"database": "production"}).approval_policy
    assert mixed is not None
    assert (mixed.approvers, mixed.teams, mixed.quorum) == (["ciso@example.com"], ["database", "security"], 3)


def test_team_quorum_checked_against_real_team_sizes() -> None:
    text = (EXAMPLES / "team_quorum.yaml").read_text()
    from policies import PolicyError, load_policy

    load_policy(text, team_sizes={"database": 2, "security": 1})  # 1 + 2 + 1 = 4 >= 3
    with pytest.raises(PolicyError) as info:
        load_policy(text, source="tq.yaml", team_sizes={"database": 1, "security": 0})
    issue = info.value.issues[0]
    assert "quorum 3 is larger than the approver pool (2)" in issue.message
    assert (issue.source, issue.line, issue.column, issue.value) == ("tq.yaml", 19, 13, 3)
    assert issue.path == "approval_policies[2].quorum" and "lower quorum" in issue.hint


def test_escalation_levels_users_and_teams() -> None:
    policy = load_policy_file(EXAMPLES / "escalation.yaml")
    ap = policy.approval_policy("incident")
    assert ap is not None
    assert [level.to_dict() for level in ap.escalation] == [
        {"after_seconds": 600, "users": [], "teams": ["sre_leads"]},
        {"after_seconds": 1800, "users": ["cto@example.com"], "teams": ["vp_engineering"]},
    ]
    assert (ap.timeout_seconds, ap.on_timeout, ap.channels) == (3600, "decline", ["push", "email", "slack"])


def test_justification_required_per_tool() -> None:
    policy = load_policy_file(EXAMPLES / "escalation.yaml")
    assert policy.justification_for("rollback") == "required"
    assert policy.justification_for("restart_service") == "optional"
    missing = decide(policy, "rollback", {"to": "v1"})
    assert missing.action == "deny" and "justification" in missing.reason
    assert decide(policy, "rollback", {"to": "v1"}, justification="   ").action == "deny"
    given = decide(policy, "rollback", {"to": "v1"}, justification="health checks fail")
    assert given.action == "require_approval"


def test_demo_policy_shape() -> None:
    policy = load_policy_file(EXAMPLES / "demo.yaml")
    assert [s.to_dict() for s in policy.servers] == [{"name": "demo", "command": ["preloop", "demo-upstream"]}]
    assert {t.name for t in policy.tools} == {"deploy_production", "drop_table", "refund", "scale_service",
                                              "read_logs"}
    ap = policy.approval_policy("prod-deploys")
    assert ap is not None and ap.approvers == ["admin@demo.preloop.dev"] and ap.teams == ["sre"]
    agent = AgentInfo(name="claude", id="k_1", labels={"team": "web"})
    d = decide(policy, "read_logs", {"service": "api"}, server="demo", agent=agent)
    assert d.action == "allow"
    # the server filter: the same tool on another server is unknown
    assert decide(policy, "read_logs", {}, server="other").rule is None
