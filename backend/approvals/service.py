"""Approval requests for everyone who asks: the REST API, the console, the gateway and the jobs."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from backend.accounts import passkeys
from backend.accounts.passkeys import StepUpProof
from backend.accounts.service import Principal
from backend.accounts.tables import User
from backend.approvals import flows, inbox, redflags
from backend.approvals.flows import Change, load_row, now, parse_id, policy_of, unit_of_work
from backend.approvals.tables import ApprovalRequest, Grant, Vote
from backend.audit.service import record
from backend.errors import Conflict, Forbidden, NotFound, ValidationFailed
from backend.events import publish_event
from backend.policy_store.service import active_policy
from backend.request_checks import refuse_bidi
from backend.transactions import is_sqlite, lock
from policies import AgentInfo, CallContext, arguments_hash

if TYPE_CHECKING:
    from backend.hub import Hub

MAX_WAIT_IDS = 5000
OPEN_FOR_ATTACH = ("pending", "approved")
EXPORT_COLUMNS = (
    "id",
    "status",
    "tool",
    "server",
    "agent",
    "requested_by",
    "justification",
    "arguments",
    "arguments_hash",
    "rule",
    "approval_policy",
    "risk",
    "created_at",
    "decided_at",
    "outcome_kind",
    "decided_by",
    "reason",
    "approved_by",
    "declined_by",
    "executed_at",
    "result",
)


# --- reading ------------------------------------------------------------------------------------


INBOX_LIMIT = 1000  # pending requests read per inbox page (the filter runs in Python)


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


async def _row_in_org(org_id: uuid.UUID, request_id: Any) -> dict[str, Any]:
    row = await flows.load_presented(request_id)
    if row is None or str(row["org"]) != str(org_id):  # another org's ids do not exist for you
        raise NotFound(
            f"no approval request {request_id}", detail={"hint": "GET /api/v1/approvals lists them"}
        )
    return row


async def _visible_row(principal: Principal, request_id: Any) -> dict[str, Any]:
    """The request, if the caller may see it: an agent key sees only the requests it made."""
    row = await _row_in_org(principal.org_id, request_id)
    if principal.is_agent and str(row.get("agent_key") or "") != str(principal.key_id):
        raise NotFound(f"no approval request {request_id}", detail={"hint": "an agent key sees its own requests"})
    return row


async def get_request(principal: Principal, request_id: Any, *, with_flags: bool = True) -> dict[str, Any]:
    """One request; with its red flags (computed from history) unless the caller needs only the state."""
    row = await _visible_row(principal, request_id)
    item = (await present([row]))[0]
    return {**item, "red_flags": await redflags.red_flags(row)} if with_flags else item


def _date(value: str | None, field: str, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            f"{field} must be an ISO date or datetime, got {value!r}",
            detail={"field": field, "hint": "e.g. 2026-01-31 or 2026-01-31T12:00:00Z"},
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=now().tzinfo)
    if end and len(value) <= 10:  # a bare end date includes that whole day
        parsed += timedelta(days=1)
    return parsed


def _query(
    org_id: uuid.UUID,
    *,
    start_date: str | None,
    end_date: str | None,
    tool: str | None,
    status: str | None,
    request_ids: list[Any] | None,
) -> Any:
    condition: Any = ApprovalRequest.org == org_id
    if (start := _date(start_date, "start_date")) is not None:
        condition &= ApprovalRequest.created_at >= start
    if (end := _date(end_date, "end_date", end=True)) is not None:
        condition &= ApprovalRequest.created_at < end
    if tool:
        condition &= (
            ApprovalRequest.tool.like(tool.replace("*", "%")) if "*" in tool else ApprovalRequest.tool == tool
        )
    if status:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in ("pending", *flows.DECIDED)]
        if unknown:
            raise ValidationFailed(f"unknown status {unknown[0]!r}", detail={"field": "status"})
        condition &= ApprovalRequest.status.is_in(wanted)
    if request_ids is not None:
        condition &= ApprovalRequest.id.is_in(request_ids)
    return condition


async def _voted_by(org_id: uuid.UUID, approver: str | None) -> list[Any] | None:
    if not approver:
        return None
    rows = await Vote.select(Vote.request).where(
        (Vote.user.email == approver.strip().lower()) & (Vote.user.org == org_id)
    )
    return [r["request"] for r in rows] or [uuid.UUID(int=0)]


async def list_requests(
    principal: Principal,
    *,
    start_date: str | None = None,
    end_date: str | None = None,
    tool: str | None = None,
    approver: str | None = None,
    status: str | None = None,
    scope: str = "mine",
    limit: int = 100,
    offset: int = 0,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """History, newest first. `status=pending` is the caller's inbox: what they can vote on (scope mine)
    or every pending request (scope all); each pending item then says whether the caller can vote.
    `before` (created_at, id) starts after that item: a cursor, stable however many requests arrive."""
    if scope not in inbox.SCOPES:
        raise ValidationFailed(f"unknown scope {scope!r}", detail={"field": "scope", "hint": "mine or all"})
    ids = await _voted_by(principal.org_id, approver)
    condition = _query(
        principal.org_id, start_date=start_date, end_date=end_date, tool=tool, status=status, request_ids=ids
    )
    if principal.is_agent:
        condition &= ApprovalRequest.agent_key == principal.key_id
    if before is not None:
        at, after_id = before
        condition &= (ApprovalRequest.created_at < at) | (
            (ApprovalRequest.created_at == at) & (ApprovalRequest.id < after_id)
        )
    inbox_view = status == "pending"
    rows = (
        await ApprovalRequest.select()
        .where(condition)
        .order_by(ApprovalRequest.created_at, ApprovalRequest.id, ascending=False)
        .limit(INBOX_LIMIT if inbox_view else limit)
        .offset(0 if inbox_view else offset)
        .output(load_json=True)
    )
    items = await present(rows)
    if not inbox_view:
        return items
    out = []
    for row, item in zip(rows, items, strict=True):
        item.update(await inbox.voting_state(principal, row, item))
        if scope == "all" or item["can_vote"]:
            out.append((row, item))
    page = out[offset:offset + limit]
    for row, item in page:  # the inbox card shows the red flags too (a few queries per pending item)
        item["red_flags"] = await redflags.red_flags(row)
    return [item for _, item in page]


def _export_record(item: dict[str, Any]) -> dict[str, Any]:
    outcome = item.get("outcome") or {}
    return {
        "id": item["id"],
        "status": item["status"],
        "tool": item["tool"],
        "server": item["server"],
        "agent": item["agent"]["name"],
        "requested_by": (item.get("requester") or {}).get("email"),
        "justification": item["justification"],
        "arguments": item["arguments"],
        "arguments_hash": item["arguments_hash"],
        "rule": item["rule"],
        "approval_policy": item["approval_policy"].get("name"),
        "risk": item["risk"],
        "created_at": item["created_at"],
        "decided_at": item["decided_at"],
        "outcome_kind": outcome.get("kind"),
        "decided_by": [b.get("email") or b.get("type") for b in outcome.get("by") or []],
        "reason": outcome.get("reason"),
        "approved_by": [v["user"]["email"] for v in item["votes"] if v["decision"] == "approve"],
        "declined_by": [v["user"]["email"] for v in item["votes"] if v["decision"] == "decline"],
        "executed_at": item["executed_at"],
        "result": item["execution"],
    }


async def export(
    principal: Principal,
    fmt: str,
    *,
    start_date: str | None = None,
    end_date: str | None = None,
    tool: str | None = None,
    approver: str | None = None,
    status: str | None = None,
    batch: int = 500,
) -> AsyncIterator[str]:
    """The history, oldest first, a page at a time so memory stays flat however long it is."""
    if fmt not in ("csv", "json"):
        raise ValidationFailed(
            f"unknown export format {fmt!r}", detail={"field": "format", "hint": "csv or json"}
        )
    ids = await _voted_by(principal.org_id, approver)
    condition = _query(
        principal.org_id, start_date=start_date, end_date=end_date, tool=tool, status=status, request_ids=ids
    )
    if principal.is_agent:
        condition &= ApprovalRequest.agent_key == principal.key_id
    await record(
        principal.org_id,
        "approval.exported",
        principal.actor,
        subject_type="approval",
        data={
            "format": fmt,
            "start_date": start_date,
            "end_date": end_date,
            "tool": tool,
            "approver": approver,
            "status": status,
        },
    )

    async def pages() -> AsyncIterator[list[dict[str, Any]]]:
        cursor: tuple[datetime, str] | None = None
        while True:
            query = ApprovalRequest.select().where(condition)
            if cursor is not None:
                query = query.where(
                    (ApprovalRequest.created_at > cursor[0])
                    | ((ApprovalRequest.created_at == cursor[0]) & (ApprovalRequest.id > cursor[1]))
                )
            rows = (
                await query.order_by(ApprovalRequest.created_at, ApprovalRequest.id)
                .limit(batch)
                .output(load_json=True)
            )
            if not rows:
                return
            yield [_export_record(item) for item in await present(rows)]
            cursor = (rows[-1]["created_at"], rows[-1]["id"])

    async def as_csv() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        async for page in pages():
            for item in page:
                writer.writerow(
                    {
                        k: json.dumps(v, default=str) if isinstance(v, dict | list) else v
                        for k, v in item.items()
                    }
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()

    async def as_json() -> AsyncIterator[str]:
        yield "["
        first = True
        async for page in pages():
            for item in page:
                yield ("" if first else ",") + json.dumps(item, default=str)
                first = False
        yield "]"

    return as_csv() if fmt == "csv" else as_json()


# --- creating -----------------------------------------------------------------------------------


def _grant_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "request_id": str(row["request"]),
        "tool": row["tool"],
        "server": row["server"],
        "arguments_hash": row["arguments_hash"],
        "agent_key_id": str(row["agent_key"]) if row.get("agent_key") else None,
        "granted_by": str(row["granted_by"]) if row.get("granted_by") else None,
        "created_at": _iso(row["created_at"]),
        "expires_at": _iso(row["expires_at"]),
        "revoked_at": _iso(row["revoked_at"]),
        "uses": row["uses"],
        "active": row["revoked_at"] is None and row["expires_at"] > now(),
    }


async def create_request(
    hub: Hub,
    principal: Principal,
    *,
    tool: str,
    server: str,
    arguments: dict[str, Any],
    hash_hex: str | None,
    justification: str | None,
    input_schema: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Hold a call: (201, new request), (200, attached request) or (200, grant that covers it)."""
    tool = tool.strip()
    if not tool or len(tool) > 300:
        raise ValidationFailed("tool must be 1-300 characters", detail={"field": "tool"})
    refuse_bidi("tool", tool)
    refuse_bidi("server", server)
    if len(server) > 200:
        raise ValidationFailed("server must be at most 200 characters", detail={"field": "server"})
    digest = arguments_hash(arguments)
    if hash_hex is not None and hash_hex != digest:
        raise ValidationFailed(
            "arguments_hash does not match the arguments",
            code="arguments_hash_mismatch",
            detail={
                "expected": digest,
                "got": hash_hex,
                "hint": "sha256 of canonical JSON (sort_keys, no spaces)",
            },
        )
    justification = (justification or "").strip() or None
    found = await active_policy(principal.org_id)
    if found is None:
        raise Conflict(
            "the hub has no active policy, so nothing can be held for approval",
            code="policy_mismatch",
            detail={"action": None, "policy_version": None},
        )
    version_row, policy = found
    decision = policy.evaluate(
        CallContext(
            tool=tool,
            server=server or None,
            args=arguments,
            agent=AgentInfo(
                name=principal.key_name or principal.email,
                id=str(principal.key_id or principal.user_id),
                labels={str(k): str(v) for k, v in principal.labels.items()},
            ),
            justification=justification,
            now=now(),
        )
    )
    if decision.action != "require_approval" or decision.approval_policy is None:
        raise Conflict(
            f"the active policy (version {version_row['version']}) does not require approval for this call: "
            f"{decision.reason}",
            code="policy_mismatch",
            detail={
                "action": decision.action,
                "policy_version": version_row["version"],
                "reason": decision.reason,
                "message": decision.message,
            },
        )
    key_id = principal.key_id
    same_call = (
        (ApprovalRequest.org == principal.org_id)
        & (ApprovalRequest.tool == tool)
        & (ApprovalRequest.server == server)
        & (ApprovalRequest.arguments_hash == digest)
    )
    same_call &= ApprovalRequest.agent_key == key_id if key_id else ApprovalRequest.agent_key.is_null()
    async with unit_of_work():
        await lock(f"approval-create:{principal.org_id}:{key_id}:{tool}:{server}:{digest}")
        grant, existing = await _grant_or_open(principal.org_id, key_id, tool, server, digest, same_call)
        if grant is not None:
            await Grant.update({Grant.uses: Grant.uses + 1}).where(Grant.id == grant["id"])
            grant["uses"] += 1
            await record(
                principal.org_id,
                "grant.used",
                principal.actor,
                subject_type="grant",
                subject_id=grant["id"],
                data={"tool": tool, "server": server, "arguments_hash": digest},
            )
            return 200, {"status": "granted", "grant": _grant_dict(grant), "id": str(grant["request"])}
        if existing is not None:
            await record(
                principal.org_id,
                "approval.attached",
                principal.actor,
                subject_type="approval",
                subject_id=existing["id"],
                data={"tool": tool},
            )
            return 200, {**(await present([existing]))[0], "attached": True}
        snapshot = decision.approval_policy.to_dict()
        created = now()
        levels = snapshot.get("escalation") or []
        values = {
            "id": uuid.uuid4(),
            "org": principal.org_id,
            "status": "pending",
            "tool": tool,
            "server": server,
            "arguments": arguments,
            "arguments_hash": digest,
            "agent_key": key_id,
            "agent_name": principal.key_name or principal.email,
            "requester": principal.user_id,
            "justification": justification,
            "policy_version": version_row["version"],
            "rule": decision.rule.to_dict() if decision.rule else {},
            "approval_policy": snapshot,
            "risk": decision.risk,
            "reason": decision.reason,
            "created_at": created,
            "expires_at": created + timedelta(seconds=int(snapshot["timeout_seconds"])),
            "escalation_level": 0,
            "input_schema": input_schema if isinstance(input_schema, dict) else None,
            "next_escalation_at": created + timedelta(seconds=int(levels[0]["after_seconds"]))
            if levels
            else None,
        }
        row = await flows.transition(hub, None, "pending", principal.actor, Change(values=values))
        assert row is not None
    # Created in this call: it has no votes yet.
    return 201, {**(await present_one(row, principal, votes=[])), "attached": False}


