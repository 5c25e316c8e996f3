"""Turn a request, one event and one recipient into the `Message` every channel renders."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from backend.accounts.tables import User
from backend.approvals.tables import Vote
from backend.notifications.channels import Argument, Message

FOLD_AT = 200
"""Argument values longer than this are cut in messages; the request page shows them whole."""


def request_link(base_url: str, request_id: Any) -> str:
    return f"{base_url}/app/#/requests/{request_id}"


def fold_arguments(arguments: Any) -> list[Argument]:
    if not isinstance(arguments, dict):
        arguments = {"arguments": arguments}
    folded: list[Argument] = []
    for name, value in arguments.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        if len(text) > FOLD_AT:
            folded.append(Argument(str(name), f"{text[:FOLD_AT]}… ({len(text) - FOLD_AT} more characters)", True))
        else:
            folded.append(Argument(str(name), text))
    return folded


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.timestamp()


def describe_outcome(row: dict[str, Any]) -> str:
    outcome = row.get("outcome") or {}
    status = row["status"]
    who = ", ".join(b.get("email", "") for b in outcome.get("by") or [] if isinstance(b, dict))
    reason = outcome.get("reason")
    if status == "approved":
        return f"Approved by {who}" if who else (reason or "Approved")
    if status == "declined":
        return f"Declined by {who}" + (f": {reason}" if reason else "")
    if status == "expired":
        return f"Expired: {reason}" if reason else "Expired without a decision"
    if status == "cancelled":
        return "Cancelled" + (f": {reason}" if reason else "")
    if status == "executed":
        return "Approved and executed"
    if status == "failed":
        error = (row.get("execution") or {}).get("error")
        return "Approved, but the call failed" + (f": {error}" if error else "")
    if status == "executing":
        return "Approved; running now"
    return str(status)


async def request_facts(row: dict[str, Any]) -> dict[str, Any]:
    """What a message needs beyond the row: approvals so far and the requesting key's owner."""
    approvals = await Vote.count().where((Vote.request == row["id"]) & (Vote.decision == "approve"))
    owner = ""
    if row.get("requester"):
        found = await User.select(User.email).where(User.id == row["requester"]).first()
        owner = found["email"] if found else ""
    return {"approvals": approvals, "owner": owner}


async def compose(
    row: dict[str, Any], delivery: dict[str, Any], base_url: str, *, facts: dict[str, Any] | None = None
) -> Message:
    policy = row.get("approval_policy") or {}
    rule = row.get("rule") or {}
    facts = facts or await request_facts(row)
    approvals, owner = int(facts["approvals"]), str(facts["owner"])
    quorum = max(1, int(policy.get("quorum") or 1))
    event = str(delivery.get("event") or "requested")
    kind = event.split(":", 1)[0]
    outcome = describe_outcome(row) if kind == "outcome" else None
    server = f" on {row['server']}" if row.get("server") else ""
    titles = {
        "requested": f"Approve {row['tool']}{server}?",
        "escalated": f"Escalated: approve {row['tool']}{server}?",
        "reminder": f"Reminder: {row['tool']}{server} is waiting for you",
        "outcome": f"{row['tool']}{server}: {row['status']}",
    }
    agent = row.get("agent_name") or "an agent"
    summary = outcome or (
        f"{agent} ({owner or 'unknown owner'}) asks to run {row['tool']}{server}"
        + (f": {row['justification']}" if row.get("justification") else "")
    )
    return Message(
        delivery_id=str(delivery["id"]),
        event=kind,
        request_id=str(row["id"]),
        status=row["status"],
        tool=row["tool"],
        server=row.get("server") or "",
        arguments=fold_arguments(row.get("arguments") or {}),
        agent=agent,
        owner=owner,
        created_at=_iso(row.get("created_at")) or "",
        rule=str(rule.get("description") or rule.get("name") or ""),
        risk=row.get("risk"),
        reason=row.get("reason") or "",
        justification=row.get("justification"),
        deadline=_iso(row.get("expires_at")),
        deadline_epoch=_epoch(row.get("expires_at")),
        votes_needed=max(0, quorum - approvals),
        quorum=quorum,
        link=request_link(base_url, row["id"]),
        tag=f"preloop-{row['id']}",
        title=titles.get(kind, titles["requested"]),
        summary=summary,
        outcome=outcome,
        passkey_required=bool(policy.get("require_passkey")),
        critical=row.get("risk") == "critical",
        org_id=str(row["org"]),
        escalation_level=int(delivery.get("escalation_level") or 0),
    )
