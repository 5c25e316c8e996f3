"""The outermost layer of the hub's HTTP stack: a request id for every request, and its metrics."""

from __future__ import annotations

import logging
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from backend.observability import metrics, request_ids

# One line per request at debug (PRELOOP_LOG_LEVEL=debug), and at warning for a 5xx answer.
access_log = logging.getLogger("preloop.access")


class ObservedApp:
    """Wraps an ASGI app: sets/echoes `X-Request-Id` and counts requests by route template and status.

    It sits outside routing, so 404s and errors are counted (as route "unmatched" when nothing matched).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        rid = request_ids.accept(raw)
        token = request_ids.current.set(rid)
        header = (b"x-request-id", rid.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), header]}  # type: ignore[typeddict-item]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template") or "unmatched"
            method = str(scope.get("method", "GET"))
            elapsed = time.perf_counter() - started
            metrics.record_http(method, str(route), status, elapsed)
            level = logging.WARNING if status >= 500 else logging.DEBUG
            if access_log.isEnabledFor(level):
                access_log.log(level, "%s %s %d", method, scope["path"], status,
                               extra={"route": route, "status": status, "ms": round(elapsed * 1000, 1)})
            request_ids.current.reset(token)
