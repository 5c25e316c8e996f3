"""Fast lanes for the allow path over streamable HTTP (2026-07-28 wire: one self-contained POST per request).

Inbound, `FastPathApp` answers `tools/call` POSTs straight from the ASGI scope when the checkpoint can
settle them at once (allow, deny, errors); held calls, progress requests and every other method go to the
SDK's app. Outbound, `HttpFastLane` posts `tools/call` to a modern upstream over a pooled keep-alive
connection (`_http1`) and returns the raw result dict. Both skip model validation: the JSON-RPC result
passes through as-is.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import LATEST_MODERN_VERSION, MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_gateway._http1 import Http1Error, Http1Pool, Response, check_header
from mcp_gateway.errors import UpstreamError

logger = logging.getLogger(__name__)

SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
CLIENT_INFO = {"name": "preloop-gateway", "version": "0.1.0"}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

FastCall = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


class _ResponseMatcher:
    """Event filter for an SSE answer: accepts the event carrying the JSON-RPC response to `request_id`."""

    __slots__ = ("message", "request_id")

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.message: dict[str, Any] | None = None

    def __call__(self, data: bytes) -> bool:
        try:
            message = _decode(data)
        except msgspec.DecodeError:
            return False
        # Notifications and server-to-client requests may precede the response in the stream.
        if isinstance(message, dict) and message.get("id") == self.request_id and "method" not in message:
            self.message = message
            return True
        return False


def _parse_response(response: Response, matcher: _ResponseMatcher) -> dict[str, Any]:
    """The JSON-RPC response from a JSON or SSE answer."""
    if response.content_type.startswith("text/event-stream"):
        if matcher.message is None:
            raise UpstreamError(f"the upstream's event stream ended without a response (HTTP {response.status})")
        return matcher.message
    try:
        message = _decode(response.body)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"the upstream answered HTTP {response.status} with a body that is not JSON-RPC") from exc
    if not isinstance(message, dict):
        raise UpstreamError("the upstream answered with something that is not a JSON-RPC response")
    return message


class HttpFastLane:
    """Stateless `tools/call` POSTs to an upstream that speaks the 2026-07-28 wire.

    The request head for `tools/call` is built and checked once per protocol version; each call adds only
    its `Mcp-Name` line (cached per tool), any `Mcp-Param-*` lines and the Content-Length.
    """

    _NAME_CACHE_LIMIT = 4096

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url
        self._pool = Http1Pool(url, headers)
        self._ids = itertools.count(1)
        self.version: str | None = None
        self._meta_fixed: dict[str, Any] = {}
        self._param_headers: dict[str, dict[tuple[str, ...], str]] = {}
        self._call_head = b""
        self._name_lines: dict[str, bytes] = {}
        self._set_version(LATEST_MODERN_VERSION)

    def _set_version(self, version: str) -> None:
        self._wire_version = version
        self._meta_fixed = {
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_INFO_META_KEY: CLIENT_INFO,
            CLIENT_CAPABILITIES_META_KEY: {},
        }
        self._call_head = self._pool.head("POST", self._headers("tools/call"))

    def _headers(self, method: str) -> dict[str, str]:
        return {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: self._wire_version,
            MCP_METHOD_HEADER: method,
        }

    async def aclose(self) -> None:
        await self._pool.aclose()

    def absorb_tools(self, tools: list[dict[str, Any]]) -> None:
        """Remember each tool's `x-mcp-header` annotations, mirrored into `Mcp-Param-*` headers on calls."""
        maps: dict[str, dict[tuple[str, ...], str]] = {}
        for tool in tools:
            schema = tool.get("inputSchema")
            if isinstance(schema, dict) and find_invalid_x_mcp_header(schema) is None:
                header_map = x_mcp_header_map(schema)
                if header_map:
                    maps[str(tool.get("name"))] = header_map
        self._param_headers = maps

    def _envelope(self, request_id: int, method: str, params: Mapping[str, Any]) -> bytes:
        meta = params.get("_meta")
        params = {**params, "_meta": {**meta, **self._meta_fixed} if meta else self._meta_fixed}
        return _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})

    async def _post(self, request_id: int, head: bytes, body: bytes) -> dict[str, Any]:
        matcher = _ResponseMatcher(request_id)
        try:
            response = await self._pool.send(head, body, event_filter=matcher)
        except Http1Error as exc:
            raise UpstreamError(f"upstream {self.url} failed: {exc}") from exc
        message = _parse_response(response, matcher)
        if "error" in message:
            error = message["error"] or {}
            raise MCPError(code=int(error.get("code", -32603)), message=str(error.get("message", "")))
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(f"upstream {self.url} sent a response without a result (HTTP {response.status})")
        return result

    async def probe(self) -> bool:
        """True when the upstream serves 2026-07-28 (`server/discover` succeeds and lists it)."""
        request_id = next(self._ids)
        head = self._pool.head("POST", self._headers("server/discover"))
        try:
            result = await self._post(request_id, head, self._envelope(request_id, "server/discover", {}))
        except (UpstreamError, MCPError, ValueError, msgspec.DecodeError):
            return False
        versions = [v for v in result.get("supportedVersions") or [] if v in MODERN_PROTOCOL_VERSIONS]
        if not versions:
            return False
        self.version = versions[-1]
        self._set_version(self.version)
        return True

    def _name_line(self, name: str) -> bytes:
        line = self._name_lines.get(name)
        if line is None:
            value = encode_header_value(name)
            check_header(MCP_NAME_HEADER, value)
            line = f"{MCP_NAME_HEADER}: {value}\r\n".encode("latin-1")
            if len(self._name_lines) >= self._NAME_CACHE_LIMIT:
                self._name_lines.clear()
            self._name_lines[name] = line
        return line

    async def call_tool(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = str(params.get("name", ""))
        head = self._call_head + self._name_line(name)
        header_map = self._param_headers.get(name)
        if header_map:
            arguments = params.get("arguments")
            mirrored = mcp_param_headers(header_map, arguments if isinstance(arguments, Mapping) else {})
            for header, value in mirrored.items():
                check_header(header, value)
                head += f"{header}: {value}\r\n".encode("latin-1")
        request_id = next(self._ids)
        result = await self._post(request_id, head, self._envelope(request_id, "tools/call", params))
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
                await _send_json(send, 200, _encode(self.health()))
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
                await _send_json(send, 401, _encode(refusal))
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


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read request body first, then defers to the real one."""
    sent = False

    async def receive_replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed
