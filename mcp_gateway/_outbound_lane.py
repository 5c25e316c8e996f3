"""The outbound fast lane: `tools/call` POSTs to an upstream on the 2026-07-28 wire, over a pooled connection.

`HttpFastLane` posts over a keep-alive connection from `_http1` and returns the raw result dict: the JSON-RPC
result passes through as-is, without model validation.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
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

from mcp_gateway._http1 import Http1Error, Http1Pool, Response, check_header
from mcp_gateway.errors import UpstreamError

SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"
CLIENT_INFO = {"name": "preloop-gateway", "version": "0.1.0"}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


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
