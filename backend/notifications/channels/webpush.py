"""Web Push (RFC 8030/8291/8292) with VAPID; Declarative Web Push fields so iOS 18.4+ shows it unaided."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pywebpush import WebPusher

from backend.notifications import push
from backend.notifications.channels import Answer, ChannelError, Message, Target, http_client

logger = logging.getLogger("preloop.notifications.push")
SEND_TIMEOUT = 10.0
MAX_PAYLOAD = 3000
MAX_TTL = 28 * 24 * 3600
OUTCOME_TTL = 24 * 3600


def payload_for(message: Message) -> bytes:
    """The push body: Declarative Web Push (`web_push: 8030`) plus what our service worker reads."""
    pending = message.status == "pending" and message.event != "outcome"
    body = message.outcome or message.summary
    notification: dict[str, Any] = {
        "title": message.title[:120],
        "body": body[:400],
        "navigate": message.link,
        "tag": message.tag,  # the outcome replaces the request's notification: same tag
        "lang": "en",
        "dir": "ltr",
        "silent": False,
        "require_interaction": pending,
        "data": {"request_id": message.request_id, "event": message.event, "status": message.status},
    }
    if pending:  # with a passkey required, the app opens with that decision and asks for the passkey
        notification["actions"] = [
            {"action": "approve", "title": "Approve", "navigate": f"{message.link}?action=approve"},
            {"action": "decline", "title": "Decline", "navigate": f"{message.link}?action=decline"},
        ]
    document = {
        "web_push": 8030,
        "notification": notification,
        "preloop": {
            "request_id": message.request_id,
            "delivery_id": message.delivery_id,
            "event": message.event,
            "status": message.status,
            "tool": message.tool[:100],
            "risk": message.risk,
            "passkey_required": message.passkey_required,
        },
    }
    data = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    while len(data) > MAX_PAYLOAD and len(notification["body"]) > 20:
        notification["body"] = notification["body"][: len(notification["body"]) // 2] + "…"
        data = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return data


def ttl_for(message: Message) -> int:
    if message.event == "outcome" or message.deadline_epoch is None:
        return OUTCOME_TTL
    return max(0, min(MAX_TTL, int(message.deadline_epoch - time.time())))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


VAPID_LIFETIME = 12 * 3600
VAPID_REUSE = 3600
"""A signed VAPID header is reused for an hour per (key, subject, push service): a fan-out signs
once per push service, not once per device (the JWT itself is valid for 12 hours)."""
_SIGNED: dict[tuple[int, str, str], tuple[float, dict[str, str]]] = {}


def _vapid_headers(keys: push.VapidKeys, subject: str, audience: str) -> dict[str, str]:
    key = (id(keys.signer), subject, audience)
    clock = time.time()
    hit = _SIGNED.get(key)
    if hit is not None and clock - hit[0] < VAPID_REUSE:
        return dict(hit[1])
    headers = dict(keys.signer.sign({"sub": subject, "aud": audience, "exp": int(clock) + VAPID_LIFETIME}))
    if len(_SIGNED) > 1000:
        _SIGNED.clear()
    _SIGNED[key] = (clock, headers)
    return dict(headers)


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    """One HTTP client per event loop: pushes to one push service reuse their connections."""
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _CLIENTS[loop] = http_client(SEND_TIMEOUT)
    return client


async def close_clients() -> None:
    """Close this loop's shared push client (worker shutdown)."""
    client = _CLIENTS.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


class WebPushChannel:
    kind: ClassVar[str] = "push"

    async def send(self, message: Message, target: Target) -> Answer:
        devices = await push.DEVICES.ask(str(target.recipient.user_id))
        if not devices:
            return Answer("no device subscribed to push", skipped=True)
        keys = await push.vapid_keys(target.hub)
        host = urlsplit(target.public_url).hostname or "localhost"
        subject = str(target.config.get("subject") or f"mailto:preloop@{host}")
        data = payload_for(message)
        ttl = ttl_for(message)
        accepted, failures = 0, []
        http = _client()
        for device in devices:
            endpoint = device["endpoint"]
            info = {"endpoint": endpoint, "keys": {"p256dh": device["p256dh"], "auth": device["auth"]}}
            body = WebPusher(info).encode(data, "aes128gcm")["body"]
            headers = _vapid_headers(keys, subject, _origin(endpoint))
            headers.update(
                {
                    "TTL": str(ttl),
                    "Urgency": "high" if message.event != "outcome" else "normal",
                    "Content-Encoding": "aes128gcm",
                    "Content-Type": "application/octet-stream",
                    "Topic": message.request_id.replace("-", "")[:32],
                }
            )
            try:
                response = await http.post(endpoint, content=body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{_origin(endpoint)}: {type(exc).__name__}")
                continue
            if response.status_code in {200, 201, 202}:
                accepted += 1
            elif response.status_code in {404, 410}:
                logger.info("push subscription is gone; removed", extra={"endpoint": _origin(endpoint)})
                await push.forget(device["id"])
            else:
                failures.append(f"{_origin(endpoint)}: HTTP {response.status_code}")
        if accepted:
            return Answer(f"accepted by {accepted} of {len(devices)} device(s)")
        if not failures:
            return Answer("every device subscription was gone; removed", skipped=True)
        raise ChannelError("push failed: " + "; ".join(failures))


CHANNEL = WebPushChannel()
