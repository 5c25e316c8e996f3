"""Gradual autonomy: how each tool rule's calls went over the last 30 days, and what to relax or tighten.

Suggestions are policy diffs for a person to review in the editor; nothing here applies anything.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from backend.errors import ValidationFailed
from backend.policy_store import ruleedit
from backend.policy_store.replay import APPROVED, WINDOW_DAYS, RecordedCall, recorded_calls
from backend.policy_store.service import active_row
from policies.diff import diff_policies

#: A rule needs this many decided requests, all approved, before "relax" is suggested.
RELAX_MIN_REQUESTS = 5
#: "Tighten" when at least this share of a rule's decided requests were declined (and n >= RELAX_MIN_REQUESTS).
TIGHTEN_DECLINE_RATE = 0.5
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DeclineReason(msgspec.Struct):
    reason: str
    count: int


class Suggestion(msgspec.Struct):
    """A policy change to review in the editor (never applied without an admin)."""

    id: str
    kind: str  # relax | tighten
    summary: str
    source: str  # the whole policy with the change
    diff: str  # unified diff of the canonical YAML, active -> suggested


class RuleStats(msgspec.Struct):
    tool: str
    server: str | None
    rule_index: int | None  # 0-based; None for calls decided by the defaults
    action: str
    when: str | None
    description: str | None
    calls: int  # every recorded call this rule decided (held ones included)
    requests: int  # approval requests
    approved: int
    declined: int
    expired: int
    pending: int
    approval_rate: float | None  # approved / decided; None before any decision
    median_seconds_to_decision: float | None
    declines: list[DeclineReason]
    suggestion: Suggestion | None


class AutonomyReport(msgspec.Struct):
    days: int
    since: str
    policy_version: int | None
    relax_min_requests: int
    tighten_decline_rate: float
    limited: bool  # more recorded calls than one report reads (MAX_RECORDS per source): the newest count
    rules: list[RuleStats]


@dataclass
class _Group:
    tool: str
    server: str | None
    index: int | None
    action: str
    when: str | None
    description: str | None
    calls: list[RecordedCall] = field(default_factory=list)


def _key(call: RecordedCall) -> tuple[str, str | None, int | None]:
    rule = call.rule
    if "index" in rule and rule.get("tool") is not None:
        return str(rule["tool"]), rule.get("server") or None, int(rule["index"])
    return call.tool, None, None


def _numeric_range(calls: list[RecordedCall]) -> tuple[str, float] | None:
    """A top-level numeric argument every call had, and the largest value approved."""
    keys: set[str] | None = None
    for call in calls:
        numbers = {k for k, v in (call.args or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        numbers = {k for k in numbers if _IDENT.match(k)}
        keys = numbers if keys is None else keys & numbers
    if not keys:
        return None
    key = sorted(keys)[0]
    return key, max(float((call.args or {})[key]) for call in calls)


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _relax(group: _Group, requests: list[RecordedCall], source: str) -> tuple[str, str]:
    current = ruleedit.rule_at(source, group.tool, group.server, group.index or 0) or {}
    found = _numeric_range(requests)
    n = len(requests)
    if found is not None:
        key, top = found
        bound = f"double(args.{key}) <= {float(top)!r}"
        when = f"({group.when}) && {bound}" if group.when else bound
        new = {"when": when, "action": "allow",
               "description": f"relaxed: {n} of {n} approved in {WINDOW_DAYS} days, all with {key} <= {_number(top)}"}
        return (ruleedit.insert_rule(source, group.tool, group.server, group.index or 0, new),
                f"Allow {group.tool} without approval when {key} <= {_number(top)} "
                f"(all {n} requests were approved, the largest {key} was {_number(top)}).")
    new = {k: v for k, v in current.items() if k not in ("approval_policy", "action")}
    new["action"] = "allow"
    new["description"] = f"relaxed: {n} of {n} approved in {WINDOW_DAYS} days"
    return (ruleedit.replace_rule(source, group.tool, group.server, group.index or 0, new),
            f"Allow {group.tool} without approval (all {n} requests were approved).")


def _tighten(group: _Group, requests: list[RecordedCall], declined: int, reasons: list[DeclineReason],
             source: str) -> tuple[str, str]:
    current = ruleedit.rule_at(source, group.tool, group.server, group.index or 0) or {}
    new = {k: v for k, v in current.items() if k not in ("approval_policy", "action", "message")}
    new["action"] = "deny"
    why = f" Most common reason: {reasons[0].reason}" if reasons else ""
    new["message"] = f"Declined {declined} of {len(requests)} times by approvers.{why}"
    return (ruleedit.replace_rule(source, group.tool, group.server, group.index or 0, new),
            f"Deny {group.tool} outright ({declined} of {len(requests)} requests were declined).")


def _current_matches(source: str, group: _Group) -> bool:
    """Suggest only for a rule that still says what it said when the calls were decided."""
    if group.index is None:
        return False
    try:
        rule = ruleedit.rule_at(source, group.tool, group.server, group.index)
    except ValidationFailed:  # an unreadable active source gets no suggestions; the stats stay
        return False
    return rule is not None and rule.get("action") == group.action and rule.get("when") == group.when


def _stats(group: _Group, source: str | None) -> RuleStats:
    requests = [c for c in group.calls if c.origin == "request"]
    approved = sum(1 for c in requests if c.status in APPROVED)
    declined = sum(1 for c in requests if c.status == "declined")
    expired = sum(1 for c in requests if c.status == "expired")
    pending = sum(1 for c in requests if c.status == "pending")
    decided = approved + declined + expired
    waits = [(c.decided_at - c.at).total_seconds() for c in requests
             if c.decided_at is not None and c.status != "pending"]
    counted = Counter(reason for c in requests if c.status == "declined" for reason in (c.decline_reasons or [""]))
    reasons = [DeclineReason(reason or "(no reason given)", n) for reason, n in counted.most_common()]
    suggestion = None
    if source and decided >= RELAX_MIN_REQUESTS and _current_matches(source, group):
        made: tuple[str, str] | None = None
        kind = ""
        finished = [c for c in requests if c.status != "pending"]
        if approved == decided:
            kind, made = "relax", _relax(group, [c for c in finished if c.status in APPROVED], source)
        elif declined / decided >= TIGHTEN_DECLINE_RATE:
            kind, made = "tighten", _tighten(group, finished, declined, reasons, source)
        if made is not None:
            new_source, summary = made
            suggestion = Suggestion(
                id=f"{kind}:{group.tool}:{group.server or ''}:{group.index}", kind=kind, summary=summary,
                source=new_source, diff=diff_policies(source, new_source, old_name="active", new_name="suggested"),
            )
    return RuleStats(
        tool=group.tool, server=group.server, rule_index=group.index, action=group.action, when=group.when,
        description=group.description, calls=len(group.calls), requests=len(requests), approved=approved,
        declined=declined, expired=expired, pending=pending,
        approval_rate=round(approved / decided, 4) if decided else None,
        median_seconds_to_decision=round(statistics.median(waits), 1) if waits else None,
        declines=reasons, suggestion=suggestion,
    )


async def report(org_id: uuid.UUID, *, now: datetime | None = None) -> AutonomyReport:
    moment = now or datetime.now(UTC)
    calls, limited = await recorded_calls(org_id, days=WINDOW_DAYS, now=moment)
    groups: dict[tuple[str, str | None, int | None], _Group] = {}
    for call in calls:
        key = _key(call)
        if key not in groups:
            rule = call.rule
            groups[key] = _Group(tool=key[0], server=key[1], index=key[2],
                                 action=str(rule.get("action") or call.decision), when=rule.get("when"),
                                 description=rule.get("description"))
        groups[key].calls.append(call)
    row = await active_row(org_id)
    source = str(row["source"]) if row else None
    rules = [_stats(group, source) for group in groups.values()]
    rules.sort(key=lambda r: (r.suggestion is None, r.tool, r.server or "",
                              -1 if r.rule_index is None else r.rule_index))
    return AutonomyReport(
        days=WINDOW_DAYS, since=(moment.replace(microsecond=0) - timedelta(days=WINDOW_DAYS)).isoformat(),
        policy_version=row["version"] if row else None, relax_min_requests=RELAX_MIN_REQUESTS,
        tighten_decline_rate=TIGHTEN_DECLINE_RATE, limited=limited, rules=rules,
    )


async def suggestion(org_id: uuid.UUID, suggestion_id: str) -> Suggestion | None:
    for rule in (await report(org_id)).rules:
        if rule.suggestion is not None and rule.suggestion.id == suggestion_id:
            return rule.suggestion
    return None
