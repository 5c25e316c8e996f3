"""PostgreSQL connections for `db.fetch`'s one-statement work, handed out from a free list."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


class StatementConnections:
    """Up to `max_size` connections, each running one statement at a time, opened on demand.

    asyncpg's `Pool` costs about as much CPU per acquire and release as the statement itself (~40 µs):
    its release runs in a task of its own (`asyncio.shield`), so that a cancelled caller cannot leave a
    connection half returned, and resets the connection. Here nothing is ever half returned: a connection
    goes back on the list only once its statement has completed or the server has refused it; any other
    error, cancellation included, closes it instead, in the background (the next caller opens a new one). The statements
    `db.fetch` sends are each their own transaction, so a connection on the list has no session state to reset.
    """

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], max_size: int) -> None:
        self._connect = connect
        self._max = max_size
        self._idle: list[asyncpg.Connection] = []
        #: Callers waiting for a connection: each gets one, or None meaning "open one, the slot is yours".
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._size = 0  # connections open, in use or idle, plus those being opened
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()  # connections being closed after an error

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        connection = await self._acquire()
        try:
            records: list[asyncpg.Record] = await connection.fetch(sql, *args)
        except asyncpg.PostgresError as exc:
            if _severity(exc) == "ERROR":
                self._release(connection)  # the server refused the statement and is ready for the next one
            else:
                self._discard(connection)  # FATAL / PANIC: the server is ending this session
            raise
        except BaseException:
            self._discard(connection)
            raise
        self._release(connection)
        return records

    async def close(self) -> None:
        """Close the idle connections now, the others when their statement ends; callers waiting get an error."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the hub's database connections are closed"))
        for connection in idle:
            await connection.close()
        if self._closing:
            await asyncio.wait(self._closing)

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the hub's database connections are closed")
        while self._idle:
            connection = self._idle.pop()  # the most recently used: its caches are warm
            if not connection.is_closed():
                return connection
            self._size -= 1  # the server closed it while it sat idle
        if self._size >= self._max:
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over as we were cancelled: pass it on
                    late = waiter.result()
                    if late is None:
                        self._size -= 1
                        self._free_slot()
                    else:
                        self._release(late)
                raise
            if handed is not None:
                return handed
        else:
            self._size += 1
        try:
            return await self._connect()
        except BaseException:
            self._size -= 1
            self._free_slot()
            raise

    def _release(self, connection: asyncpg.Connection) -> None:
        if self._closed or connection.is_closed():
            self._discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _discard(self, connection: asyncpg.Connection) -> None:
        """Never hand `connection` out again; close it in the background. A statement cancelled mid-way is
        still running on the server: asyncpg's close first waits for the cancel request it sent (so the
        statement stops there too, as it does with asyncpg's pool), then ends the session."""
        self._size -= 1
        self._free_slot()
        if not connection.is_closed():
            closing = asyncio.get_running_loop().create_task(self._close(connection))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(connection: asyncpg.Connection) -> None:
        try:
            await connection.close(timeout=10)
        except (Exception, asyncio.CancelledError):
            connection.terminate()

    def _free_slot(self) -> None:
        """A slot is free: the first caller still waiting takes it (and opens a connection)."""
        if self._closed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)
                return


def _severity(exc: asyncpg.PostgresError) -> str:
    """The error's severity as the server sent it, untranslated (ERROR, FATAL, PANIC)."""
    return str(getattr(exc, "severity_en", None) or getattr(exc, "severity", None) or "").upper()
