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

from mcp_gateway._http1 import Http1Error, Http1Pool, Response
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
    """Stateless `tools/call` POSTs to an upstream that speaks the 2026-07-28 wire."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url
        self._pool = Http1Pool(url, headers)
        self._ids = itertools.count(1)
        self.version: str | None = None
        self._meta_fixed: dict[str, Any] = {}
        self._param_headers: dict[str, dict[tuple[str, ...], str]] = {}
        self._set_version(LATEST_MODERN_VERSION)

    def _set_version(self, version: str) -> None:
        self._wire_version = version
        self._meta_fixed = {
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_INFO_META_KEY: CLIENT_INFO,
            CLIENT_CAPABILITIES_META_KEY: {},
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

    def _envelope(self, params: Mapping[str, Any]) -> dict[str, Any]:
        meta = params.get("_meta")
        return {**params, "_meta": {**meta, **self._meta_fixed} if meta else self._meta_fixed}

    async def _post(
        self, method: str, params: Mapping[str, Any], extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        request_id = next(self._ids)
        body = _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": self._envelope(params)})
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: self._wire_version,
            MCP_METHOD_HEADER: method,
        }
        if extra:
            headers.update(extra)
        try:
            matcher = _ResponseMatcher(request_id)
            response = await self._pool.request("POST", body, headers, event_filter=matcher)
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
        try:
            result = await self._post("server/discover", {})
        except (UpstreamError, MCPError, ValueError, msgspec.DecodeError):
            return False
        versions = [v for v in result.get("supportedVersions") or [] if v in MODERN_PROTOCOL_VERSIONS]
        if not versions:
            return False
        self.version = versions[-1]
        self._set_version(self.version)
        return True

    async def call_tool(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = str(params.get("name", ""))
        extra = {MCP_NAME_HEADER: encode_header_value(name)}
        header_map = self._param_headers.get(name)
        if header_map:
            arguments = params.get("arguments")
            extra.update(mcp_param_headers(header_map, arguments if isinstance(arguments, Mapping) else {}))
        result = await self._post("tools/call", params, extra)
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
