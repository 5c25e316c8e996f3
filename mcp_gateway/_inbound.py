"""The gateway's HTTP front door: allowed calls settled below ASGI, everything else lent to uvicorn.

Every connection is served by `FrontProtocol`. It reads requests itself and settles those the fast path
takes: a plain HTTP/1.1 `POST` of a stateless (2026-07-28 wire) `tools/call` with a Content-Length body,
judged and forwarded by `FastPathApp.answer` and answered in one write. Requests are served one at a
time, in arrival order (pipelined ones wait their turn).

Any other request lends the connection, from the first byte of that request, to uvicorn's own protocol
(`LentProtocol`): other methods and paths, GET streams, chunked or `Expect` bodies, HTTP/1.0, repeated or
malformed header lines, and calls the fast path declines (held calls, progress requests), which go
straight to the SDK's app. Once uvicorn has answered everything it read and holds no partial request,
the connection comes back to a new `FrontProtocol`. Being strict costs an odd client some speed, never
correctness: uvicorn parses such a request again, in full.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mcp_gateway._inbound_lane import FastPathApp

logger = logging.getLogger(__name__)

_STATUS_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
_STATUS_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
_FIELD = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*"
_FIELDS = re.compile(_FIELD + rb"(?:\r\n" + _FIELD + rb")*")  # token ":" value, CRLF-separated


#: The uvicorn internals this module relies on: methods it overrides or calls, and attributes it reads.
HOOK_METHODS = {
    "__init__": ("self", "config", "server_state", "app_state", "_loop"),
    "data_received": ("self", "data"),
    "connection_made": ("self", "transport"),
    "connection_lost": ("self", "exc"),
    "on_message_begin": ("self",),
    "on_message_complete": ("self",),
    "on_response_complete": ("self",),
    "_start_asgi_task": ("self", "cycle", "app"),
    "_unset_keepalive_if_required": ("self",),
}
HOOK_ATTRIBUTES = ("self.pipeline", "self.cycle", "self.connections", "self.config", "self.app_state", "self.loop")


def hook_problems() -> list[str]:
    """What changed in uvicorn's private protocol since the version this front was written for (empty: fine)."""
    import inspect

    problems = []
    for name, params in HOOK_METHODS.items():
        method = getattr(HttpToolsProtocol, name, None)
        if method is None:
            problems.append(f"HttpToolsProtocol.{name} is gone")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found != params:
            problems.append(f"HttpToolsProtocol.{name}{found} is not {name}{params}")
    init = inspect.getsource(HttpToolsProtocol.__init__)
    assigned = set(re.findall(r"(self\.\w+)\s*(?::[^=\n]+)?=", init))
    problems += [f"HttpToolsProtocol.__init__ no longer sets {a}" for a in HOOK_ATTRIBUTES if a not in assigned]
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    if "self.response_complete =" not in inspect.getsource(RequestResponseCycle.__init__):
        problems.append("RequestResponseCycle no longer has response_complete")
    from uvicorn.server import ServerState

    if "self.connections" not in inspect.getsource(ServerState.__init__):
        problems.append("ServerState no longer has connections")
    return problems


def protocol_for(app: FastPathApp) -> type[FrontProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `app`."""
    lent: type[LentProtocol] = type("BoundLentProtocol", (LentProtocol,), {"fastlane": app})
    front: type[FrontProtocol] = type("BoundFrontProtocol", (FrontProtocol,), {"fastlane": app, "lent": lent})
    lent.front = front
    return front


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    """(method, target, headers with lower-case names) of an HTTP/1.1 request head; None if unusual."""
    request_line, _, fields = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not _FIELDS.fullmatch(fields):
        return None
    # Every line is now `token:value` with no control characters but tab.
    headers: dict[bytes, bytes] = {}
    for line in fields.split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers[name.lower()] = value.strip(b" \t")
    if len(headers) != fields.count(b"\r\n") + 1:
        return None  # a repeated header: let the full parser decide what it means
    return parts[0], parts[1], headers


class _IdleSweeper:
    """Closes front connections idle longer than their server's keep-alive timeout (one timer a loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.interval = 1.0
        self.connections: weakref.WeakSet[FrontProtocol] = weakref.WeakSet()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: FrontProtocol) -> None:
        self.connections.add(connection)
        self.interval = min(self.interval, connection.keep_alive_timeout)
        if self._timer is None:
            self._timer = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for connection in list(self.connections):
            if connection.idle_since is not None and now - connection.idle_since > connection.keep_alive_timeout:
                connection.close()
        if self.connections:
            self._timer = self.loop.call_later(self.interval, self._sweep)


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleSweeper] = weakref.WeakKeyDictionary()


