"""Events of an organization (requested, voted, decided, commented, ...), published on the bus for its
consoles and approver apps. A hint: the API has the truth. The stream itself is `backend.event_stream`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from backend.bus import Bus


def events_topic(org_id: uuid.UUID | str) -> str:
    return f"events:{org_id}"


async def publish_event(bus: Bus, org_id: uuid.UUID | str, kind: str, data: dict[str, Any]) -> None:
    """Tell every console and PWA of the org that something happened (a hint; the API has the truth)."""
    await bus.publish(events_topic(org_id), {"type": kind, "at": datetime.now(UTC).isoformat(), **data})


__all__ = ["events_topic", "publish_event"]
