"""The org's live event stream (SSE) for the console and the PWA, fed by the bus (`backend.events`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from litestar import Controller, get
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from backend.accounts.service import Principal
from backend.deps import people_guard
from backend.events import events_topic
from backend.hub import Hub
from backend.openapi import media_types

KEEPALIVE_SECONDS = 15.0

SHUTDOWN: dict[str, Any] = {"type": "shutdown"}


async def _stream(
    hub: Hub, org_id: uuid.UUID, limit: int | None
) -> AsyncGenerator[ServerSentEventMessage, None]:
    sent = 0
    async with hub.bus.stream(events_topic(org_id)) as queue:
        def end() -> None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(SHUTDOWN)

        stop_waiting = hub.at_shutdown(end)
        try:
            # The first message tells the client the subscription is live, so nothing after it is missed.
            yield ServerSentEventMessage(event="ready", data=json.dumps({"org": str(org_id)}))
            while limit is None or sent < limit:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ServerSentEventMessage(comment="keepalive")
                    continue
                if message is SHUTDOWN:
                    # The hub is stopping: say so and end the stream; EventSource reconnects by itself.
                    yield ServerSentEventMessage(
                        event="shutdown", data=json.dumps({"reconnect": True}), retry=2000
                    )
                    return
                sent += 1
                yield ServerSentEventMessage(
                    event=str(message.get("type", "message")), data=json.dumps(message, default=str)
                )
        finally:
            stop_waiting()


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get(
        "", operation_id="stream_events", guards=[people_guard], media_type="text/event-stream",
        operation_class=media_types("text/event-stream"),
        summary="Server-sent events of the caller's organization",
    )
    async def stream(
        self,
        principal: Principal,
        hub: Hub,
        limit: int | None = Parameter(
            default=None, ge=1, le=100_000, description="close after this many events"
        ),
    ) -> ServerSentEvent:
        generator = _stream(hub, principal.org_id, limit)
        return ServerSentEvent(generator, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


__all__ = ["EventsController"]
