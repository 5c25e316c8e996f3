"""Queue notification deliveries (one row per approver and channel) and announce them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from backend.bus import Bus
from backend.events import publish_event
from backend.notifications.tables import NotificationDelivery

QUEUED_TOPIC = "notifications:queued"
"""Bus topic the channel workers listen on; each message names the request and its new rows."""


def dedupe_key(request_id: Any, user_id: Any, channel: str, level: int) -> str:
    return f"{request_id}:{user_id}:{channel}:{level}"


async def queue_deliveries(
    org_id: uuid.UUID | str,
    request: dict[str, Any],
    approvers: Iterable[tuple[Any, str]],
    channels: Iterable[str],
    *,
    level: int,
) -> list[dict[str, Any]]:
    """Insert a `queued` row per (approver, channel); a row queued before is left alone.

    Runs inside the caller's transaction, so a rolled-back request leaves no deliveries behind.
    Returns the rows that are new.
    """
    channel_list = list(dict.fromkeys(channels))
    rows: list[NotificationDelivery] = []
    payload = {
        "request_id": str(request["id"]),
        "tool": request["tool"],
        "server": request.get("server", ""),
        "agent": request.get("agent_name", ""),
        "risk": request.get("risk"),
        "justification": request.get("justification"),
        "escalation_level": level,
    }
    stamp = datetime.now(UTC)
    for user_id, email in approvers:
        for channel in channel_list:
            rows.append(
                NotificationDelivery(
                    org=org_id,
                    request=request["id"],
                    user=user_id,
                    channel=channel,
                    dedupe_key=dedupe_key(request["id"], user_id, channel, level),
                    escalation_level=level,
                    status="queued",
                    payload={**payload, "email": email},
                    created_at=stamp,
                )
            )
    if not rows:
        return []
    inserted = await (
        NotificationDelivery.insert(*rows)
        .on_conflict(target=NotificationDelivery.dedupe_key, action="DO NOTHING")
        .returning(NotificationDelivery.id, NotificationDelivery.user, NotificationDelivery.channel)
    )
    return [
        {"id": str(row["id"]), "user_id": str(row["user"]), "channel": row["channel"]} for row in inserted
    ]


async def announce(
    bus: Bus, org_id: uuid.UUID | str, request_id: Any, deliveries: list[dict[str, Any]], *, level: int
) -> None:
    """Wake the channel workers and tell consoles/PWAs that approvers are being notified."""
    if not deliveries:
        return
    message = {
        "org_id": str(org_id),
        "request_id": str(request_id),
        "escalation_level": level,
        "delivery_ids": [d["id"] for d in deliveries],
    }
    await bus.publish(QUEUED_TOPIC, message)
    await publish_event(
        bus,
        org_id,
        "notifications.queued",
        {
            "request_id": str(request_id),
            "escalation_level": level,
            "deliveries": len(deliveries),
            "channels": sorted({d["channel"] for d in deliveries}),
            "user_ids": sorted({d["user_id"] for d in deliveries}),
        },
    )


async def deliveries_for(request_id: uuid.UUID | str) -> list[dict[str, Any]]:
    rows = (
        await NotificationDelivery.select(
            *NotificationDelivery.all_columns(), NotificationDelivery.user.email.as_alias("email")
        )
        .where(NotificationDelivery.request == request_id)
        .order_by(NotificationDelivery.created_at)
    )
    return [
        {
            "id": str(row["id"]),
            "user_id": str(row["user"]),
            "email": row["email"],
            "channel": row["channel"],
            "status": row["status"],
            "escalation_level": row["escalation_level"],
        }
        for row in rows
    ]
