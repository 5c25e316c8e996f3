"""Evaluation order, defaults, fail-closed CEL errors, decision shape and canonical forms."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from policies import AgentInfo, CallContext, arguments_hash, load_policy
from policies.canonical import export_policy
from policies.diff import diff_policies
from tests.unit.policies.helpers import AP, EXAMPLES, decide

ORDERED = AP + """
tools:
  - name: "delete_*"
    action: deny
    message: no deletes
  - name: delete_cache
    action: allow
  - name: deploy
    server: infra
    action: require_approval
  - name: deploy
    action: allow
  - name: "*_readonly"
    rules:
      - {when: "args.n > 5", action: require_approval, risk: low}
defaults:
  unknown_tools: deny
  no_match: allow
"""


def test_tool_order_decides_between_glob_and_exact() -> None:
    policy = load_policy(ORDERED)
    d = decide(policy, "delete_cache")
    assert d.action == "deny" and d.rule is not None and d.rule.tool == "delete_*"
    assert d.message == "no deletes"


def test_server_filter() -> None:
    policy = load_policy(ORDERED)
    assert decide(policy, "deploy", server="infra").action == "require_approval"
    assert decide(policy, "deploy", server="other").action == "allow"
    assert decide(policy, "deploy").action == "allow"


def test_defaults_unknown_and_no_match() -> None:
    policy = load_policy(ORDERED)
    unknown = decide(policy, "format_disk")
    assert unknown.action == "deny" and unknown.rule is None and "unknown_tools" in unknown.reason
    miss = decide(policy, "list_readonly", {"n": 1})
    assert miss.action == "allow" and miss.rule is None and "no_match" in miss.reason
    hit = decide(policy, "list_readonly", {"n": 6})
    assert hit.action == "require_approval" and hit.risk == "low"
    assert hit.approval_policy is not None and hit.approval_policy.name == "ops"  # the default


def test_unknown_tools_require_approval_uses_default_policy() -> None:
    policy = load_policy(AP + "defaults: {unknown_tools: require_approval}\n")
    d = decide(policy, "anything")
    assert d.action == "require_approval" and d.approval_policy is not None and d.approval_policy.name == "ops"


def test_first_match_wins_with_later_rules_unreached() -> None:
    policy = load_policy(AP + """
tools:
  - name: t
    rules:
      - {when: "args.a > 1", action: deny}
      - {when: "args.a > 0", action: require_approval}
      - {action: allow}
      - {action: deny}
""")
    assert [decide(policy, "t", {"a": a}).action for a in (2, 1, 0)] == ["deny", "require_approval", "allow"]


FAILING = AP + """
tools:
  - name: t
    rules:
      - {when: "args.amount > 100", action: ALLOW_OR_NOT}
      - {action: allow}
defaults: {unknown_tools: deny}
"""


@pytest.mark.parametrize(
    ("action", "args", "expected"),
    [
        ("require_approval", {}, "require_approval"),  # missing key
        ("deny", {}, "deny"),
        ("allow", {}, "require_approval"),  # never allow on error: held for the default policy
        ("allow", {"amount": "lots"}, "require_approval"),  # wrong type
        ("require_approval", {"amount": "lots"}, "require_approval"),
    ],
)
def test_cel_runtime_errors_fail_closed(action: str, args: dict[str, object], expected: str) -> None:
    policy = load_policy(FAILING.replace("ALLOW_OR_NOT", action))
    d = decide(policy, "t", args)
    assert d.action == expected
    assert d.error and "failing closed" in d.reason and d.rule is not None and d.rule.index == 0


def test_allow_rule_error_without_any_approval_policy_denies() -> None:
    policy = load_policy("tools:\n  - name: t\n    rules:\n      - {when: 'args.x == 1', action: allow}\n"
                         "defaults: {unknown_tools: deny}\n")
    d = decide(policy, "t", {})
    assert d.action == "deny" and d.error


def test_non_boolean_condition_fails_closed() -> None:
    policy = load_policy(AP + "tools:\n  - {name: t, when: 'args.x', action: allow}\n")
    d = decide(policy, "t", {"x": 3})
    assert d.action == "require_approval" and d.error is not None and "not a boolean" in d.error


def test_missing_clock_fails_closed() -> None:
    policy = load_policy(AP + "tools:\n  - {name: t, when: 'time.hour > 3', action: allow}\n")
    d = policy.evaluate(CallContext(tool="t", args={}))
    assert d.action == "require_approval" and d.error is not None and "no clock" in d.error


def test_variables_tool_server_agent_justification_now() -> None:
    policy = load_policy(AP + """
tools:
  - name: "*"
    rules:
      - when: "tool == 'x' && server == 's1' && agent.name == 'ci' && agent.labels['env'] == 'prod'"
        action: deny
      - when: "justification.contains('urgent') && agent.id == 'k_9'"
        action: allow
      - when: "now > timestamp('2030-01-01T00:00:00Z') && time.weekday == 'tuesday'"
        action: deny
      - when: "time.weekday_number == 3 && time.date == '2025-01-08' && !time.is_weekend && time.minute == 0"
        action: allow
      - action: require_approval
