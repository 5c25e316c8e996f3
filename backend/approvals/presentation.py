"""An approval request as callers see it: the row, its votes and its requester, checked against the caller's org."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from backend.accounts.service import Principal
from backend.accounts.tables import User
from backend.approvals import flows, inbox, redflags
from backend.approvals.flows import policy_of
from backend.errors import NotFound


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


async def _emails(user_ids: Iterable[Any]) -> dict[str, str]:
    ids = sorted({str(u) for u in user_ids if u})
    if not ids:
        return {}
    rows = await User.select(User.id, User.email).where(User.id.is_in([uuid.UUID(i) for i in ids]))
    return {str(r["id"]): r["email"] for r in rows}


async def _votes_of(request_ids: list[Any]) -> dict[str, list[dict[str, Any]]]:
    if not request_ids:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for v in await flows.votes_of(list(request_ids)):
        out.setdefault(str(v["request"]), []).append(flows.vote_view(v))
    return out


def serialize(row: dict[str, Any], votes: list[dict[str, Any]], emails: dict[str, str]) -> dict[str, Any]:
    policy = policy_of(row)
    requester = str(row["requester"]) if row.get("requester") else None
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "tool": row["tool"],
        "server": row["server"],
        "arguments": row["arguments"],
        "arguments_to_run": inbox.arguments_to_run(row["arguments"] or {}, row.get("input_schema")),
        "arguments_hash": row["arguments_hash"],
        "agent": {
            "key_id": str(row["agent_key"]) if row.get("agent_key") else None,
            "name": row["agent_name"],
        },
        "requester": {"id": requester, "email": emails.get(requester or "")} if requester else None,
        "justification": row["justification"],
        "policy_version": row["policy_version"],
        "rule": row["rule"],
        "approval_policy": policy,
        "risk": row["risk"],
        "reason": row["reason"],
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(row["expires_at"]),
        "escalation_level": row["escalation_level"],
        "next_escalation_at": _iso(row["next_escalation_at"]),
        "decided_at": _iso(row["decided_at"]),
        "outcome": row["outcome"],
        "grant_seconds": row["grant_seconds"],
        "executed_at": _iso(row["executed_at"]),
        "execution": row["execution"],
        "votes": votes,
        "quorum": {
            "required": int(policy.get("quorum") or 1),
            "approvals": sum(1 for v in votes if v["decision"] == "approve"),
            "declines": sum(1 for v in votes if v["decision"] == "decline"),
        },
    }


async def present(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    votes = await _votes_of([r["id"] for r in rows])
    emails = await _emails(r.get("requester") for r in rows)
    return [serialize(r, votes.get(str(r["id"]), []), emails) for r in rows]


async def present_one(
    row: dict[str, Any], principal: Principal, *, votes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One row for its caller, reading only what the caller does not already know: a requester who
    is the caller needs no email lookup, and `votes` (when the caller has them) no vote query."""
    if votes is None:
        votes = row.get("_votes")  # read with the row (flows.load_presented)
    if votes is None:
        votes = (await _votes_of([row["id"]])).get(str(row["id"]), [])
    requester = str(row.get("requester") or "")
    if requester and requester == str(principal.user_id):
        emails = {requester: principal.email}
    elif requester and row.get("_requester_email"):
        emails = {requester: row["_requester_email"]}
    else:
        emails = await _emails([requester])
    return serialize(row, votes, emails)


async def row_in_org(org_id: uuid.UUID, request_id: Any) -> dict[str, Any]:
    row = await flows.load_presented(request_id)
    if row is None or str(row["org"]) != str(org_id):  # another org's ids do not exist for you
        raise NotFound(
            f"no approval request {request_id}", detail={"hint": "GET /api/v1/approvals lists them"}
        )
    return row


async def visible_row(principal: Principal, request_id: Any) -> dict[str, Any]:
    """The request, if the caller may see it: an agent key sees only the requests it made."""
    row = await row_in_org(principal.org_id, request_id)
    if principal.is_agent and str(row.get("agent_key") or "") != str(principal.key_id):
        raise NotFound(f"no approval request {request_id}", detail={"hint": "an agent key sees its own requests"})
    return row


async def get_request(principal: Principal, request_id: Any, *, with_flags: bool = True) -> dict[str, Any]:
    """One request; with its red flags (computed from history) unless the caller needs only the state."""
    row = await visible_row(principal, request_id)
    item = (await present([row]))[0]
    return {**item, "red_flags": await redflags.red_flags(row)} if with_flags else item
