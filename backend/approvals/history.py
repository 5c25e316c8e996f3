"""The history of approval requests: filtered lists (the inbox among them) and the CSV/JSON export."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from backend.accounts.service import Principal
from backend.approvals import flows, inbox, redflags
from backend.approvals.flows import now
from backend.approvals.presentation import present
from backend.approvals.schemas import HistoryFilter
from backend.approvals.tables import ApprovalRequest, Vote
from backend.audit.service import record
from backend.errors import ValidationFailed

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


INBOX_LIMIT = 1000  # pending requests read per inbox page (the filter runs in Python)


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


def _query(org_id: uuid.UUID, filters: HistoryFilter, request_ids: list[Any] | None) -> Any:
    condition: Any = ApprovalRequest.org == org_id
    if (start := _date(filters.start_date, "start_date")) is not None:
        condition &= ApprovalRequest.created_at >= start
    if (end := _date(filters.end_date, "end_date", end=True)) is not None:
        condition &= ApprovalRequest.created_at < end
    if tool := filters.tool:
        condition &= (
            ApprovalRequest.tool.like(tool.replace("*", "%")) if "*" in tool else ApprovalRequest.tool == tool
        )
    if status := filters.status:
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


async def _visible_history(principal: Principal, filters: HistoryFilter) -> Any:
    """The filters as a condition, narrowed to what the caller sees (an agent key: its own requests)."""
    condition = _query(principal.org_id, filters, await _voted_by(principal.org_id, filters.approver))
    if principal.is_agent:
        condition &= ApprovalRequest.agent_key == principal.key_id
    return condition


async def list_requests(
    principal: Principal,
    filters: HistoryFilter,
    *,
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
    condition = await _visible_history(principal, filters)
    if before is not None:
        at, after_id = before
        condition &= (ApprovalRequest.created_at < at) | (
            (ApprovalRequest.created_at == at) & (ApprovalRequest.id < after_id)
        )
    inbox_view = filters.status == "pending"
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
    eligible = inbox.shared_eligibility()
    for row, item in zip(rows, items, strict=True):
        item.update(await inbox.voting_state(principal, row, item, eligible=eligible))
        if scope == "all" or item["can_vote"]:
            out.append((row, item))
    page = out[offset:offset + limit]
    # The inbox card shows the red flags too: the page's history read once per tool, two counts per item.
    for (_, item), flags in zip(page, await redflags.red_flags_of([row for row, _ in page]), strict=True):
        item["red_flags"] = flags
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
    filters: HistoryFilter,
    *,
    batch: int = 500,
) -> AsyncIterator[str]:
    """The history, oldest first, a page at a time so memory stays flat however long it is."""
    if fmt not in ("csv", "json"):
        raise ValidationFailed(
            f"unknown export format {fmt!r}", detail={"field": "format", "hint": "csv or json"}
        )
    condition = await _visible_history(principal, filters)
    await record(
        principal.org_id,
        "approval.exported",
        principal.actor,
        subject_type="approval",
        data={"format": fmt, **asdict(filters)},
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