class FrontProtocol(asyncio.Protocol):
    fastlane: FastPathApp
    lent: type[LentProtocol]

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        self.uvicorn_args = (config, server_state, app_state, _loop)
        self.loop: asyncio.AbstractEventLoop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.idle_since: float | None = None
        #: The request head parsed while its body is still arriving: (body start, body end, close).
        self._pending: tuple[int, int, bool] | None = None
        #: The uvicorn protocol that had this connection before (told when the connection is lost).
        self.retired: HttpToolsProtocol | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)
        self.idle_since = self.loop.time()
        sweeper = _sweepers.get(self.loop)
        if sweeper is None:
            sweeper = _sweepers[self.loop] = _IdleSweeper(self.loop)
        sweeper.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.transport = None
        self.idle_since = None
        if self.retired is not None:
            self.retired.connection_lost(exc)
            self.retired = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.idle_since is not None:
            self.idle_since = self.loop.time()  # a request on its way, however slowly, is not idleness
        if self.busy:
            if len(self.buffer) > MAX_HEAD + MAX_BODY and self.transport is not None:
                self.transport.pause_reading()  # a pipelining client far ahead of us
                self.read_paused = True
            return
        self._next()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy and self.buffer:
            self._next()

    # -- uvicorn's server interface --------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in flight."""
        if self.busy:
            self.closing = True
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- requests --------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next complete request in the buffer, or lend the connection to uvicorn."""
        if self.write_paused or self.transport is None:
            return
        pending = self._pending
        if pending is None:
            pending = self._parse()
            if pending is None:
                return
        start, stop, close = pending
        if len(self.buffer) < stop:
            self._pending = pending  # the body is still on its way
            return
        self._pending = None
        request = bytes(self.buffer[:stop])
        del self.buffer[:stop]
        self.busy = True
        self.idle_since = None
        task = self.loop.create_task(self._serve(request, request[start:], close))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def _parse(self) -> tuple[int, int, bool] | None:
        """Where the next request's body starts and ends, if the fast path can take it; else lend."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._lend()
            return None
        parsed = parse_head(bytes(buffer[:end]))
        if parsed is None:
            self._lend()
            return None
        method, target, headers = parsed
        length = headers.get(b"content-length", b"")
        if (
            method != b"POST"
            or target.rstrip(b"/").decode("latin-1") != self.fastlane.path
            or not length.isdigit()
            or int(length) > MAX_BODY
            or b"transfer-encoding" in headers
            or b"expect" in headers
            or not self.fastlane.eligible_headers(headers)
        ):
            self._lend()
            return None
        close = headers.get(b"connection", b"").lower() == b"close"
        return end + 4, end + 4 + int(length), close

    async def _serve(self, request: bytes, body: bytes, close: bool) -> None:
        try:
            answer = await self.fastlane.answer(body)
        except Exception:
            logger.exception("the gateway's fast path failed on a tools/call")
            if self.transport is not None:
                self.transport.write(_STATUS_500)
                self.transport.close()
            return
        transport = self.transport
        if answer is None:
            # Held, progress-reporting or otherwise unusual: the SDK's app answers this one.
            self.buffer[:0] = request
            self._lend(skip_fast_path=True)
            return
        if transport is None or transport.is_closing():
            return  # the agent went away; the call ran and is audited
        close = close or self.closing
        connection = b"connection: close\r\n" if close else b""
        transport.write(b"%s%d\r\n%s\r\n%s" % (_STATUS_200, len(answer), connection, answer))
        self.server_state.total_requests += 1
        if close:
            transport.close()
            return
        self.busy = False
        self.idle_since = self.loop.time()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self.buffer:
            self._next()

    def _lend(self, *, skip_fast_path: bool = False) -> None:
        """Give this connection, unread bytes included, to uvicorn until it is idle again."""
        transport = self.transport
        if transport is None:
            return
        self.server_state.connections.discard(self)
        self.transport = None
        self.idle_since = None
        lent = self.lent(*self.uvicorn_args)
        lent.skip_fast_path = skip_fast_path
        self.retired = None  # its response went out before we took over
        lent.connection_made(transport)
        transport.set_protocol(lent)
        if self.read_paused:
            transport.resume_reading()
        data = bytes(self.buffer)
        self.buffer.clear()
        if data:
            lent.data_received(data)


class LentProtocol(HttpToolsProtocol):
    """uvicorn's protocol, serving a connection until it has nothing in flight, then giving it back."""

    fastlane: FastPathApp
    front: type[FrontProtocol]
    skip_fast_path = False
    retired: HttpToolsProtocol | None = None
    _in_message = False

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self.skip_fast_path:
            # The front already asked the fast path, which declined: the SDK's app takes it.
            self.skip_fast_path = False
            app = self.fastlane.inner
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.retired is not None:
            self.retired.connection_lost(exc)
            self.retired = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        transport = self.transport
        if self._in_message or self.pipeline or transport.is_closing() or not self.cycle.response_complete:
            return
        # Nothing in flight and no partial request read: the front takes the connection back.
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        front = self.front(self.config, self.server_state, self.app_state, self.loop)
        front.retired = self
        front.connection_made(transport)
        transport.set_protocol(front)
