"""Every class of bad input is rejected with file, line, column, the value and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicyError, load_policy, load_policy_file
from tests.unit.policies.helpers import AP, issues_of, only_issue


def test_unknown_field_with_suggestion() -> None:
    issue = only_issue(AP + "tools:\n  - name: deploy\n    acton: deny\n")
    assert (issue.source, issue.line, issue.column) == ("bad.yaml", 8, 5)
    assert issue.message == "unknown field 'acton'" and issue.value == "acton"
    assert issue.hint == "did you mean 'action'?"
    assert issue.path == "tools[0].acton"


def test_unknown_top_level_field() -> None:
    issue = only_issue("version: '1'\npolicies: []\ndefaults: {unknown_tools: deny}\n")
    assert (issue.line, issue.column, issue.value) == (2, 1, "policies")
    assert "unknown field" in issue.message and issue.hint


def test_wrong_type() -> None:
    issue = only_issue(AP.replace("timeout: 10m", "timeout: 10m\n    quorum: two"))
    assert (issue.line, issue.column, issue.value) == (6, 13, "two")
    assert "must be an integer" in issue.message and "whole number" in issue.hint


def test_wrong_choice() -> None:
    issue = only_issue(AP + "tools:\n  - {name: deploy, action: approve}\n")
    assert (issue.line, issue.value) == (7, "approve")
    assert "must be one of allow, deny, require_approval" in issue.message
    assert issue.hint  # suggests the closest action


def test_missing_approval_policy_reference() -> None:
    issue = only_issue(AP + "tools:\n  - name: deploy\n    rules:\n      - {action: require_approval, "
                       "approval_policy: opps}\n")
    assert (issue.line, issue.value) == (9, "opps")
    assert issue.message == "approval policy 'opps' is not defined"
    assert issue.hint == "did you mean 'ops'?"


def test_quorum_larger_than_approvers() -> None:
    text = "approval_policies:\n  - name: two\n    approvers: [a@x.io]\n    quorum: 2\n"
    issue = only_issue(text)
    assert (issue.line, issue.column, issue.value) == (4, 13, 2)
    assert "approver pool (1)" in issue.message and "lower quorum to at most 1" in issue.hint


def test_quorum_with_teams_is_only_checked_when_sizes_are_known() -> None:
    text = "approval_policies:\n  - {name: t, approvers: [a@x.io], teams: [sre], quorum: 4}\n"
    load_policy(text)  # team of unknown size: any quorum may be reachable
    load_policy(text, team_sizes={"sre": 3})
    issue = only_issue(text, team_sizes={"sre": 2})
    assert issue.value == 4 and "pool (3)" in issue.message


def test_cel_syntax_error_points_into_the_expression() -> None:
    text = AP + 'tools:\n  - name: refund\n    rules:\n      - when: "args.amount >"\n        action: deny\n'
    issue = only_issue(text)
    assert issue.line == 9
    # the string starts at column 15 (its quote); the parser complains at offset 14 inside
    assert issue.column == 15 + 14
    assert issue.message.startswith("CEL syntax error") and issue.value == "args.amount >"
    assert "CEL" in issue.hint


def test_cel_unknown_variable() -> None:
    text = AP + "tools:\n  - name: refund\n    rules:\n      - when: amount > 100\n        action: deny\n"
    issue = only_issue(text)
    assert (issue.line, issue.column, issue.value) == (9, 15, "amount > 100")
    assert issue.message == "CEL expression uses unknown variable 'amount'"
    assert "did you mean args.amount?" in issue.hint


def test_cel_comprehension_variables_are_not_unknown() -> None:
    text = AP + "tools:\n  - name: t\n    rules:\n      - {when: 'args.items.exists(i, i > 3)', action: deny}\n"
    load_policy(text)


def test_time_field_typo() -> None:
    issue = only_issue(AP + "tools:\n  - {name: t, when: 'time.hours > 3', action: deny}\n")
    assert issue.message == "'time' has no field 'hours'" and "hour" in issue.hint
    assert (issue.line, issue.column) == (7, 27)  # the "h" of "hours"


def test_yaml_syntax_error_has_location() -> None:
    issue = only_issue("tools:\n  - name: [deploy\n")
    assert issue.line >= 2 and issue.column >= 1 and issue.message.startswith("YAML syntax error")


def test_all_issues_reported_at_once_and_nothing_applied() -> None:
    text = (
        "version: '2'\n"
        "approval_policies:\n  - {name: p, approvers: [not-an-email], timeout: soon}\n"
        "tools:\n  - {name: a, action: nope}\n  - {name: b, when: 'x == 1', action: deny}\n"
        "defaults: {unknown_tools: maybe}\n"
    )
    found = issues_of(text)
    messages = " | ".join(i.message for i in found)
    assert len(found) >= 6, messages
    for fragment in ("unsupported policy version", "not an email", "invalid duration", "must be one of",
                     "unknown variable 'x'"):
        assert fragment in messages
    assert all(i.line >= 1 and i.column >= 1 and i.source == "bad.yaml" for i in found)
    assert [i.line for i in found] == sorted(i.line for i in found)


def test_escalation_must_be_ordered_and_before_timeout() -> None:
    text = ("approval_policies:\n  - name: p\n    approvers: [a@x.io]\n    timeout: 30m\n    escalation:\n"
            "      - {after: 20m, to: [leads]}\n      - {after: 10m, to: [cto@x.io]}\n"
            "      - {after: 1h, to: [cto@x.io]}\n")
    found = issues_of(text)
    assert [(i.line, i.value) for i in found] == [(7, "10m"), (8, "1h")]
    assert "later than the previous" in found[0].message and "at or after the timeout" in found[1].message


def test_server_reference_and_shape() -> None:
    text = ("servers:\n  - {name: infra, command: [python, -m, infra]}\n  - {name: both, command: [x], url: 'http://h'}\n"
            + AP + "tools:\n  - {name: t, server: infar, action: deny}\n")
    found = issues_of(text)
    assert len(found) == 2
    assert found[0].line == 3 and "exactly one of 'command'" in found[0].message
    assert found[1].value == "infar" and found[1].hint == "did you mean 'infra'?"


def test_require_approval_without_any_approval_policy() -> None:
    issue = only_issue("tools:\n  - {name: t, action: require_approval}\ndefaults: {unknown_tools: deny}\n")
    assert issue.line == 2 and "needs an approval policy" in issue.message


def test_empty_and_non_mapping_documents() -> None:
    assert only_issue("").message == "the policy is empty"
    issue = only_issue("- just\n- a list\n")
    assert (issue.line, issue.column) == (1, 1) and "must be a mapping" in issue.message


def test_load_policy_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("tools: 3\n")
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.issues[0].source == str(path)
    assert str(path) + ":1:8:" in str(info.value)


def test_issue_format_line() -> None:
    issue = only_issue(AP + "tools:\n  - {name: d, action: deny, risk: extreme}\n")
    assert issue.format().startswith("bad.yaml:7:35:")
    assert "(value: 'extreme')" in issue.format() and "hint:" in issue.format()


@pytest.mark.parametrize("value", ["10x", "-5", "1m1h", "", "true"])
def test_bad_durations(value: str) -> None:
    issue = only_issue(AP.replace("timeout: 10m", f"timeout: '{value}'"))
    assert issue.path == "approval_policies[0].timeout"


@pytest.mark.parametrize(("value", "seconds"), [("600", 600), ("'10m'", 600), ("'1h30m'", 5400), ("'2d'", 172800)])
def test_good_durations(value: str, seconds: int) -> None:
    policy = load_policy(AP.replace("timeout: 10m", f"timeout: {value}"))
    ap = policy.approval_policy("ops")
    assert ap is not None and ap.timeout_seconds == seconds


def test_rules_not_a_list_is_one_error() -> None:
    issue = only_issue(AP + "tools:\n  - name: deploy\n    rules: 5\n")
    assert issue.path == "tools[0].rules" and "must be a list" in issue.message


def test_empty_rules_is_one_error() -> None:
    issue = only_issue(AP + "tools:\n  - name: deploy\n    rules: []\n")
    assert issue.message == "a tool needs at least one rule"
