"""Property tests: nothing but PolicyError escapes the loader, nothing escapes the evaluator."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import CallContext, PolicyError, load_policy
from tests.unit.policies.helpers import EXAMPLES, WEDNESDAY_NOON

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
words = st.sampled_from([
    "version", "tools", "name", "rules", "when", "action", "approval_policies", "approvers", "teams", "quorum",
    "timeout", "escalation", "after", "to", "defaults", "unknown_tools", "tests", "expect", "tool", "args",
    "servers", "command", "url", "deny", "allow", "require_approval", "args.amount > 1", "ops", "a@b.io", "10m",
    "time.hour < 3", "x ==", "justification", "required", "risk", "high", "server", "at", "agent",
])
doc_values = st.recursive(
    words | json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(words, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(words, doc_values, max_size=6))
def test_random_documents_load_or_raise_policy_error_with_locations(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    error: PolicyError | None = None
    try:
        policy = load_policy(text, source="random.yaml")
    except PolicyError as exc:
        error = exc
    if error is None:
        policy.evaluate(CallContext(tool="tool", args={"amount": 3}, now=WEDNESDAY_NOON))
        return
    assert error.issues, "an error always lists at least one issue"
    for issue in error.issues:
        assert issue.source == "random.yaml" and issue.line >= 1 and issue.column >= 1 and issue.message


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_never_crashes_the_loader(text: str) -> None:
    issues = []
    try:
        load_policy(text, source="t.yaml")
    except PolicyError as exc:
        issues = exc.issues
    assert all(i.line >= 1 and i.column >= 1 for i in issues)


ALL_EXAMPLES = [load_policy((EXAMPLES / f).read_text()) for f in
                ("demo.yaml", "amount.yaml", "time_based.yaml", "conditional.yaml", "escalation.yaml")]
TOOLS = ["deploy_production", "refund", "scale_service", "deploy", "drop_table", "rollback", "zzz", ""]


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, len(ALL_EXAMPLES) - 1),
    tool=st.sampled_from(TOOLS) | st.text(max_size=10),
    server=st.none() | st.sampled_from(["demo", "other"]),
    args=st.dictionaries(st.sampled_from(["amount", "environment", "replicas", "x"]) | st.text(max_size=5),
                         json_values, max_size=4),
    justification=st.none() | st.text(max_size=10),
    now=st.none() | st.datetimes(timezones=st.timezones()),
)
def test_random_calls_always_get_a_decision(which: int, tool: str, server: str | None, args: dict[str, Any],
                                            justification: str | None, now: Any) -> None:
    decision = ALL_EXAMPLES[which].evaluate(
        CallContext(tool=tool, server=server, args=args, justification=justification, now=now))
    assert decision.action in ("allow", "deny", "require_approval")
    assert decision.reason
    if decision.error:
        assert decision.action != "allow"  # fail closed
    if decision.action == "require_approval":
        assert decision.approval_policy is not None
    decision.to_dict()


BROKEN = [
    ("tools:\n  - {name: t, action: maybe}\n", 2),
    ("approval_policies:\n  - {name: p, approvers: [x@y.z], quorum: 0}\n", 2),
    ("tools:\n  - {name: t, when: 'nope > 1', action: deny}\n", 2),
]


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(BROKEN) - 1), padding=st.integers(0, 5))
def test_invalid_documents_point_at_the_broken_line(index: int, padding: int) -> None:
    text, line = BROKEN[index]
    with pytest.raises(PolicyError) as info:
        load_policy("\n" * padding + text + "defaults: {unknown_tools: deny}\n", source="b.yaml")
    assert info.value.issues[0].line == line + padding
