"""Reading and verifying the audit log."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter

from backend.accounts.service import Principal
from backend.audit.service import Actor, record, verify
from backend.audit.tables import AuditEvent
from backend.deps import people_guard
from backend.errors import ValidationFailed
from backend.request_checks import BODY_LIMIT_CALLS
from policies import arguments_hash

CALL_DECISIONS = frozenset({"allow", "deny", "granted"})


class CallRecord(msgspec.Struct):
    """One allowed, denied or grant-covered call, as the gateway saw it.

    Unknown fields are kept (a newer gateway may report more); the key's identity, not the
    record's `agent`, is what the audit trusts as the actor.
    """

    event_id: str
    tool: str
    decision: str
    server: str = ""
    kind: str = "tool_call"
    exposed_tool: str | None = None
    arguments: dict[str, Any] | None = None
    arguments_hash: str = ""
    justification: str | None = None
    agent: dict[str, Any] | None = None
    rule: dict[str, Any] | None = None
    reason: str | None = None
    policy_version: int | None = None
    policy_hash: str | None = None
    is_error: bool | None = None
    duration_ms: float | None = None
    grant_id: str | None = None
    recorded_at: str | None = None


class CallBatch(msgspec.Struct, forbid_unknown_fields=True):
    records: list[CallRecord]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get(
        "/verify", operation_id="verify_audit_chain", guards=[people_guard],
        summary="Check every link of the org's audit chain",
    )
    async def verify_chain(self, principal: Principal) -> dict[str, Any]:
        return (await verify(principal.org_id)).to_dict()

    @get("/events", operation_id="list_audit_events", guards=[people_guard])
    async def list_events(
        self,
        principal: Principal,
        kind: str | None = None,
        subject_id: str | None = None,
        after_seq: int = Parameter(default=0, ge=0),
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        query = AuditEvent.select().where(
            (AuditEvent.org_id == str(principal.org_id)) & (AuditEvent.seq > after_seq)
        )
        if kind:
            query = query.where(AuditEvent.kind == kind)
        if subject_id:
            query = query.where(AuditEvent.subject_id == subject_id)
        rows = await query.order_by(AuditEvent.seq).limit(limit).output(load_json=True)
        return [{**row, "id": str(row["id"])} for row in rows]

    @post("/calls", operation_id="ingest_call_records", status_code=202, request_max_body_size=BODY_LIMIT_CALLS,
          summary="The gateway's allowed/denied call records; idempotent per event_id")
    async def ingest_calls(self, data: CallBatch, principal: Principal) -> dict[str, Any]:
        if len(data.records) > 1000:
            raise ValidationFailed("at most 1000 records per batch", detail={"got": len(data.records)})
        actor = Actor("key", str(principal.key_id or principal.user_id), principal.key_name or principal.email)
        for item in data.records:
            if item.decision not in CALL_DECISIONS:
                raise ValidationFailed(
                    f"unknown decision {item.decision!r} in record {item.event_id}",
                    detail={"hint": f"use one of: {', '.join(sorted(CALL_DECISIONS))}"},
                )
            details = {k: v for k, v in msgspec.to_builtins(item).items() if k != "event_id" and v is not None}
            if not item.arguments_hash and item.arguments is not None:
                details["arguments_hash"] = arguments_hash(item.arguments)
            await record(
                principal.org_id,
                f"call.{item.decision}",
                actor,
                subject_type="tool",
                subject_id=item.tool[:64],
                data=details,
                external_id=f"{principal.org_id}:{item.event_id}"[:80],
            )
        return {"accepted": len(data.records)}