""")
    ci = AgentInfo(name="ci", id="k_1", labels={"env": "prod"})
    assert decide(policy, "x", server="s1", agent=ci).action == "deny"
    assert decide(policy, "x", server="s2", agent=ci).action == "allow"  # the Wednesday rule
    thursday = datetime(2025, 1, 9, 12, tzinfo=UTC)
    assert decide(policy, "x", server="s2", agent=ci, now=thursday).action == "require_approval"
    urgent = decide(policy, "y", agent=AgentInfo(id="k_9"), justification="urgent fix", now=thursday)
    assert urgent.action == "allow"
    tuesday_2030 = datetime(2030, 1, 1, 9, tzinfo=UTC)
    assert decide(policy, "y", now=tuesday_2030).action == "deny"
    assert decide(policy, "y", agent=None, now=thursday).action == "require_approval"


def test_fast_and_slow_paths_agree() -> None:
    # has() and size(args) disable flattening; each slow twin adds an always-true guard using them
    conditions = [
        ("args.a > 3 && args.b == 'x'", "(has(args.a) || !has(args.a)) && args.a > 3 && args.b == 'x'"),
        ("args.tags.exists(t, t == 'p')", "size(args) >= 0 && args.tags.exists(t, t == 'p')"),
    ]
    samples = [{"a": a, "b": b, "tags": tags} for a in (1, 5) for b in ("x", "y") for tags in ([], ["p"])]
    samples += [{"a": "str", "b": "x", "tags": ["p"]}, {"b": "x"}, {}]
    for fast, slow in conditions:
        fast_policy = load_policy(AP + f'tools:\n  - name: t\n    rules:\n      - {{when: "{fast}", action: deny}}\n'
                                  "      - {when: \"args.a == 1\", action: allow}\n")
        slow_policy = load_policy(AP + f'tools:\n  - name: t\n    rules:\n      - {{when: "{slow}", action: deny}}\n'
                                  "      - {when: \"args.a == 1\", action: allow}\n")
        assert fast_policy._plans[0].flat is not None
        assert slow_policy._plans[0].flat is None
        for args in samples:
            f, s = decide(fast_policy, "t", args), decide(slow_policy, "t", args)
            assert (f.action, f.rule.index if f.rule else None, bool(f.error)) == (
                s.action, s.rule.index if s.rule else None, bool(s.error)), args


def test_decision_to_dict_shape() -> None:
    policy = load_policy((EXAMPLES / "escalation.yaml").read_text())
    data = decide(policy, "restart_service", {"service": "api"}).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["decision"] == "require_approval"
    assert data["rule"]["tool"] == "restart_service" and data["rule"]["index"] == 0
    ap = data["approval_policy"]
    assert {"approvers", "teams", "quorum", "timeout_seconds", "escalation"} <= set(ap)
    assert ap["escalation"][1] == {"after_seconds": 1800, "users": ["cto@example.com"], "teams": ["vp_engineering"]}
    assert data["risk"] == "medium" and data["reason"]
    allowed = decide(policy, "list_things").to_dict()
    assert allowed["decision"] == "allow" and allowed["approval_policy"] is None and allowed["rule"] is None


def test_arguments_hash_is_canonical() -> None:
    a = {"b": 1, "a": [1, {"y": "é", "x": None}]}
    b = {"a": [1, {"x": None, "y": "é"}], "b": 1}
    expected = hashlib.sha256('{"a":[1,{"x":null,"y":"é"}],"b":1}'.encode()).hexdigest()
    assert arguments_hash(a) == arguments_hash(b) == expected
    assert arguments_hash({"b": 2}) != arguments_hash({"b": 1})


@pytest.mark.parametrize(
    "name", ["blanket", "conditional", "amount", "time_based", "team_quorum", "escalation", "demo"]
)
def test_canonical_export_round_trips(name: str) -> None:
    policy = load_policy((EXAMPLES / f"{name}.yaml").read_text())
    again = load_policy(export_policy(policy, "yaml"))
    assert again.to_dict() == policy.to_dict()
    assert again.version_hash == policy.version_hash
    assert json.loads(export_policy(policy, "json")) == policy.to_dict()


def test_version_hash_ignores_formatting_but_not_meaning() -> None:
    a = load_policy(AP + "tools:\n  - {name: t, action: deny}\n")
    b = load_policy(AP + "# comment\ntools:\n  - name: t\n    rules:\n      - action: deny\n")
    c = load_policy(AP + "tools:\n  - {name: t, action: allow}\n")
    assert a.version_hash == b.version_hash != c.version_hash


def test_diff_policies() -> None:
    old = AP + "tools:\n  - {name: t, action: deny}\n"
    assert diff_policies(old, AP + "# same\ntools:\n  - name: t\n    action: deny\n") == ""
    text = diff_policies(old, AP + "tools:\n  - {name: t, action: allow}\n")
    assert "-  - action: deny" in text and "+  - action: allow" in text
    assert text.startswith("--- active\n+++ new\n")
    assert "+version: '1'" in diff_policies(None, old)
    assert "+version: '1'" in diff_policies("", old)


def test_cache_never_grows_unbounded() -> None:
    policy = load_policy(ORDERED)
    for i in range(10000):
        decide(policy, f"tool_{i}")
    assert len(policy._cache) <= 4096
