"""Shared fixtures: real SQLite and PostgreSQL, real Redis, a running hub.

Every DB-touching test runs twice, on SQLite and on PostgreSQL (the `database_url` fixture is
parametrized). With CI=true a missing PostgreSQL or Redis fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis as redis_sync

from backend.settings import Settings, load_settings
from tests.helpers import Org, free_port, make_org

# Reports leave xdist workers as valid UTF-8 (a surrogate in a captured log would end the run).
pytest_plugins = ["tests.report_utf8"]

PG_ADMIN_URL = os.environ.get("PRELOOP_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


def _worker_redis_url(url: str) -> str:
    """Under pytest-xdist each worker takes its own Redis database: gwN uses the given db + N
    (tests flush and count keys in their db, so two workers must never share one)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + int(worker[2:])}"


REDIS_URL = _worker_redis_url(os.environ.get("PRELOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL: one fresh database per test session, tables emptied between tests ----------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    name = f"preloop_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL}", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _postgres_migrated(postgres_database: str) -> str:
    from backend import db

    async def main() -> None:
        engine = await db.connect(postgres_database)
        try:
            await db.migrate()
        finally:
            await db.disconnect(engine)

    asyncio.run(main())
    return postgres_database


async def _truncate_postgres(url: str) -> None:
    from backend.piccolo_app import ALL_TABLES

    conn = await asyncpg.connect(url)
    try:
        # Between tests nothing else is connected to this worker's database: a connection still open belongs
        # to an earlier test's hub that did not close its pool, and may hold row locks inside a transaction
        # that the TRUNCATE would wait on for ever. End them, and say so (each is a leak to look for).
        left = await conn.fetch(
            "SELECT pid, state, now() - xact_start AS age, left(query, 200) AS query, pg_terminate_backend(pid) "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for row in left:
            if row["age"] is not None:  # inside a transaction: worth a line in the test's output
                print(f"ended a connection an earlier test left in a transaction ({row['state']}, {row['age']}): "
                      f"{row['query']}")
        await conn.execute("SET lock_timeout = '60s'")
        names = ", ".join(f'"{t._meta.tablename}"' for t in ALL_TABLES)
        await conn.execute(f"TRUNCATE {names} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'preloop.db'}"
    url: str = request.getfixturevalue("_postgres_migrated")
    asyncio.run(_truncate_postgres(url))
    return url


@pytest.fixture
def redis_url() -> str:
    """The worker's Redis db. Failed-credential counters per client address live there and every test
    comes from 127.0.0.1: each test starts with none, so earlier tests' wrong passwords, keys and
    schemathesis' made-up tokens never turn a later sign-in into a 429 (hub or live hub alike)."""
    client = redis_sync.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
        stale = list(client.scan_iter("preloop:auth:address:*"))
        if stale:
            client.delete(*stale)
    except redis_sync.RedisError as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "PRELOOP_DATABASE_URL": database_url,
            "PRELOOP_REDIS_URL": redis_url,
            "PRELOOP_DATA_DIR": str(tmp_path / "data"),
            "PRELOOP_DEMO": "false",
            "PRELOOP_SECRET_KEY": "test-secret",
            "PRELOOP_SWEEP_SECONDS": "1",
        }
    )


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Any]:
    """A started hub (database + Redis + bus + job queue), without an in-process worker."""
    from backend.hub import Hub

    running = Hub(settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def org(hub: Any) -> Org:
    return await make_org()


@pytest.fixture
async def client(hub: Any) -> AsyncIterator[Any]:
    """An HTTP client on the full app, in the test's own event loop (the hub fixture runs it)."""
    import httpx

    from backend.app import create_app

    app = create_app(hub=hub)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        http.hub = hub  # type: ignore[attr-defined]
        yield http


@dataclass
class LiveHub:
    url: str
    settings: Settings
    app: Any
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the hub's own event loop (its database pool lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture
def live_hub(settings: Settings) -> Iterator[LiveHub]:
    """The real hub served by uvicorn on a free port in a background thread (worker included)."""
    import uvicorn

    from backend.app import create_app

    port = free_port()
    app = create_app(settings, with_worker=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                           timeout_graceful_shutdown=2))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the hub did not start")
        time.sleep(0.02)
    try:
        yield LiveHub(f"http://127.0.0.1:{port}", settings, app, loop)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        loop.close()
