"""`decline_reasons` on approval policies: preset reasons the approver app offers as chips."""

from __future__ import annotations

from policies import load_policy
from policies.canonical import policy_to_dict
from tests.unit.policies.helpers import AP, issues_of, only_issue

WITH = AP.replace("timeout: 10m", "timeout: 10m\n    decline_reasons: [\"Not during a freeze\", ' Wrong environment ']")


def test_reasons_load_into_the_model_and_the_request_snapshot() -> None:
    policy = load_policy(WITH + "tools: []\n")
    ap = policy.approval_policies[0]
    assert ap.decline_reasons == ["Not during a freeze", "Wrong environment"]
    assert ap.to_dict()["decline_reasons"] == ["Not during a freeze", "Wrong environment"]


def test_default_is_no_reasons_and_canonical_form_unchanged() -> None:
    policy = load_policy(AP + "tools: []\n")
    assert policy.approval_policies[0].decline_reasons == []
    assert "decline_reasons" not in policy_to_dict(policy)["approval_policies"][0]
    assert "decline_reasons" in policy_to_dict(load_policy(WITH + "tools: []\n"))["approval_policies"][0]


def test_bad_reasons_are_refused_with_where_and_how() -> None:
    issue = only_issue(AP.replace("timeout: 10m", "timeout: 10m\n    decline_reasons: ['ok', '']") + "tools: []\n")
    assert issue.path == "approval_policies[0].decline_reasons[1]" and "empty" in issue.message
    long = "x" * 201
    issue = only_issue(AP.replace("timeout: 10m", f"timeout: 10m\n    decline_reasons: [ok, {long}]") + "tools: []\n")
    assert issue.path == "approval_policies[0].decline_reasons[1]"
    assert "one line of 1 to 200" in issue.message and issue.hint
    issue = only_issue(AP.replace("timeout: 10m", "timeout: 10m\n    decline_reasons: [a, a]") + "tools: []\n")
    assert "listed twice" in issue.message
    issue = only_issue(AP.replace("timeout: 10m", "timeout: 10m\n    decline_reasons: nope") + "tools: []\n")
    assert issue.path == "approval_policies[0].decline_reasons"
    many = "[" + ", ".join(f"r{i}" for i in range(13)) + "]"
    text = AP.replace("timeout: 10m", f"timeout: 10m\n    decline_reasons: {many}") + "tools: []\n"
    assert "at most 12" in issues_of(text)[0].message
