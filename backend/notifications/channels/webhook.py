"""Webhook: each event is a JSON POST signed `Preloop-Signature: t=<unix>,v1=<hex HMAC-SHA256("<t>.<body>")>`."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import ClassVar

import httpx

from backend.notifications.channels import Answer, ChannelError, Message, Target, http_client

SEND_TIMEOUT = 10.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def body_for(message: Message, target: Target) -> bytes:
    document = {
        "type": f"approval.{message.event}",
        "recipient": {"user_id": target.recipient.user_id, "email": target.recipient.email},
        "request": message.to_json(),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookChannel:
    kind: ClassVar[str] = "webhook"

    async def send(self, message: Message, target: Target) -> Answer:
        url = target.config.get("url")
        if not url or not target.secret:
            return Answer("webhook is not configured: PUT /api/v1/channels/webhook {url, secret}", skipped=True)
        body = body_for(message, target)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Preloop-Webhook/1",
            "Preloop-Signature": signature(target.secret, int(time.time()), body),
            "Preloop-Delivery": message.delivery_id,
            "Preloop-Event": f"approval.{message.event}",
        }
        try:
            async with http_client(SEND_TIMEOUT) as http:
                response = await http.post(str(url), content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ChannelError(f"webhook {url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= response.status_code < 300:
            return Answer(f"HTTP {response.status_code}")
        permanent = response.status_code in {400, 401, 403, 404, 405, 410, 413, 422}
        raise ChannelError(f"webhook {url} answered HTTP {response.status_code}", permanent=permanent)


CHANNEL = WebhookChannel()
