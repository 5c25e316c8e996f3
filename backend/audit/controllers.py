"""Reading and verifying the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from backend import pagination
from backend.accounts.service import Principal
from backend.audit import calls
from backend.audit.calls import BatchAnswer, CallBatch
from backend.audit.export import export_org
from backend.audit.service import list_events, verify
from backend.deps import admin_guard, people_guard
from backend.request_checks import BODY_LIMIT_CALLS


class ChainLink(msgspec.Struct):
    """The hashed fields of one link of the org's audit chain."""

    org_id: str
    seq: int
    kind: str
    actor_type: str
    actor_id: str
    actor_label: str
    subject_type: str
    subject_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditEventView(ChainLink):
    """One link of the org's audit chain: what happened, who did it, to what, and the hashes that chain it."""

    id: str
    chain_pos: str
    created_at: datetime
    external_id: str | None = None
    """The gateway's event id for a call record (what makes a resent record a duplicate)."""
    note: str | None = None


class AuditVerification(msgspec.Struct):
    """Whether every link holds; when one does not, the first broken event and what is wrong with it."""

    ok: bool
    events: int
    first_broken_seq: int | None
    problem: str | None


class ExportedEvent(ChainLink):
    """One chain link exactly as it was hashed."""

    created_at: str
    """UTC, ISO 8601, as hashed."""


class ExportedPasskey(msgspec.Struct):
    """A passkey's public key (COSE, base64url), to check the signatures on votes offline."""

    credential_id: str
    user_id: str
    email: str
    name: str
    public_key: str
    created_at: str


class AuditExport(msgspec.Struct):
    """Everything `preloop audit verify --signatures` needs, offline."""

    format: str
    org_id: str
    exported_at: str
    events: list[ExportedEvent]
    passkeys: list[ExportedPasskey]


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get(
        "/verify", operation_id="verify_audit_chain", guards=[people_guard],
        summary="Check every link of the org's audit chain",
    )
    async def verify_chain(self, principal: Principal) -> AuditVerification:
        return AuditVerification(**(await verify(principal.org_id)).to_dict())

    @get("/export", operation_id="export_audit", guards=[admin_guard],
         summary="The whole chain and the passkeys' public keys, for `preloop audit verify --signatures`")
    async def export(self, principal: Principal) -> AuditExport:
        return msgspec.convert(await export_org(principal.org_id), AuditExport)

    @get("/events", operation_id="list_audit_events", guards=[people_guard],
         summary="The org's audit events, oldest first (by seq); pages by cursor", response_headers=pagination.HEADERS)
    async def list_events(
        self,
        request: Request,  # type: ignore[type-arg]
        principal: Principal,
        kind: str | None = None,
        subject_id: str | None = None,
        after_seq: int = Parameter(default=0, ge=0, le=2**53),  # a BigInt column; 2**53 stays exact in JSON
        limit: int = pagination.LIMIT,
        cursor: str | None = pagination.CURSOR,
    ) -> Response[list[AuditEventView]]:
        rows = await list_events(
            principal.org_id, kind=kind, subject_id=subject_id, limit=limit, families=False,
            after_seq=pagination.number(cursor) if cursor else after_seq,
        )
        return pagination.page(request, rows, limit, list[AuditEventView], "seq")  # type: ignore[no-any-return]

    @post("/calls", operation_id="ingest_call_records", status_code=200, request_max_body_size=BODY_LIMIT_CALLS,
          opt={"nul_per_item": True},  # calls.ingest refuses a NUL per record
          summary="The gateway's call records; one answer per record (accepted, duplicate, rejected)")
    async def ingest_calls(self, data: CallBatch, principal: Principal) -> BatchAnswer:
        return await calls.ingest(principal, data)
