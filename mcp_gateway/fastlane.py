"""Fast lanes for the allow path over streamable HTTP (2026-07-28 wire: one self-contained POST per request).

Inbound, `FastPathApp` answers `tools/call` POSTs straight from the ASGI scope when the checkpoint can
settle them at once (allow, deny, errors); held calls, progress requests and every other method go to the
SDK's app. Outbound, `HttpFastLane` posts `tools/call` to a modern upstream with a pooled HTTP client and
returns the raw result dict. Both skip model validation: the JSON-RPC result passes through as-is.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
import msgspec
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import LATEST_MODERN_VERSION, MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_gateway.errors import UpstreamError

logger = logging.getLogger(__name__)

SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
CLIENT_INFO = {"name": "preloop-gateway", "version": "0.1.0"}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

FastCall = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


def _parse_body(content_type: str, body: bytes, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response for `request_id` from a JSON or SSE body."""
    if content_type.startswith("text/event-stream"):
        for line in body.splitlines():
            if line.startswith(b"data:"):
                message = _decode(line[5:].strip())
                if isinstance(message, dict) and message.get("id") == request_id:
                    return message
        raise UpstreamError("the upstream's event stream ended without a response")
    message = _decode(body)
    if not isinstance(message, dict):
        raise UpstreamError("the upstream answered with something that is not a JSON-RPC response")
    return message


class HttpFastLane:
    """Stateless `tools/call` POSTs to an upstream that speaks the 2026-07-28 wire."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url
        self._client = httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(30.0, read=300.0))
        self._ids = itertools.count(1)
        self.version: str | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    def _envelope(self, params: Mapping[str, Any]) -> dict[str, Any]:
        meta = dict(params.get("_meta") or {})
        meta[PROTOCOL_VERSION_META_KEY] = self.version or LATEST_MODERN_VERSION
        meta[CLIENT_INFO_META_KEY] = CLIENT_INFO
        meta[CLIENT_CAPABILITIES_META_KEY] = {}
        return {**params, "_meta": meta}

    async def _post(self, method: str, params: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        body = _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": self._envelope(params)})
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: self.version or LATEST_MODERN_VERSION,
            MCP_METHOD_HEADER: method,
        }
        if name is not None:
            headers[MCP_NAME_HEADER] = name
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx2.HTTPError as exc:
            raise UpstreamError(f"upstream {self.url} is unreachable: {exc!r}") from exc
        message = _parse_body(response.headers.get("content-type", ""), response.content, request_id)
        if "error" in message:
            error = message["error"] or {}
            raise MCPError(code=int(error.get("code", -32603)), message=str(error.get("message", "")))
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(f"upstream {self.url} sent a response without a result")
        return result

    async def probe(self) -> bool:
        """True when the upstream serves 2026-07-28 (`server/discover` succeeds and lists it)."""
        try:
            result = await self._post("server/discover", {})
        except (UpstreamError, MCPError, ValueError, msgspec.DecodeError):
            return False
        versions = [v for v in result.get("supportedVersions") or [] if v in MODERN_PROTOCOL_VERSIONS]
        if not versions:
            return False
        self.version = versions[-1]
        return True

    async def call_tool(self, params: Mapping[str, Any]) -> dict[str, Any]:
        result = await self._post("tools/call", params, name=str(params.get("name", "")))
        meta = result.get("_meta")
        if isinstance(meta, dict) and SERVER_INFO_META_KEY in meta:
            # The upstream's identity is not ours to stamp onto the agent's result.
            rest = {k: v for k, v in meta.items() if k != SERVER_INFO_META_KEY}
            result = {k: v for k, v in result.items() if k != "_meta"}
            if rest:
                result["_meta"] = rest
        return result


_LOCAL_HOSTS = (b"127.0.0.1", b"localhost", b"[::1]")


def _host_allowed(value: bytes | None) -> bool:
    if value is None:
        return False
    host = value.split(b"//", 1)[-1]
    host = host.split(b"]", 1)[0] + b"]" if host.startswith(b"[") else host.split(b":", 1)[0]
    return host in _LOCAL_HOSTS


class FastPathApp:
    """ASGI wrapper: settles modern `tools/call` POSTs itself, hands everything else to the SDK app."""

    def __init__(self, inner: ASGIApp, fast_call: FastCall, *, path: str = "/mcp", local_only: bool) -> None:
        self.inner = inner
        self.fast_call = fast_call
        self.path = path
        self.local_only = local_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            await self.inner(scope, receive, send)
            return
        headers = dict(scope["headers"])
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        eligible = (
            version in MODERN_PROTOCOL_VERSIONS
            and b"mcp-session-id" not in headers
            and headers.get(b"mcp-method") == b"tools/call"
        )
        if eligible and self.local_only:
            eligible = _host_allowed(headers.get(b"host")) and (
                b"origin" not in headers or _host_allowed(headers.get(b"origin"))
            )
        if not eligible:
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
        answer = await self._try_fast(body)
        if answer is None:
            await self.inner(scope, _replay(body, receive), send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _try_fast(self, body: bytes) -> bytes | None:
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


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
