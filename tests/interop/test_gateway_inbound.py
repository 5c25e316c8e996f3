"""The gateway's HTTP front door: allowed calls settled below ASGI, everything else handed to the SDK app.

Raw HTTP/1.1 on a socket (parsed with h11) checks what an SDK client never exercises: keep-alive,
pipelining, a body arriving in pieces, `Connection: close`, and a held call falling back to the SDK app
on a connection that then keeps serving fast-path calls.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import pytest
from mcp import Client
from mcp_types.version import LATEST_MODERN_VERSION

from mcp_gateway._inbound_lane import FastPathApp
from tests.helpers import structured
from tests.interop.conftest import closed_port_url, running_gateway, serving_http
from tests.interop.test_gateway_policy import PROBE_POLICY

pytestmark = pytest.mark.interop

_ids = itertools.count(1)


def tools_call(
    port: int, arguments: dict[str, Any], *, tool: str = "show_args", close: bool = False
) -> tuple[int, bytes]:
    """A stateless (2026-07-28 wire) `tools/call` request; returns (JSON-RPC id, request bytes)."""
    request_id = next(_ids)
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {
                "name": tool,
                "arguments": arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
                    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }
    ).encode()
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
        f"Mcp-Protocol-Version: {LATEST_MODERN_VERSION}\r\nMcp-Method: tools/call\r\nMcp-Name: {tool}\r\n"
        + ("Connection: close\r\n" if close else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return request_id, head.encode() + body


class RawHttp:
    """One client connection: write bytes as given, read responses one by one."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def response(self) -> tuple[h11.Response, dict[str, Any]]:
        """The next response and the JSON-RPC message it carries (JSON body or the SSE event with an id)."""
        head: h11.Response | None = None
        body = b""
        with anyio.fail_after(20):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive())
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        assert head is not None and head.status_code == 200, head
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        content_type = dict(head.headers).get(b"content-type", b"")
        if content_type.startswith(b"text/event-stream"):
            messages = [
                json.loads(line[5:])
                for line in body.decode().splitlines()
                if line.startswith("data:") and line[5:].strip()
            ]
            return head, next(m for m in messages if "id" in m and "method" not in m)
        return head, json.loads(body)

    def announce(self) -> None:
        """Tell h11 a request went out (the bytes themselves are sent raw), so it parses the next answer."""
        self.conn.send(h11.Request(method="POST", target="/mcp", headers=[("Host", "x"), ("Content-Length", "0")]))
        self.conn.send(h11.EndOfMessage())

    async def send(self, data: bytes) -> None:
        self.announce()
        await self.stream.send(data)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def test_keep_alive_pipelining_and_a_body_in_pieces(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, serving_http(gw) as url:
        port = port_of(url)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            raw = RawHttp(stream)
            # Several calls on one keep-alive connection, each answered with its own id and arguments.
            for value in ("a", "b", "c"):
                request_id, data = tools_call(port, {"value": value, "justification": "test"})
                await raw.send(data)
                head, message = await raw.response()
                assert message["id"] == request_id
                assert message["result"]["structuredContent"] == {"received": {"value": value}}
                headers = dict(head.headers)
                assert headers[b"content-type"] == b"application/json"
                assert b"connection" not in headers
            # Each answered call is already in the audit spool (written in the step that answered it).
            records = gw.spool.pending()
            assert [(r["decision"], r["arguments"], r["is_error"]) for r in records] == [
                ("allow", {"value": value}, False) for value in ("a", "b", "c")
            ]
            assert all(r["justification"] == "test" and r["duration_ms"] > 0 for r in records)

            # Two requests in one write: both answered, in order.
            first_id, first = tools_call(port, {"value": "one", "justification": "test"})
            second_id, second = tools_call(port, {"value": "two", "justification": "test"})
            await raw.send(first + second)
            _, message = await raw.response()
            assert message["id"] == first_id
            assert message["result"]["structuredContent"] == {"received": {"value": "one"}}
            raw.announce()
            _, message = await raw.response()
            assert message["id"] == second_id
            assert message["result"]["structuredContent"] == {"received": {"value": "two"}}

            # The body arriving in two pieces, the second well after the headers.
            request_id, data = tools_call(port, {"value": "slow", "justification": "test"})
            split = data.index(b"\r\n\r\n") + 10
            raw.announce()
            await stream.send(data[:split])
            await anyio.sleep(0.2)
            await stream.send(data[split:])
            _, message = await raw.response()
            assert message["id"] == request_id
            assert message["result"]["structuredContent"] == {"received": {"value": "slow"}}

            # A body far larger than uvicorn buffers before it stops reading, sent in small pieces.
            big = "x" * 300_000
            request_id, data = tools_call(port, {"value": big, "justification": "test"})
            raw.announce()
            for offset in range(0, len(data), 16_384):
                await stream.send(data[offset : offset + 16_384])
            _, message = await raw.response()
            assert message["id"] == request_id
            assert message["result"]["structuredContent"] == {"received": {"value": big}}


async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, serving_http(gw) as url:
        port = port_of(url)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            raw = RawHttp(stream)
            request_id, data = tools_call(port, {"value": "bye", "justification": "test"}, close=True)
            await raw.send(data)
            head, message = await raw.response()
            assert message["id"] == request_id
            assert dict(head.headers)[b"connection"] == b"close"
            with anyio.fail_after(5):
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()


@pytest.fixture
def through_asgi(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The `Mcp-Method` of every HTTP request that reached the ASGI app instead of the front protocol."""
    seen: list[bytes] = []
    asgi_entry = FastPathApp.__call__

    async def counting(self: FastPathApp, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"]).get(b"mcp-method", b""))
        await asgi_entry(self, scope, receive, send)

    monkeypatch.setattr(FastPathApp, "__call__", counting)
    return seen


async def test_held_call_falls_back_to_the_sdk_app_and_the_connection_keeps_working(
    tmp_path: Path, through_asgi: list[bytes]
) -> None:
    # The hub is unreachable, so the held call must come back as a fail-closed error from the SDK path.
    async with running_gateway(tmp_path, PROBE_POLICY, api_url=closed_port_url()) as gw, serving_http(gw) as url:
        port = port_of(url)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            raw = RawHttp(stream)
            request_id, data = tools_call(port, {"value": "held", "justification": "needs a human"})
            await raw.send(data)
            _, message = await raw.response()
            assert message["id"] == request_id
            result = message["result"]
            assert result["isError"] is True
            assert result["structuredContent"]["status"] == "api_unavailable"
            # Same connection, an allowed call: answered by the fast path again.
            request_id, data = tools_call(port, {"value": "fine", "justification": "routine"})
            await raw.send(data)
            _, message = await raw.response()
            assert message["id"] == request_id
            assert message["result"]["structuredContent"] == {"received": {"value": "fine"}}
            # The held call never reached the upstream: it served the allowed call and this one.
            request_id, data = tools_call(port, {}, tool="count_calls")
            await raw.send(data)
            _, message = await raw.response()
            assert message["result"]["structuredContent"] == {"count": 2}
        # Only the held call went through the ASGI app; the connection then came back to the fast path
        # (and the held call went straight to the SDK's app, not through the fast path a second time).
        assert through_asgi == []


async def test_sdk_client_over_http_gets_the_same_verdicts(tmp_path: Path, through_asgi: list[bytes]) -> None:
    async with (
        running_gateway(tmp_path, PROBE_POLICY, api_url=closed_port_url()) as gw,
        serving_http(gw) as url,
        Client(url) as client,
    ):
        held = await client.call_tool("show_args", {"value": "held", "justification": "needs a human"})
        assert structured(held)["status"] == "api_unavailable"
        denied = await client.call_tool("show_args", {"value": "forbidden", "justification": "try"})
        assert structured(denied)["status"] == "denied_by_policy"
        allowed = await client.call_tool("show_args", {"value": "fine", "justification": "routine"})
        assert structured(allowed) == {"received": {"value": "fine"}}
    # Discovery and listing went through uvicorn and the SDK app; every settled tools/call came back to
    # the front protocol on the same keep-alive connection.
    assert b"server/discover" in through_asgi
    assert b"tools/call" not in through_asgi


async def test_unusual_requests_are_lent_to_uvicorn_and_answered_the_same(
    tmp_path: Path, through_asgi: list[bytes]
) -> None:
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, serving_http(gw) as url:
        port = port_of(url)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            raw = RawHttp(stream)
            # A chunked body: the front does not parse those, uvicorn does.
            request_id, data = tools_call(port, {"value": "chunked", "justification": "test"})
            head, body = data.split(b"\r\n\r\n", 1)
            head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length"))
            chunked = head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            await raw.send(chunked)
            _, message = await raw.response()
            assert message["id"] == request_id
            assert message["result"]["structuredContent"] == {"received": {"value": "chunked"}}
            # A header line the front will not vouch for (a repeated header): lent as well.
            request_id, data = tools_call(port, {"value": "twice", "justification": "test"})
            await raw.send(data.replace(b"Accept: ", b"Accept: application/json\r\nAccept: ", 1))
            _, message = await raw.response()
            assert message["id"] == request_id
            assert message["result"]["structuredContent"] == {"received": {"value": "twice"}}
            assert through_asgi == [b"tools/call", b"tools/call"]
            # A plain one after them is the front's again.
            request_id, data = tools_call(port, {"value": "plain", "justification": "test"})
            await raw.send(data)
            _, message = await raw.response()
            assert message["result"]["structuredContent"] == {"received": {"value": "plain"}}
            assert through_asgi == [b"tools/call", b"tools/call"]


async def test_idle_connections_close_after_the_keep_alive_timeout_but_slow_requests_do_not(tmp_path: Path) -> None:
    import uvicorn

    from mcp_gateway._inbound import protocol_for
    from tests.helpers import free_port

    # A server with the default 5 s timeout in the same event loop, reached first: each server's own
    # timeout applies to its connections.
    async with running_gateway(tmp_path, PROBE_POLICY) as gw, serving_http(gw) as default_url:
        patient = await anyio.connect_tcp("127.0.0.1", port_of(default_url))
        app = gw.http_app()
        port = free_port()
        config = uvicorn.Config(app, port=port, log_level="warning", timeout_keep_alive=1, http=protocol_for(app))
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(15):
                while not server.started:
                    await anyio.sleep(0.02)
            async with (
                await anyio.connect_tcp("127.0.0.1", port) as idle,
                await anyio.connect_tcp("127.0.0.1", port) as slow,
            ):
                raw = RawHttp(slow)
                request_id, data = tools_call(port, {"value": "slowly", "justification": "test"})
                raw.announce()
                # A piece every 0.4 s: 3 s for the request in all, past the 1 s timeout, never idle that long.
                pieces = [data[i : i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
                for piece in pieces:
                    await slow.send(piece)
                    await anyio.sleep(0.4)
                _, message = await raw.response()
                assert message["id"] == request_id
                assert message["result"]["structuredContent"] == {"received": {"value": "slowly"}}
                # The connection that never sent anything was closed meanwhile.
                with anyio.fail_after(1):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError)):
                        await idle.receive()
            # Idle for over 3 s too, but its server allows 5 s: still open and serving.
            async with patient:
                raw = RawHttp(patient)
                request_id, data = tools_call(port_of(default_url), {"value": "patient", "justification": "test"})
                await raw.send(data)
                _, message = await raw.response()
                assert message["id"] == request_id
            server.should_exit = True
