"""The in-app channel: a live event to the approver app and console of the recipient's organization."""

from __future__ import annotations

from typing import ClassVar

from backend.events import publish_event
from backend.notifications.channels import Answer, Message, Target


class WebChannel:
    kind: ClassVar[str] = "web"

    async def send(self, message: Message, target: Target) -> Answer:
        await publish_event(
            target.hub.bus,
            message.org_id,
            "notification",
            {
                "user_id": target.recipient.user_id,
                "request_id": message.request_id,
                "event": message.event,
                "title": message.title,
                "body": message.summary,
                "link": message.link,
            },
        )
        return Answer("published")


CHANNEL = WebChannel()
