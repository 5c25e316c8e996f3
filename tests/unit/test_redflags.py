"""The red-flag rules on their own: history in, flags with one-line reasons out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from backend.approvals.redflags import History, compute, robust_z


def _row(arguments: dict[str, Any], hour: int = 12, **extra: Any) -> dict[str, Any]:
    return {"id": "r1", "tool": "deploy", "agent_name": "ci-bot", "arguments": arguments,
            "arguments_hash": "h1", "created_at": datetime(2026, 11, 30, hour, 5, tzinfo=UTC), **extra}


def _codes(row: dict[str, Any], history: History) -> list[str]:
    return [f.code for f in compute(row, history)]


def _seen(**values: Any) -> History:
    return History(earlier_by_agent=1, **values)


def test_first_call_of_a_tool_by_an_agent() -> None:
    [flag] = compute(_row({}), History())
    assert flag.code == "first_call" and flag.why == "ci-bot has never called deploy before"
    assert _codes(_row({}), _seen()) == []
    assert _codes(_row({}), History(calls_reported_by_agent=1)) == []


def test_outside_the_usual_hours() -> None:
    office = [h for h in range(9, 18)] * 2
    [flag] = compute(_row({}, hour=3), _seen(tool_hours=office))
    assert flag.code == "unusual_hour" and "09:00-17:59 UTC" in flag.why and "03:05 UTC" in flag.why
    assert _codes(_row({}, hour=8), _seen(tool_hours=office)) == []  # an hour next to usual ones
    assert _codes(_row({}, hour=3), _seen(tool_hours=office[:9])) == []  # too little history to say


def test_numeric_argument_far_above_usual() -> None:
    past = [{"replicas": n, "spec": {"cpu": 2}} for n in (3, 3, 4, 3, 5, 3, 4)]
    [flag] = compute(_row({"replicas": 300}), _seen(tool_arguments=past))
    assert flag.code == "numeric_outlier"
    assert flag.why == "replicas=300 is far above its usual value for deploy (median 3 over 7 calls in 90 days)"
    assert _codes(_row({"replicas": 5}), _seen(tool_arguments=past)) == []
    assert _codes(_row({"replicas": 1}), _seen(tool_arguments=past)) == []  # below is not flagged
    assert _codes(_row({"spec": {"cpu": 64}}), _seen(tool_arguments=past)) == ["numeric_outlier"]
    assert _codes(_row({"replicas": True}), _seen(tool_arguments=past)) == []  # booleans are not numbers
    assert _codes(_row({"replicas": 300}), _seen(tool_arguments=past[:4])) == []  # too few samples


def test_robust_z_score() -> None:
    assert robust_z(5, [1, 2, 3, 4, 5]) == 0.6745 * 2 / 1
    assert robust_z(3, [3, 3, 3, 3, 3]) == 0
    assert robust_z(4, [3, 3, 3, 3, 3]) == float("inf")
    assert robust_z(10, [3, 3, 3, 3, 9]) > 0  # MAD of 0 falls back to the mean absolute deviation


def test_another_pending_request_for_the_same_target() -> None:
    other = {"arguments": {"env": "staging", "replicas": 2}, "arguments_hash": "h2"}
    same = {"arguments": {"env": "staging", "replicas": 9}, "arguments_hash": "h3"}
    row = _row({"env": "staging", "replicas": 4})
    [flag] = compute(row, _seen(pending_same_tool=[other, same]))
    assert flag.code == "duplicate_pending" and flag.why.startswith("2 other pending deploy request(s)")
    assert "env=staging" in flag.why
    unrelated = {"arguments": {"env": "dev"}, "arguments_hash": "h4"}
    assert _codes(row, _seen(pending_same_tool=[unrelated])) == []
    twin = {"arguments": {"x": 1}, "arguments_hash": "h1"}
    assert _codes(_row({"x": 1}), _seen(pending_same_tool=[twin])) == ["duplicate_pending"]


def test_production_named_in_the_arguments() -> None:
    [flag] = compute(_row({"target": {"hosts": ["web-1", "prod-db-1"]}}), _seen())
    assert flag.code == "production" and "target.hosts[1]='prod-db-1'" in flag.why
    for text in ("PRODUCTION", "env: live", "prd"):
        assert _codes(_row({"where": text}), _seen()) == ["production"]
    for text in ("product catalog", "reproduce", "delivery", "staging"):
        assert _codes(_row({"where": text}), _seen()) == []


def test_agent_with_recent_declines() -> None:
    [flag] = compute(_row({}), _seen(agent_declines=3))
    assert flag.code == "recent_declines" and flag.why == "3 of ci-bot's requests were declined in the last 7 days"
    assert _codes(_row({}), _seen(agent_declines=1)) == []


def test_numbers_extracted_beforehand_give_the_same_flags() -> None:
    """An inbox page hands `compute` the numbers of the tool's earlier calls already extracted
    (`History.tool_numbers`); the flags are the same as from the arguments themselves."""
    from backend.approvals.redflags import numbers

    past = [{"replicas": 3 + n % 3, "spec": {"cpu": 2 + n % 2, "mem": 4}, "name": f"b{n}"} for n in range(12)]
    for arguments in ({"replicas": 300}, {"spec": {"cpu": 64, "mem": 4}}, {"replicas": 4}, {"other": 9}, {}):
        plain = compute(_row(arguments), _seen(tool_arguments=past))
        extracted = compute(_row(arguments), _seen(tool_arguments=past,
                                                   tool_numbers=[list(numbers(a)) for a in past]))
        assert extracted == plain
    assert [f.code for f in compute(_row({"spec": {"cpu": 64, "mem": 4}}), _seen(tool_arguments=past))] == [
        "numeric_outlier"
    ]
