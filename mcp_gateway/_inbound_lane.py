"""The inbound fast lane: an ASGI wrapper that settles modern `tools/call` POSTs before the SDK's app.

`FastPathApp` answers `tools/call` POSTs straight from the ASGI scope when the checkpoint can settle them at
once (allow, deny, errors); held calls, progress requests and every other method go to the SDK's app. The
result passes through without model validation. `mcp_gateway._inbound` runs the same checks and answers
below ASGI, from the HTTP server's protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.asgi_body import replay, send_json

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

FastCall = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


_LOCAL_HOSTS = (b"127.0.0.1", b"localhost", b"[::1]")


def _host_allowed(value: bytes | None) -> bool:
    if value is None:
        return False
    host = value.split(b"//", 1)[-1]
    host = host.split(b"]", 1)[0] + b"]" if host.startswith(b"[") else host.split(b":", 1)[0]
    return host in _LOCAL_HOSTS


class FastPathApp:
    """ASGI wrapper: settles modern `tools/call` POSTs itself, hands everything else to the SDK app.

    `eligible_headers` and `answer` are also used directly by `mcp_gateway._inbound`, which runs them
    from the HTTP server's protocol without the ASGI message layer.
    """

    def __init__(
        self,
        inner: ASGIApp,
        fast_call: FastCall,
        *,
        path: str = "/mcp",
        local_only: bool,
        health: Callable[[], dict[str, Any]] | None = None,
        enabled: bool = True,
        require_agent_key: bool = False,
    ) -> None:
        #: Refuse requests to `path` without an `Authorization` header (401).
        self.require_agent_key = require_agent_key
        #: False: every request goes to the SDK's app (PRELOOP_GATEWAY_FAST_PATH=0).
        self.enabled = enabled
        self.inner = inner
        self.fast_call = fast_call
        self.path = path
        self.local_only = local_only
        self.health = health

    def eligible(self, scope: Scope) -> bool:
        """A stateless (2026-07-28 wire) `tools/call` POST to our path, from an allowed origin."""
        if not self.enabled or scope["type"] != "http" or scope["method"] != "POST":
            return False
        if scope["path"].rstrip("/") != self.path:
            return False
        return self.eligible_headers(dict(scope["headers"]))

    def eligible_headers(self, headers: Mapping[bytes, bytes]) -> bool:
        """The header part of `eligible`; `headers` has lower-case names."""
        if (
            headers.get(b"mcp-method") != b"tools/call"
            # An agent's own key is checked with the hub on the SDK path, which knows the request.
            or b"authorization" in headers
            or self.require_agent_key
            or b"mcp-session-id" in headers
            or headers.get(b"mcp-protocol-version", b"").decode("latin-1") not in MODERN_PROTOCOL_VERSIONS
        ):
            return False
        if self.local_only:
            return _host_allowed(headers.get(b"host")) and (
                b"origin" not in headers or _host_allowed(headers.get(b"origin"))
            )
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.eligible(scope):
            if scope["type"] == "http" and scope["path"] == "/health" and self.health is not None:
                await send_json(send, 200, _encode(self.health()))
                return
            if (
                self.require_agent_key
                and scope["type"] == "http"
                and scope["path"].rstrip("/") == self.path
                and not any(name == b"authorization" for name, _ in scope["headers"])
            ):
                refusal = {
                    "error": "agent_key_required",
                    "message": "this gateway requires each agent's own key: send `Authorization: Bearer <agent key>` "
                    "(create one with `preloop key create --name NAME --scope agent`)",
                }
                await send_json(send, 401, _encode(refusal))
                return
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        answer = await self.answer(body)
        if answer is None:
            await self.inner(scope, replay(body, receive), send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def answer(self, body: bytes) -> bytes | None:
        """The JSON-RPC response to a `tools/call` request body, or None when the SDK app must take it."""
        try:
            message = _decode(body)
        except msgspec.DecodeError:
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call" or "id" not in message:
            return None
        params = message.get("params")
        if not isinstance(params, dict):
            return None
        meta = params.get("_meta")
        if isinstance(meta, dict) and meta.get("progressToken") is not None:
            return None
        result = await self.fast_call(params)
        if result is None:
            return None
        if "resultType" not in result:
            result = {**result, "resultType": "complete"}
        return _encode({"jsonrpc": "2.0", "id": message["id"], "result": result})
