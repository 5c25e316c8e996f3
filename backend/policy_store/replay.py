"""Recorded calls of the last days, and a dry run: which decisions a draft policy would change.

The calls come from two places: approval requests (every held call) and the gateway's call
records in the audit log (`call.allow`, `call.deny`, `call.granted`). The engine stays pure: this
module turns each record into a `CallContext` (with the time the call was made as `now`) and asks
the draft's compiled `Policy` for its decision.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from backend.accounts.tables import ApiKey
from backend.approvals.tables import ApprovalRequest, Vote
from backend.audit.tables import AuditEvent
from backend.policy_store.service import compile_for_org
from policies import AgentInfo, CallContext

WINDOW_DAYS = 30
#: Upper bound on the records one replay reads (newest first), so a busy org's dry run stays quick.
MAX_RECORDS = 20000
EXAMPLES = 50
APPROVED = frozenset({"approved", "executing", "executed", "failed"})
CALL_KINDS = ("call.allow", "call.deny", "call.granted")


@dataclass
class RecordedCall:
    """One call the hub knows about, with the decision it got at the time."""

    origin: str  # "request" (an approval request) or "call" (a gateway call record)
    id: str
    tool: str
    server: str
    args: dict[str, Any] | None  # None when the record kept only the arguments' hash
    agent_name: str
    agent_labels: dict[str, str]
    justification: str | None
    at: datetime
    decision: str  # allow | deny | require_approval, as decided then
    rule: dict[str, Any] = field(default_factory=dict)
    status: str = ""  # a request's status; "" for call records
    decided_at: datetime | None = None
    decline_reasons: list[str] = field(default_factory=list)


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _keys(org_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = await ApiKey.select(ApiKey.id, ApiKey.name, ApiKey.labels).where(ApiKey.org == org_id).output(
        load_json=True
    )
    return {str(r["id"]): r for r in rows}


async def _decline_reasons(request_ids: list[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for start in range(0, len(request_ids), 500):
        rows = await Vote.select(Vote.request, Vote.reason).where(
            Vote.request.is_in(request_ids[start:start + 500]) & (Vote.decision == "decline")
        )
        for row in rows:
            out.setdefault(str(row["request"]), []).append((row["reason"] or "").strip())
    return out


async def recorded_calls(
    org_id: uuid.UUID, *, days: int = WINDOW_DAYS, now: datetime | None = None
) -> tuple[list[RecordedCall], bool]:
    """Approval requests and gateway call records of the last `days` days, oldest first.

    The second value says whether either source had more than MAX_RECORDS (only the newest were read).
    """
    since = (now or datetime.now(UTC)) - timedelta(days=days)
    keys = await _keys(org_id)
    requests = (
        await ApprovalRequest.select()
        .where((ApprovalRequest.org == org_id) & (ApprovalRequest.created_at >= since))
        .order_by(ApprovalRequest.created_at, ascending=False)
        .limit(MAX_RECORDS)
        .output(load_json=True)
    )
    reasons = await _decline_reasons([r["id"] for r in requests])
    out: list[RecordedCall] = []
    for row in requests:
        key = keys.get(str(row["agent_key"])) if row.get("agent_key") else None
        out.append(RecordedCall(
            origin="request", id=str(row["id"]), tool=row["tool"], server=row["server"] or "",
            args=row["arguments"] if isinstance(row["arguments"], dict) else {},
            agent_name=row["agent_name"] or (key["name"] if key else ""),
            agent_labels=dict(key["labels"] or {}) if key else {},
            justification=row["justification"], at=_when(row["created_at"]), decision="require_approval",
            rule=row["rule"] if isinstance(row["rule"], dict) else {}, status=row["status"],
            decided_at=_when(row["decided_at"]) if row["decided_at"] else None,
            decline_reasons=[r for r in reasons.get(str(row["id"]), []) if r],
        ))
    events = (
        await AuditEvent.select(AuditEvent.id, AuditEvent.kind, AuditEvent.actor_id, AuditEvent.data,
                                AuditEvent.created_at)
        .where((AuditEvent.org_id == str(org_id)) & AuditEvent.kind.is_in(list(CALL_KINDS))
               & (AuditEvent.created_at >= since))
        .order_by(AuditEvent.created_at, ascending=False)
        .limit(MAX_RECORDS)
        .output(load_json=True)
    )
    for event in events:
        data = event["data"] if isinstance(event["data"], dict) else {}
        key = keys.get(str(event["actor_id"]))
        agent: dict[str, Any] = data["agent"] if isinstance(data.get("agent"), dict) else {}
        kind = event["kind"].removeprefix("call.")
        args = data.get("arguments")
        out.append(RecordedCall(
            origin="call", id=str(event["id"]), tool=str(data.get("tool") or ""), server=str(data.get("server") or ""),
            args=args if isinstance(args, dict) else None,
            agent_name=key["name"] if key else str(agent.get("name") or ""),
            agent_labels=dict(key["labels"] or {}) if key else {},
            justification=data.get("justification"), at=_when(event["created_at"]),
            decision="require_approval" if kind == "granted" else kind,
            rule=data["rule"] if isinstance(data.get("rule"), dict) else {},
        ))
    out.sort(key=lambda call: call.at)
    return out, len(requests) >= MAX_RECORDS or len(events) >= MAX_RECORDS


# --- the dry run -----------------------------------------------------------------------------


class Change(msgspec.Struct):
    """One recorded call whose decision the draft would change."""

    origin: str
    id: str
    at: str
    tool: str
    server: str
    agent: str
    args: dict[str, Any]
    old: str
    new: str
    new_rule: str
    reason: str


class Transition(msgspec.Struct):
    old: str
    new: str
    count: int


class DryRun(msgspec.Struct):
    """What the draft would have decided for the last `days` days of recorded calls."""

    days: int
    since: str
    replayed: int
    changed: int
    unchanged: int
    skipped: int  # call records that kept only the arguments' hash cannot be replayed
    transitions: list[Transition]
    examples: list[Change]
    truncated: bool  # more changed calls than examples
    limited: bool  # more than MAX_RECORDS requests or call records: only the newest were replayed


def _rule_label(rule: Any) -> str:
    if rule is None:
        return "defaults"
    return f"{rule.tool} rule {rule.index + 1}"


async def dry_run(org_id: uuid.UUID, source: str, *, days: int = WINDOW_DAYS, now: datetime | None = None) -> DryRun:
    """Replay recorded calls against `source`; raises ValidationFailed (line, column) when it does not load."""
    policy = await compile_for_org(org_id, source, name="draft")
    moment = now or datetime.now(UTC)
    calls, limited = await recorded_calls(org_id, days=days, now=moment)
    transitions: Counter[tuple[str, str]] = Counter()
    examples: list[Change] = []
    replayed = skipped = 0
    for call in reversed(calls):  # newest first, so the examples are the most recent
        if call.args is None:
            skipped += 1
            continue
        replayed += 1
        decision = policy.evaluate(CallContext(
            tool=call.tool, server=call.server or None, args=call.args,
            agent=AgentInfo(name=call.agent_name, labels=call.agent_labels),
            justification=call.justification, now=call.at,
        ))
        if decision.action == call.decision:
            continue
        transitions[(call.decision, decision.action)] += 1
        if len(examples) < EXAMPLES:
            examples.append(Change(
                origin=call.origin, id=call.id, at=call.at.isoformat(), tool=call.tool, server=call.server,
                agent=call.agent_name, args=call.args, old=call.decision, new=decision.action,
                new_rule=_rule_label(decision.rule), reason=decision.reason,
            ))
    changed = sum(transitions.values())
    return DryRun(
        days=days, since=(moment - timedelta(days=days)).isoformat(), replayed=replayed, changed=changed,
        unchanged=replayed - changed, skipped=skipped,
        transitions=[Transition(old, new, count) for (old, new), count in transitions.most_common()],
        examples=examples, truncated=changed > len(examples), limited=limited,
    )
