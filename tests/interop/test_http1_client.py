"""The fast lane's HTTP/1.1 client against a scripted server: framing, SSE, keep-alive, reconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from mcp_gateway._http1 import Http1Error, Http1Pool
from mcp_gateway._outbound_lane import HttpFastLane

Reply = Callable[[bytes, dict[str, str], bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """A tiny HTTP/1.1 server: `reply(head, headers, body, writer)` answers; returning False closes."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((headers, body))
                if not await self.reply(lines[0].encode(), headers, body, writer):
                    return
        finally:
            writer.close()


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted(reply)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}/mcp"
    finally:
        for writer in scripted.writers:
            writer.close()
        server.close()


def json_reply(payload: bytes, *, extra: str = "") -> Reply:
    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n{extra}\r\n"
        writer.write(head.encode() + payload)
        await writer.drain()
        return "connection: close" not in extra.lower()

    return reply


async def test_content_length_response_and_keep_alive_reuse() -> None:
    async with serving(json_reply(b'{"ok":true}')) as (server, url):
        pool = Http1Pool(url, {"authorization": "Bearer t"})
        try:
            for n in range(3):
                response = await pool.request("POST", b'{"n":%d}' % n, {"x-test": "1"})
                assert response.status == 200
                assert response.body == b'{"ok":true}'
            assert server.connections == 1
            headers, body = server.requests[-1]
            assert headers["authorization"] == "Bearer t"
            assert headers["x-test"] == "1"
            assert headers["host"].startswith("127.0.0.1:")
            assert body == b'{"n":2}'
        finally:
            await pool.aclose()


async def test_connection_close_is_not_reused() -> None:
    async with serving(json_reply(b"{}", extra="connection: close\r\n")) as (server, url):
        pool = Http1Pool(url)
        try:
            for _ in range(2):
                assert (await pool.request("POST", b"{}")).body == b"{}"
            assert server.connections == 2
        finally:
            await pool.aclose()


async def test_chunked_response() -> None:
    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b'{"resu', b'lt":', b'{"x":1}}'):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with serving(reply) as (server, url):
        pool = Http1Pool(url)
        try:
            for _ in range(2):
                response = await pool.request("POST", b"{}")
                assert json.loads(response.body) == {"result": {"x": 1}}
            assert server.connections == 1
        finally:
            await pool.aclose()


def sse_reply(events: list[bytes], *, line_end: bytes = b"\n", hold_open: asyncio.Event | None = None) -> Reply:
    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for data in events:
            event = b"event: message" + line_end + b"data: " + data + line_end + line_end
            # Split every event across two chunks to exercise the incremental parser.
            for part in (event[:7], event[7:]):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
        if hold_open is not None:
            await hold_open.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return reply


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
async def test_sse_response_skips_notifications(line_end: bytes) -> None:
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "hi"}}).encode()
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).encode()
    async with serving(sse_reply([note, answer], line_end=line_end)) as (server, url):
        pool = Http1Pool(url)
        try:
            response = await pool.request("POST", b"{}", event_filter=lambda data: b'"id"' in data)
            assert response.event == answer
            assert response.events == [note, answer]
            # The stream ended, so the connection is reusable.
            await pool.request("POST", b"{}", event_filter=lambda data: b'"id"' in data)
            assert server.connections == 1
        finally:
            await pool.aclose()


async def test_sse_resolves_before_the_stream_ends() -> None:
    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}).encode()
    release = asyncio.Event()
    async with serving(sse_reply([answer], hold_open=release)) as (server, url):
        pool = Http1Pool(url)
        try:
            response = await asyncio.wait_for(pool.request("POST", b"{}", event_filter=lambda data: True), 5)
            assert response.event == answer
            # The first connection is still streaming, so a second request opens another one.
            second = asyncio.ensure_future(pool.request("POST", b"{}", event_filter=lambda data: True))
            await asyncio.sleep(0.05)
            release.set()
            assert (await asyncio.wait_for(second, 5)).event == answer
            assert server.connections == 2
        finally:
            await pool.aclose()


async def test_reconnects_after_the_server_closed_an_idle_connection() -> None:
    async with serving(json_reply(b'{"ok":1}')) as (server, url):
        pool = Http1Pool(url)
        try:
            assert (await pool.request("POST", b"{}")).body == b'{"ok":1}'
            for writer in server.writers:
                writer.close()
            await asyncio.sleep(0.05)
            assert (await pool.request("POST", b"{}")).body == b'{"ok":1}'
            assert server.connections == 2
        finally:
            await pool.aclose()


async def test_stale_connection_closed_as_the_request_is_sent_is_retried_once() -> None:
    calls = 0

    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            return False  # close without answering, as a keep-alive timeout racing the request would
        return await json_reply(b"{}")(start, headers, body, writer)

    async with serving(reply) as (server, url):
        pool = Http1Pool(url)
        try:
            await pool.request("POST", b"{}")
            assert (await pool.request("POST", b"{}")).body == b"{}"
            assert server.connections == 2
        finally:
            await pool.aclose()


async def test_fresh_connection_closed_without_answer_is_an_error() -> None:
    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with serving(reply) as (server, url):
        pool = Http1Pool(url)
        try:
            with pytest.raises(Http1Error):
                await pool.request("POST", b"{}")
            assert len(server.requests) == 1  # never resent: the server may have acted on it
        finally:
            await pool.aclose()


async def test_truncated_body_is_an_error() -> None:
    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
        await writer.drain()
        return False

    async with serving(reply) as (_, url):
        pool = Http1Pool(url)
        try:
            with pytest.raises(Http1Error):
                await pool.request("POST", b"{}")
        finally:
            await pool.aclose()


async def test_unreachable_upstream_is_an_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = Http1Pool(f"http://127.0.0.1:{port}/mcp")
    with pytest.raises(Http1Error):
        await pool.request("POST", b"{}")


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid character"):
        Http1Pool("http://127.0.0.1:1/mcp", {"x-evil": "a\r\nx-injected: 1"})


async def test_fast_lane_over_sse_passes_the_result_through() -> None:
    """A modern upstream answering with an event stream: the result reaches the caller unchanged."""
    result: dict[str, Any] = {
        "content": [
            {"type": "text", "text": "hé"},
            {"type": "image", "data": "aGk=", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///x", "text": "x", "mimeType": "text/plain"}},
        ],
        "structuredContent": {"a": [1, 2]},
        "isError": True,
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "up"}, "custom": 1},
    }

    async def reply(start: bytes, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        request = json.loads(body)
        answer = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        note = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}'
        return await sse_reply([note, answer])(start, headers, body, writer)

    async with serving(reply) as (server, url):
        lane = HttpFastLane(url, {})
        lane.absorb_tools(
            [
                {
                    "name": "tool",
                    "inputSchema": {
                        "type": "object",
                        "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
                    },
                }
            ]
        )
        try:
            got = await lane.call_tool({"name": "tool", "arguments": {"region": "eu-west-1"}})
        finally:
            await lane.aclose()
    assert got == {**{k: v for k, v in result.items() if k != "_meta"}, "_meta": {"custom": 1}}
    headers, body = server.requests[0]
    assert headers["mcp-method"] == "tools/call"
    assert headers["mcp-name"] == "tool"
    assert headers["mcp-param-region"] == "eu-west-1"
    assert json.loads(body)["params"]["arguments"] == {"region": "eu-west-1"}
