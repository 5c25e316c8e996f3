"""Events of an organization (requested, voted, decided, commented, ...), published on the bus for its
consoles and approver apps. A hint: the API has the truth. The stream itself is `backend.event_stream`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from backend.bus import Bus


def events_topic(org_id: uuid.UUID | str) -> str:
    return f"events:{org_id}"


def event_message(org_id: uuid.UUID | str, kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The topic and message of an event, for `Bus.publish_many` with other messages."""
    return events_topic(org_id), {"type": kind, "at": datetime.now(UTC).isoformat(), **data}


async def publish_event(bus: Bus, org_id: uuid.UUID | str, kind: str, data: dict[str, Any]) -> None:
    """Tell every console and PWA of the org that something happened (a hint; the API has the truth)."""
    await bus.publish(*event_message(org_id, kind, data))


__all__ = ["event_message", "events_topic", "publish_event"]
