"""Time-boxed grants: the approvals that let the same call through again until they expire."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.accounts.service import Principal
from backend.approvals import flows
from backend.approvals.flows import now, parse_id, unit_of_work
from backend.approvals.presentation import _iso
from backend.approvals.tables import Grant
from backend.audit.service import record
from backend.errors import Forbidden, NotFound
from backend.events import publish_event

if TYPE_CHECKING:
    from backend.hub import Hub


def grant_dict(row: dict[str, Any]) -> dict[str, Any]:
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


async def list_grants(
    principal: Principal,
    *,
    active: bool | None = None,
    limit: int = 100,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """The org's grants, newest first (ties broken by id); a page of `limit` starts after the grant
    `before` names (created_at, id). `active=true`: only those not revoked and not expired."""
    condition: Any = Grant.org == principal.org_id
    if active is True:
        condition &= Grant.revoked_at.is_null() & (Grant.expires_at > now())
    if before is not None:
        at, grant_id = before
        condition &= (Grant.created_at < at) | ((Grant.created_at == at) & (Grant.id < grant_id))
    rows = (
        await Grant.select().where(condition).order_by(Grant.created_at, Grant.id, ascending=False).limit(limit)
    )
    return [grant_dict(r) for r in rows]


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
        return grant_dict(row)
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
    return grant_dict(row)
