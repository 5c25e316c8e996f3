"""Reading and verifying the audit log."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter

from backend.accounts.service import Principal
from backend.audit.service import Actor, record, verify
from backend.audit.tables import AuditEvent
from backend.errors import ValidationFailed


class CallRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One allowed or denied call, as the gateway saw it."""

    event_id: str
    tool: str
    decision: str
    server: str = ""
    arguments_hash: str = ""
    rule: dict[str, Any] | None = None
    at: str | None = None
    outcome: str | None = None
    detail: dict[str, Any] = {}


class CallBatch(msgspec.Struct, forbid_unknown_fields=True):
    records: list[CallRecord]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get("/verify", operation_id="verify_audit_chain", summary="Check every link of the org's audit chain")
    async def verify_chain(self, principal: Principal) -> dict[str, Any]:
        return (await verify(principal.org_id)).to_dict()

    @get("/events", operation_id="list_audit_events")
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

    @post("/calls", operation_id="ingest_call_records", status_code=202,
          summary="The gateway's allowed/denied call records; idempotent per event_id")
    async def ingest_calls(self, data: CallBatch, principal: Principal) -> dict[str, Any]:
        if len(data.records) > 1000:
            raise ValidationFailed("at most 1000 records per batch", detail={"got": len(data.records)})
        actor = Actor("key", str(principal.key_id or principal.user_id), principal.key_name or principal.email)
        for item in data.records:
            await record(
                principal.org_id,
                f"call.{item.decision}",
                actor,
                subject_type="tool",
                subject_id=item.tool[:64],
                data={
                    "tool": item.tool, "server": item.server, "arguments_hash": item.arguments_hash,
                    "rule": item.rule, "at": item.at, "outcome": item.outcome, "detail": item.detail,
                    "agent": principal.key_name,
                },
                external_id=f"{principal.org_id}:{item.event_id}"[:80],
            )
        return {"accepted": len(data.records)}