_GRANT_OR_OPEN_SQL = """
SELECT
  (SELECT g.id FROM approval_grant g
    WHERE g.org = {org} AND g.tool = {tool} AND g.server = {server} AND g.arguments_hash = {digest}
      AND g.revoked_at IS NULL AND g.expires_at > {stamp} AND g.agent_key %(key)s
    LIMIT 1) AS _grant_id,
  r.*
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
  SELECT * FROM approval_request
   WHERE org = {org} AND tool = {tool} AND server = {server} AND arguments_hash = {digest}
     AND agent_key %(key)s AND status IN ('pending', 'approved')
   ORDER BY created_at DESC LIMIT 1
) AS r ON true
"""


async def _grant_or_open(
    org_id: uuid.UUID, key_id: Any, tool: str, server: str, digest: str, same_call: Any
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Under the create lock: the grant that covers this call, else the open request it attaches to.
    PostgreSQL: one statement for both (the grant's row is read only when there is one)."""
    if is_sqlite():
        grant = await _covering_grant(org_id, key_id, tool, server, digest)
        if grant is not None:
            return grant, None
        existing = (
            await ApprovalRequest.select()
            .where(same_call & ApprovalRequest.status.is_in(list(OPEN_FOR_ATTACH)))
            .order_by(ApprovalRequest.created_at, ascending=False)
            .output(load_json=True)
            .first()
        )
        return None, existing
    names = ["org", "tool", "server", "digest", "stamp"] + (["key"] if key_id else [])
    sql = _GRANT_OR_OPEN_SQL % {"key": "= {key}" if key_id else "IS NULL"}
    # Piccolo's raw() takes positional {} placeholders: number the named ones in order of appearance.
    order = [n for n in re.findall(r"\{(\w+)\}", sql)]
    values = dict(zip(names, [org_id, tool, server, digest, now(), key_id], strict=False))
    [found] = await ApprovalRequest.raw(re.sub(r"\{\w+\}", "{}", sql), *[values[n] for n in order])
    if found["_grant_id"] is not None:
        return await _covering_grant(org_id, key_id, tool, server, digest), None
    if found["id"] is None:
        return None, None
    row = flows.decode_json_columns(dict(found))
    row.pop("_grant_id")
    return None, row


async def _covering_grant(
    org_id: uuid.UUID, key_id: Any, tool: str, server: str, digest: str
) -> dict[str, Any] | None:
    condition = (
        (Grant.org == org_id)
        & (Grant.tool == tool)
        & (Grant.server == server)
        & (Grant.arguments_hash == digest)
        & Grant.revoked_at.is_null()
        & (Grant.expires_at > now())
    )
    condition &= Grant.agent_key == key_id if key_id else Grant.agent_key.is_null()
    return await Grant.select().where(condition).order_by(Grant.expires_at, ascending=False).first()


# --- deciding -----------------------------------------------------------------------------------


async def vote(
    hub: Hub,
    principal: Principal,
    request_id: Any,
    decision: str,
    *,
    reason: str | None = None,
    grant_seconds: int = 0,
    channel: str = "api",
    assertion: dict[str, Any] | StepUpProof | None = None,
) -> dict[str, Any]:
    row = await _row_in_org(principal.org_id, request_id)
    votes: list[dict[str, Any]] = []
    updated = await flows.record_vote(
        hub, principal, row, decision, reason=reason, grant_seconds=grant_seconds, channel=channel,
        assertion=assertion, seen_votes=votes,
    )
    return await present_one({**updated, "_requester_email": row.get("_requester_email")}, principal, votes=votes)


async def step_up_options(
    hub: Hub, principal: Principal, ids: list[str], decision: str, origin: str
) -> dict[str, Any]:
    """A passkey challenge naming these pending requests, their argument hashes and the decision."""
    if not principal.is_agent and not principal.can_decide:
        raise Forbidden(
            f"{principal.email} is a {principal.role}; only approvers and admins confirm decisions",
            code="role_cannot_vote",
        )
    if not ids or len(ids) > 200:
        raise ValidationFailed("ids must hold 1 to 200 request ids", detail={"field": "ids", "got": len(ids)})
    items: list[tuple[str, str]] = []
    for request_id in dict.fromkeys(ids):
        row = await _row_in_org(principal.org_id, request_id)
        if row["status"] != "pending":
            raise Conflict(
                f"request {row['id']} is already {row['status']}",
                code="already_decided",
                detail={"request_id": str(row["id"]), "status": row["status"]},
            )
        items.append((str(row["id"]), row["arguments_hash"]))
    assert hub.redis is not None
    return await passkeys.step_up_options(
        hub.redis.client, principal, items, decision, passkeys.RelyingParty.for_origin(origin)
    )


async def vote_many(
    hub: Hub,
    principal: Principal,
    ids: list[str],
    decision: str,
    *,
    reason: str | None = None,
    grant_seconds: int = 0,
    channel: str = "api",
    assertion: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each id is its own vote with its own checks; one failure does not stop the others.

    With `assertion`, one passkey step-up confirms them all: it is verified once, and its
    challenge must name every listed request with its arguments hash.
    """
    if not principal.can_decide:
        raise Forbidden(
            f"{principal.email} cannot approve or decline ({principal.role}, via {principal.via})",
            code="role_cannot_vote" if not principal.is_agent else "agent_cannot_vote",
        )
    if not ids or len(ids) > 200:
        raise ValidationFailed("ids must hold 1 to 200 request ids", detail={"field": "ids", "got": len(ids)})
    proof: StepUpProof | None = None
    if assertion is not None:
        rows = [await _row_in_org(principal.org_id, rid) for rid in dict.fromkeys(ids)]
        proof = (await flows.confirm_step_up(hub, principal, rows, decision, assertion))[0]
    results: list[dict[str, Any]] = []
    for request_id in dict.fromkeys(ids):
        try:
            item = await vote(
                hub,
                principal,
                request_id,
                decision,
                reason=reason,
                grant_seconds=grant_seconds,
                channel=channel,
                assertion=proof,
            )
        except (Forbidden, NotFound, Conflict, ValidationFailed) as exc:
            results.append({"id": request_id, "ok": False, "error": exc.to_dict()["error"]})
        else:
            results.append({"id": request_id, "ok": True, "status": item["status"], "request": item})
    return results


async def cancel(hub: Hub, principal: Principal, request_id: Any, reason: str | None) -> dict[str, Any]:
    row = await _visible_row(principal, request_id)
    if str(row.get("requester") or "") != str(principal.user_id) and not principal.is_admin:
        raise Forbidden("only the requester or an admin can cancel a request", code="not_requester")
    async with unit_of_work():
        current = await flows.load_locked(row["id"])
        assert current is not None
        if current["status"] not in ("pending", "approved"):
            raise Conflict(
                f"this request is already {current['status']}",
                code="already_decided",
                detail={"status": current["status"]},
            )
        by = {"type": principal.actor.type, "id": str(principal.user_id), "email": principal.email}
        outcome = {"kind": "cancelled", "by": [by], "reason": (reason or "").strip() or None}
        updated = await flows.transition(hub, current, "cancelled", principal.actor, Change(outcome=outcome))
        if updated is None:
            raise Conflict("the request changed while cancelling; read it again", code="already_decided")
    return (await present([updated]))[0]


async def claim(hub: Hub, principal: Principal, request_id: Any, hash_hex: str) -> dict[str, Any]:
    """Start executing an approved call, once, with exactly the approved arguments."""
    claimed_by = {"claimed_by": principal.key_name or principal.email}
    fast = await _run_step(hub, principal, request_id, "executing", claimed_by, arguments_hash=hash_hex)
    if fast is not None:
        return await present_one(fast, principal)
    row = await _visible_row(principal, request_id)
    _require_runner(principal, row)
    if hash_hex != row["arguments_hash"]:
        raise Conflict(
            "these arguments are not the ones that were approved",
            code="arguments_hash_mismatch",
            detail={"approved": row["arguments_hash"], "got": hash_hex},
        )
    async with unit_of_work():
        _require_claimable(row)
        # The UPDATE is conditional on `approved`, so of racing claims exactly one wins; a row that
        # is still `approved` has not changed since it was read (every change moves its status).
        updated = await flows.transition(
            hub,
            row,
            "executing",
            principal.actor,
            Change(values=claimed_by),
        )
        if updated is None:
            current = await load_row(row["id"])
            assert current is not None
            _require_claimable(current)
            raise Conflict("another call claimed this request first", code="already_claimed")
    return await present_one(updated, principal)


def _require_claimable(row: dict[str, Any]) -> None:
    if row["status"] != "approved":
        code = "already_claimed" if row["status"] in ("executing", "executed", "failed") else "not_approved"
        raise Conflict(
            f"this request is {row['status']}; only an approved request can be claimed",
            code=code,
            detail={"status": row["status"]},
        )


async def report_outcome(
    hub: Hub,
    principal: Principal,
    request_id: Any,
    *,
    success: bool,
    result_summary: str | None,
    error: str | None,
) -> dict[str, Any]:
    values = {
        "success": success,
        "result_summary": (result_summary or "")[:4000] or None,
        "error": (error or "")[:4000] or None,
    }
    fast = await _run_step(hub, principal, request_id, "executed" if success else "failed", values)
    if fast is not None:
        return await present_one(fast, principal)
    row = await _visible_row(principal, request_id)
    _require_runner(principal, row)
    if row["status"] != "executing":
        raise Conflict(
            f"this request is {row['status']}; an outcome is reported once, after a claim",
            code="not_executing",
            detail={"status": row["status"]},
        )
    async with unit_of_work():
        updated = await flows.transition(
            hub, row, "executed" if success else "failed", principal.actor, Change(values=values)
        )
        if updated is None:
            raise Conflict("the outcome was already reported", code="not_executing")
    return await present_one(updated, principal)


async def _run_step(
    hub: Hub, principal: Principal, request_id: Any, new: str, values: dict[str, Any], **checks: Any
) -> dict[str, Any] | None:
    """The one-statement claim/report (PostgreSQL, no BEGIN/COMMIT: the statement is its transaction);
    None sends the caller down the checked path, which reads the row and says what is wrong (or, on
    SQLite, does the step itself)."""
    rid = parse_id(request_id)
    if rid is None or is_sqlite():
        return None
    return await flows.run_step(hub, principal, rid, new, values, **checks)


def _require_runner(principal: Principal, row: dict[str, Any]) -> None:
    same_key = principal.key_id is not None and str(principal.key_id) == str(row.get("agent_key") or "")
    if not (same_key or principal.is_admin):
        raise Forbidden(
            "only the agent key that made the request (or an admin) can run it", code="not_requester"
        )


# --- waiting ------------------------------------------------------------------------------------


def parse_ids(raw: str | list[str]) -> list[uuid.UUID]:
    items = raw if isinstance(raw, list) else [p for p in raw.split(",")]
    ids: list[uuid.UUID] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        parsed = parse_id(text)
        if parsed is None:
            raise ValidationFailed(f"{text!r} is not an approval id", detail={"field": "ids"})
        ids.append(parsed)
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ValidationFailed("ids must list at least one approval id", detail={"field": "ids"})
    if len(ids) > MAX_WAIT_IDS:
        raise ValidationFailed(
            f"at most {MAX_WAIT_IDS} ids per wait", detail={"field": "ids", "got": len(ids)}
        )
    return ids


async def _statuses(principal: Principal, ids: list[uuid.UUID]) -> dict[str, str]:
    if not is_sqlite():  # one array parameter, not thousands of placeholders for the builder to render
        sql = "SELECT id, status FROM approval_request WHERE org = {} AND id = ANY({}::uuid[])"
        args: list[Any] = [principal.org_id, ids]
        if principal.is_agent:
            sql += " AND agent_key = {}"
            args.append(principal.key_id)
        return {str(r["id"]): r["status"] for r in await ApprovalRequest.raw(sql, *args)}
    condition = (ApprovalRequest.org == principal.org_id) & ApprovalRequest.id.is_in(ids)
    if principal.is_agent:
        condition &= ApprovalRequest.agent_key == principal.key_id
    rows = await ApprovalRequest.select(ApprovalRequest.id, ApprovalRequest.status).where(condition)
    return {str(r["id"]): r["status"] for r in rows}


async def wait_for_decisions(
    hub: Hub, principal: Principal, ids: list[uuid.UUID], seconds: float
) -> dict[str, Any]:
    """Return as soon as any listed request is decided, or after `seconds`.

    Subscribes before reading, so a decision committed in between still wakes us; the bus
    only wakes, the database answers. No polling loop.
    """
    timeout = max(0.0, min(float(seconds), float(hub.settings.approvals.max_wait_seconds)))
    woken = asyncio.Event()
    signalled: set[str] = set()

    def wake(topic: str, _message: dict[str, Any]) -> None:
        signalled.add(topic.rsplit(":", 1)[-1])
        woken.set()

    unsubscribes = [hub.bus.subscribe(flows.approval_topic(i), wake) for i in ids]
    unsubscribes.append(hub.at_shutdown(woken.set))  # a stopping hub answers with what it knows
    try:
        statuses = await _statuses(principal, ids)
        if not statuses:
            raise NotFound("none of these approval ids exist", detail={"ids": [str(i) for i in ids[:20]]})
        if all(s == "pending" for s in statuses.values()) and timeout > 0:
            try:
                await asyncio.wait_for(woken.wait(), timeout=timeout)
            except TimeoutError:
                pass
            else:
                # Re-read only the requests the bus named (the database still decides what they
                # are); with a thousand ids listed this keeps each wake-up cheap.
                await asyncio.sleep(0)  # let decisions committed in the same instant join in
                named = [uuid.UUID(i) for i in signalled if i in statuses]
                if named:  # empty when the wake-up was the hub shutting down
                    statuses.update(await _statuses(principal, named))
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()
    decided_ids = [i for i, s in statuses.items() if s != "pending"]
    decided: list[dict[str, Any]] = []
    if decided_ids:
        rows = (
            await ApprovalRequest.select()
            .where(ApprovalRequest.id.is_in([uuid.UUID(i) for i in decided_ids]))
            .output(load_json=True)
        )
        decided = await present(rows)
    return {
        "decided": decided,
        "pending": [i for i, s in statuses.items() if s == "pending"],
        "unknown": [str(i) for i in ids if str(i) not in statuses],
    }


# --- grants -------------------------------------------------------------------------------------


async def list_grants(principal: Principal, *, active: bool | None = None) -> list[dict[str, Any]]:
    condition: Any = Grant.org == principal.org_id
    if active is True:
        condition &= Grant.revoked_at.is_null() & (Grant.expires_at > now())
    rows = await Grant.select().where(condition).order_by(Grant.created_at, ascending=False).limit(1000)
    return [_grant_dict(r) for r in rows]


async def revoke_grant(hub: Hub, principal: Principal, grant_id: Any, reason: str | None) -> dict[str, Any]:
    gid = parse_id(grant_id)
    row = (
        await Grant.select().where((Grant.id == gid) & (Grant.org == principal.org_id)).first()
        if gid
        else None
    )
    if row is None:
        raise NotFound(f"no grant {grant_id}", detail={"hint": "GET /api/v1/grants lists them"})
    if not (
        principal.is_admin or (principal.can_decide and str(row["granted_by"]) == str(principal.user_id))
    ):
        raise Forbidden("only an admin or the approver who granted it can revoke a grant", code="not_granter")
    if row["revoked_at"] is not None:
        return _grant_dict(row)
    async with unit_of_work():
        stamp = now()
        await Grant.update({Grant.revoked_at: stamp}).where(
            (Grant.id == row["id"]) & Grant.revoked_at.is_null()
        )
        await record(
            principal.org_id,
            "grant.revoked",
            principal.actor,
            subject_type="grant",
            subject_id=row["id"],
            data={"request_id": str(row["request"]), "reason": (reason or "").strip() or None},
        )
        row["revoked_at"] = stamp

        async def announce() -> None:
            await publish_event(hub.bus, principal.org_id, "grant.revoked", {"grant_id": str(row["id"])})

        flows.after_commit(announce)
    return _grant_dict(row)
