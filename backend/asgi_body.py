"""Two ASGI pieces the hub's and the gateway's fast lanes share: a JSON answer, and a body read ahead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


async def send_json(send: Send, status: int, body: bytes) -> None:
    """An `application/json` answer of `body`, in one start and one body message."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read request body first, then defers to the real one."""
    sent = False

    async def receive_replayed() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed
