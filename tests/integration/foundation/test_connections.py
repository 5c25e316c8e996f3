"""`StatementConnections`, the free list `db.fetch` runs its statements on, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from typing import Any

import asyncpg
import pytest

from backend.connections import StatementConnections


@pytest.fixture
async def opened(postgres_database: str) -> Any:
    """A factory of free lists whose connections carry a name of their own (to find them on the server)."""
    made: list[StatementConnections] = []
    admin = await asyncpg.connect(postgres_database)

    def make(max_size: int, connect: Any = None) -> tuple[StatementConnections, str]:
        name = f"conns-{uuid.uuid4().hex[:8]}"
        connect = connect or functools.partial(
            asyncpg.connect, postgres_database, server_settings={"application_name": name}
        )
        made.append(StatementConnections(connect, max_size))
        return made[-1], name

    one_at_a_time = asyncio.Lock()

    async def on_server(name: str) -> int:
        async with one_at_a_time:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            return int(await admin.fetchval(sql, name))

    make.on_server = on_server  # type: ignore[attr-defined]
    make.admin = admin  # type: ignore[attr-defined]
    yield make
    for connections in made:
        await connections.close()
    await admin.close()


async def test_concurrent_statements_share_at_most_max_size_connections(opened: Any) -> None:
    """80 statements from 80 tasks on 4 connections: every answer right, never a fifth connection on the
    server, and all 4 back on the list afterwards."""
    connections, name = opened(4)
    most = 0

    async def one(n: int) -> int:
        nonlocal most
        [row] = await connections.fetch("SELECT $1::int AS n, pg_sleep(0.01)", n)
        most = max(most, connections.size, await opened.on_server(name))
        return int(row["n"])

    assert await asyncio.gather(*(one(n) for n in range(80))) == list(range(80))
    assert most <= 4
    assert (connections.size, connections.idle) == (4, 4)
    assert await opened.on_server(name) == 4


async def test_a_refused_statement_keeps_its_connection(opened: Any) -> None:
    """The server refusing a statement (division by zero) raises it and leaves the connection usable: the
    next statement runs on the same backend."""
    connections, _ = opened(2)
    [before] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await connections.fetch("SELECT 1 / $1::int", 0)
    [after] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    assert after["pid"] == before["pid"] and (connections.size, connections.idle) == (1, 1)


async def test_a_session_the_server_ends_mid_statement_is_not_reused(opened: Any) -> None:
    """A backend terminated while it runs a statement answers FATAL (admin shutdown): the caller gets that
    error and the connection is dropped, not put back; the next statement runs on a new backend."""
    connections, _ = opened(1)
    [first] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    running = asyncio.create_task(connections.fetch("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.2)
    await opened.admin.execute("SELECT pg_terminate_backend($1)", first["pid"])
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
        await running
    assert (connections.size, connections.idle) == (0, 0)
    [second] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    assert second["pid"] != first["pid"]


async def test_a_cancelled_statement_closes_its_connection(opened: Any) -> None:
    """A caller cancelled mid-statement never puts its connection back: it is closed (the server's backend
    goes, its query with it), and the next caller opens a fresh one."""
    connections, name = opened(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connections.fetch("SELECT pg_sleep(30)"), 0.2)
    assert (connections.size, connections.idle) == (0, 0)
    for _ in range(50):
        if await opened.on_server(name) == 0:
            break
        await asyncio.sleep(0.05)
    assert await opened.on_server(name) == 0
    assert await connections.fetch("SELECT 1 AS one") == [(1,)]


async def test_a_connection_the_server_closed_is_replaced(opened: Any) -> None:
    """An idle connection whose backend was terminated (a server restart, an administrator) is not handed
    out again: the next statement runs on a new backend."""
    connections, _ = opened(1)
    [first] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    await opened.admin.execute("SELECT pg_terminate_backend($1)", first["pid"])
    await asyncio.sleep(0.3)  # the client sees the socket close
    [second] = await connections.fetch("SELECT pg_backend_pid() AS pid")
    assert second["pid"] != first["pid"] and connections.size == 1


async def test_a_waiter_cancelled_in_line_loses_nothing(opened: Any) -> None:
    """With the only connection busy, a caller waiting for it is cancelled; the connection then goes back on
    the list (not to the cancelled caller), and the next caller gets it."""
    connections, _ = opened(1)
    busy = asyncio.create_task(connections.fetch("SELECT pg_sleep(0.3)"))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(connections.fetch("SELECT 1 AS one"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await busy
    assert (connections.size, connections.idle) == (1, 1)
    assert await connections.fetch("SELECT 2 AS two") == [(2,)]


async def test_a_failed_connect_frees_its_slot(postgres_database: str, opened: Any) -> None:
    """When opening a connection fails (the server unreachable), the caller gets the error and the slot is
    free again: the next caller opens one."""
    attempts = 0

    async def connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionRefusedError("the database is down")
        return await asyncpg.connect(postgres_database)

    connections, _ = opened(1, connect)
    with pytest.raises(ConnectionRefusedError):
        await connections.fetch("SELECT 1")
    assert connections.size == 0
    assert await connections.fetch("SELECT 3 AS three") == [(3,)]


async def test_close_ends_idle_and_waiting_callers(opened: Any) -> None:
    """Closing: idle connections close at once, a caller waiting in line gets an error, the busy connection
    closes when its statement ends, and nothing more is handed out."""
    connections, name = opened(1)
    busy = asyncio.create_task(connections.fetch("SELECT pg_sleep(0.3)"))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(connections.fetch("SELECT 1"))
    await asyncio.sleep(0.05)
    await connections.close()
    with pytest.raises(asyncpg.InterfaceError):
        await waiting
    await busy
    assert connections.size == 0
    with pytest.raises(asyncpg.InterfaceError):
        await connections.fetch("SELECT 1")
    for _ in range(50):
        if await opened.on_server(name) == 0:
            break
        await asyncio.sleep(0.05)
    assert await opened.on_server(name) == 0
