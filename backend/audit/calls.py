"""Ingesting the gateway's call records: one answer per record, deduplicated on the full event id."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from backend.accounts.service import Principal
from backend.audit.service import Actor, record_many_once
from backend.audit.tables import AuditEvent
from backend.errors import Forbidden, ValidationFailed
from policies import arguments_hash

CALL_DECISIONS = frozenset({"allow", "deny", "granted"})
MAX_BATCH = 1000
MAX_EVENT_ID = 200
MAX_RECORD_BYTES = 256 * 1024


class CallRecord(msgspec.Struct):
    """One allowed, denied or grant-covered call, as the gateway saw it.

    Unknown fields are kept (a newer gateway may report more); the key's identity, not the
    record's `agent`, is what the audit records as the actor and the agent.
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
    """The body of `POST /api/v1/audit/calls`; records are checked one by one, not as a whole."""

    records: list[Any]


class RecordAnswer(msgspec.Struct):
    """What became of one record: stored, already stored (a resend), or refused for good."""

    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    error: str | None = None


class BatchAnswer(msgspec.Struct):
    """The answer to a batch: one entry per record, in order, and the counts."""

    results: list[RecordAnswer]
    accepted: int
    duplicate: int
    rejected: int


def may_report(principal: Principal) -> bool:
    """Only agent keys report calls: the record's agent is the key, so a person or approver key cannot."""
    return principal.via == "key" and principal.scope == "agent" and principal.key_id is not None


def external_id(org_id: object, event_id: str) -> str:
    """The dedupe key: the whole event id (hashed when `org:id` would not fit the 80-char column)."""
    plain = f"{org_id}:{event_id}"
    if len(plain) <= 80:
        return plain
    # '#' is not allowed in event ids, so a hashed key never equals a plain one.
    return f"{org_id}:#{hashlib.sha256(event_id.encode()).hexdigest()[:42]}"


def _problem(value: Any, where: str = "record") -> str | None:
    """Why a decoded JSON value cannot be stored (NUL, unpaired surrogate), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where} contains a NUL character (\\u0000), which the audit log cannot store"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where} contains an unpaired UTF-16 surrogate, which is not valid text"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _problem(key, f"{where} (a key)") or _problem(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _problem(item, f"{where}[{index}]")
            if found:
                return found
    return None


def _check(raw: Any) -> tuple[CallRecord | None, str | None]:
    """The record, or why it is rejected."""
    if not isinstance(raw, dict):
        return None, "a record must be a JSON object"
    try:
        item = msgspec.convert(raw, CallRecord)
    except msgspec.ValidationError as exc:
        return None, f"invalid record: {exc}"
    problem = _problem(raw)
    if problem:
        return item, problem
    if not item.event_id or len(item.event_id) > MAX_EVENT_ID or not item.event_id.isprintable() or any(
        c.isspace() or c == "#" for c in item.event_id
    ):
        return item, f"event_id must be 1-{MAX_EVENT_ID} printable characters without spaces or '#'"
    if item.decision not in CALL_DECISIONS:
        return item, f"unknown decision {item.decision!r}; use one of: {', '.join(sorted(CALL_DECISIONS))}"
    if not item.tool:
        return item, "tool must not be empty"
    if len(json.dumps(raw, default=str)) > MAX_RECORD_BYTES:
        return item, f"a record must be at most {MAX_RECORD_BYTES} bytes of JSON"
    return item, None


async def ingest(principal: Principal, batch: CallBatch) -> BatchAnswer:
    """Store each valid record once; refuse the invalid ones individually (the rest still land)."""
    if not may_report(principal):
        raise Forbidden(
            "only agent API keys may report call records",
            detail={"hint": "the gateway reports with its agent key (PRELOOP_API_KEY, scope agent)"},
        )
    if len(batch.records) > MAX_BATCH:
        raise ValidationFailed(f"at most {MAX_BATCH} records per batch", detail={"got": len(batch.records)})
    agent = {"id": str(principal.key_id), "name": principal.key_name, "labels": principal.labels}
    results: list[RecordAnswer] = []
    valid: list[tuple[int, tuple[str, str, str, dict[str, Any], str]]] = []
    for raw in batch.records:
        item, error = _check(raw)
        event_id = item.event_id if item is not None else (raw.get("event_id") if isinstance(raw, dict) else None)
        if item is None or error is not None:
            results.append(RecordAnswer(str(event_id) if event_id is not None else None, "rejected", error))
            continue
        details = {k: v for k, v in msgspec.to_builtins(item).items() if k != "event_id" and v is not None}
        claimed = details.pop("agent", None)
        details["agent"] = agent  # who reported it is who the key is, whatever the body says
        if claimed and str(claimed.get("id", "")) != agent["id"]:
            details["reported_agent"] = claimed
        if not item.arguments_hash and item.arguments is not None:
            details["arguments_hash"] = arguments_hash(item.arguments)
        event = (f"call.{item.decision}", "tool", item.tool[:64], details, external_id(principal.org_id, item.event_id))
        valid.append((len(results), event))
        results.append(RecordAnswer(item.event_id, "accepted"))
    if valid:
        # One transaction for the batch: a resent batch is one lookup, not one round trip per record.
        actor = Actor("key", str(principal.key_id), principal.key_name or principal.email)
        stored = await record_many_once(principal.org_id, [event for _, event in valid], actor=actor)
        for (index, _), new in zip(valid, stored, strict=True):
            if not new:
                results[index].status = "duplicate"
    counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected")}
    return BatchAnswer(results=results, **counts)


async def calls_per_day(org_id: Any, *, days: int = 7, limit: int = 200_000) -> dict[str, dict[str, int]]:
    """Key id -> {"YYYY-MM-DD": calls} from the call records the gateway reported over the last `days`
    (UTC days; the records' actor is the reporting agent's key)."""
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    rows = (
        await AuditEvent.select(AuditEvent.actor_id, AuditEvent.created_at)
        .where((AuditEvent.org_id == str(org_id)) & AuditEvent.kind.like("call.%")
               & (AuditEvent.actor_type == "key") & (AuditEvent.created_at >= since))
        .limit(limit)
    )
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        day = row["created_at"].astimezone(UTC).date().isoformat()
        per_key = out.setdefault(str(row["actor_id"]), {})
        per_key[day] = per_key.get(day, 0) + 1
    return out
