"""The multiplexed long-poll: wait until any of many approval requests is decided."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from backend import db
from backend.accounts.service import Principal
from backend.approvals import flows
from backend.approvals.flows import parse_id
from backend.approvals.presentation import present
from backend.approvals.tables import ApprovalRequest
from backend.errors import NotFound, ValidationFailed
from backend.transactions import is_sqlite

if TYPE_CHECKING:
    from backend.hub import Hub


MAX_WAIT_IDS = 5000


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
        return {str(r["id"]): r["status"] for r in await db.fetch(sql, *args)}
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
