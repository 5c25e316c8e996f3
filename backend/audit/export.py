"""The audit export: an org's whole chain plus its people's passkey public keys, in one JSON file."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from backend.accounts.passkeys import public_keys
from backend.audit.tables import AuditEvent

EXPORT_FORMAT = "preloop.audit-export/1"
CHAIN_FIELDS = (
    "org_id", "seq", "kind", "actor_type", "actor_id", "actor_label", "subject_type", "subject_id",
    "data", "created_at", "prev_hash", "hash",
)


def _event(row: dict[str, Any]) -> dict[str, Any]:
    created = row["created_at"]
    stamp = created.astimezone(UTC).isoformat() if isinstance(created, datetime) else str(created)
    return {**{name: row[name] for name in CHAIN_FIELDS}, "created_at": stamp}


async def export_org(org_id: uuid.UUID | str, *, batch: int = 2000) -> dict[str, Any]:
    """Everything `preloop audit verify --signatures` needs, offline: events in order and public keys."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        rows = (
            await AuditEvent.select()
            .where((AuditEvent.org_id == str(org_id)) & (AuditEvent.seq > after))
            .order_by(AuditEvent.seq)
            .limit(batch)
            .output(load_json=True)
        )
        if not rows:
            break
        events.extend(_event(r) for r in rows)
        after = rows[-1]["seq"]
    return {
        "format": EXPORT_FORMAT,
        "org_id": str(org_id),
        "exported_at": datetime.now(UTC).isoformat(),
        "events": events,
        "passkeys": await public_keys(uuid.UUID(str(org_id))),
    }
