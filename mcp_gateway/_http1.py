"""A minimal keep-alive HTTP/1.1 client for the upstream side of the allow fast path.

The general-purpose clients (httpx and the SDK's `httpx2`) spend most of a loopback round trip in their own
layers. A fast-lane `tools/call` needs far less: one POST on a pooled connection and one response, which
is either a JSON body (Content-Length or chunked) or a `text/event-stream` carrying the JSON-RPC response.

`Http1Pool` keeps idle connections (LIFO) and opens new ones under load, up to `max_connections`. Each
connection is an `asyncio.Protocol` feeding `httptools`' response parser, so a response costs one wake-up
of the waiting task. For event streams, `request(..., event_filter=...)` resolves as soon as an event's
data satisfies the filter; the connection returns to the pool once the stream ends.

Retry rule: a request is resent once on a fresh connection only when it went out on a *reused* connection
that the server closed before sending a single response byte (the usual race with a server's keep-alive
timeout). Connections idle longer than `idle_timeout` are not reused at all, to keep that race rare.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

EventFilter = Callable[[bytes], bool]


class Http1Error(Exception):
    """The request failed below HTTP: connect error, connection lost, malformed response, timeout."""


class _ClosedBeforeResponse(Http1Error):
    """The server closed the connection before sending any part of the response."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    #: For `text/event-stream`: the data of the first event the filter accepted (None if none did).
    event: bytes | None = None
    events: list[bytes] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n\0:") or any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid character in HTTP header {name!r}")


def _iter_sse_events(buffer: bytearray) -> list[bytes]:
    """Pop every complete event from `buffer` and return the data of each (multi-line data joined by LF)."""
    events: list[bytes] = []
    while True:
        # Events end with a blank line; normalise CRLF / CR line ends only as far as needed to find it.
        end = -1
        sep_len = 0
        for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
            i = buffer.find(sep)
            if i != -1 and (end == -1 or i < end):
                end, sep_len = i, len(sep)
        if end == -1:
            return events
        block = bytes(buffer[:end])
        del buffer[: end + sep_len]
        data: list[bytes] = []
        for line in block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line == b"data":
                data.append(b"")
        if data:
            events.append(b"\n".join(data))


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one request in flight."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Response] | None = None
        self._filter: EventFilter | None = None
        self._busy = False
        self._got_bytes = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._sse: bytearray | None = None
        self._response: Response | None = None
        self._complete = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing `asyncio.Transport`.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes nobody asked for: the connection is out of step; drop it.
            self.close()
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Http1Error(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if not self._busy:
            return
        headers = self._headers
        close_delimited = "content-length" not in headers and headers.get("transfer-encoding", "").lower() != "chunked"
        if self._response is not None and not self._complete and close_delimited:
            self.on_message_complete()  # a close-delimited body ends with the connection
            return
        if self._got_bytes:
            self._fail(Http1Error(f"the upstream closed the connection mid-response ({exc!r})"))
        else:
            self._fail(_ClosedBeforeResponse(f"the upstream closed the connection ({exc!r})"))
        self._busy = False

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._response = Response(status, self._headers)
        if self._headers.get("content-type", "").startswith("text/event-stream"):
            self._sse = bytearray()

    def on_body(self, body: bytes) -> None:
        if self._sse is None:
            self._body.append(body)
            return
        self._sse += body
        response = self._response
        assert response is not None
        for data in _iter_sse_events(self._sse):
            response.events.append(data)
            if response.event is None and self._filter is not None and self._filter(data):
                response.event = data
                self._resolve(response)

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        self._complete = True
        if self._sse is None:
            response.body = b"".join(self._body)
        elif self._sse.strip():
            # A final event without the closing blank line.
            self._sse += b"\n\n"
            self.on_body(b"")
        self._resolve(response)
        self._finish()

    # -- request cycle ---------------------------------------------------------------------------

    def _resolve(self, response: Response) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        self._cancel_timer()

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        self._busy = False
        self._waiter = None
        self._filter = None
        if self.closed or not self.parser.should_keep_alive():
            self.close()
        else:
            self.pool._release(self)

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(Http1Error(f"no response from the upstream within {self.pool.read_timeout:g}s"))
        self.close()

    def start(self, data: bytes, event_filter: EventFilter | None) -> asyncio.Future[Response]:
        assert self.transport is not None
        assert not self._busy
        loop = self.pool.loop
        self._busy = True
        self._got_bytes = False
        self._headers = {}
        self._body = []
        self._sse = None
        self._response = None
        self._complete = False
        self._filter = event_filter
        self._waiter = waiter = loop.create_future()
        self._timer = loop.call_later(self.pool.read_timeout, self._on_timeout)
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            if self.transport is not None:
                self.transport.close()


class Http1Pool:
    """Keep-alive connections to one origin; `request()` sends a request and returns its response."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        connect_timeout: float = 30.0,
        read_timeout: float = 300.0,
        max_connections: int = 100,
        max_idle: int = 16,
        idle_timeout: float = 4.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        host_header = parts.netloc.rsplit("@", 1)[-1]
        lines = [f"Host: {host_header}"]
        for name, value in (headers or {}).items():
            check_header(name, value)
            lines.append(f"{name}: {value}")
        self._fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def head(self, method: str, headers: Mapping[str, str] | None = None) -> bytes:
        """The request line and headers (checked) up to, not including, Content-Length and the blank line.

        Callers that send many requests with the same headers build this once and pass it to `send`.
        """
        lines = [f"{method} {self.path} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        for name, value in (headers or {}).items():
            check_header(name, value)
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        return b"".join(lines)

    async def request(
        self,
        method: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        event_filter: EventFilter | None = None,
    ) -> Response:
        """Send one request and return its response."""
        return await self.send(self.head(method, headers), body, event_filter=event_filter)

    async def send(self, head: bytes, body: bytes, *, event_filter: EventFilter | None = None) -> Response:
        """Send `head` (from `head()`, plus any further checked header lines) with `body`.

        A stale reused connection is retried once on a fresh one (see module doc).
        """
        data = b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        for _ in range(3):
            conn = await self._acquire()
            try:
                return await conn.start(data, event_filter)
            except _ClosedBeforeResponse:
                conn.close()
                if not conn.reused:
                    raise
            except BaseException:
                # Cancelled or failed mid-request: the connection's state is unknown.
                conn.close()
                raise
        raise Http1Error("the upstream keeps closing connections before answering")

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.closed:
                    continue
                if now - conn.idle_since > self.idle_timeout:
                    conn.close()
                    continue
                conn.reused = True
                return conn
            if len(self._open) < self.max_connections:
                return await self._connect()
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        if self._closed:
            raise Http1Error("the connection pool is closed")
        conn = _Connection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await self.loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except (OSError, TimeoutError) as exc:
            conn.closed = True
            self._forget(conn)
            raise Http1Error(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        except BaseException:
            conn.closed = True
            self._forget(conn)
            raise
        # uvloop may call `connection_made` only after `create_connection` has returned.
        conn.transport = transport
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
