"""GET /ready: 200 when database, Redis and migrations are in order; 503 naming what is wrong otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from piccolo.apps.migrations.tables import Migration

from backend import db
from backend.app import create_app
from backend.hub import Hub
from backend.settings import load_settings
from tests.helpers import free_port


async def test_ready_when_everything_answers(client: Any) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["problems"] == []
    assert body["database"] == {"ok": True} and body["redis"] == {"ok": True}
    assert body["migrations"] == {"ok": True, "pending": []}


async def test_not_ready_while_a_migration_is_missing(client: Any) -> None:
    latest = db.known_migrations()[-1]
    await Migration.delete().where(Migration.name == latest)  # as if new code met an old database
    response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["migrations"] == {"ok": False, "pending": [latest]}
    assert any("preloop db migrate" in p and latest in p for p in body["problems"]), body
    await Migration.insert(Migration(name=latest, app_name="preloop"))
    assert (await client.get("/ready")).status_code == 200


async def test_not_ready_when_the_sqlite_file_is_unreachable(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    settings = load_settings({"PRELOOP_DATA_DIR": str(data), "PRELOOP_REDIS_URL": redis_url, "PRELOOP_DEMO": "false",
                              "PRELOOP_SECRET_KEY": "test-secret"})
    hub = Hub(settings)
    await hub.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(hub=hub)),
                                     base_url="http://hub.test") as http:
            assert (await http.get("/ready")).status_code == 200
            data.rename(tmp_path / "moved")  # the database file's directory is gone
            response = await http.get("/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["ready"] is False and body["database"]["ok"] is False
            assert body["redis"] == {"ok": True}
            assert any(p.startswith("database unreachable") for p in body["problems"]), body
            (tmp_path / "moved").rename(data)
            assert (await http.get("/ready")).status_code == 200
    finally:
        await hub.stop()


class TcpProxy:
    """A TCP relay on its own thread and loop that the test can cut: open connections drop, new ones are refused.

    Its own loop, because PostgresEngine() asks the server's version synchronously while the test's loop waits.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TcpProxy:
        self.thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        async def cut() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self._run(cut())


@pytest.fixture
def postgres_url(_postgres_migrated: str) -> str:
    return _postgres_migrated


@pytest.mark.postgres
async def test_not_ready_when_postgres_is_cut_off(redis_url: str, tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username
                                          else f"127.0.0.1:{proxy.port}"))
    with proxy:
        await _ready_until_cut(proxy, via_proxy, redis_url, tmp_path)


async def _ready_until_cut(proxy: TcpProxy, via_proxy: str, redis_url: str, tmp_path: Path) -> None:
    hub = Hub(load_settings({"PRELOOP_DATABASE_URL": via_proxy, "PRELOOP_REDIS_URL": redis_url, "PRELOOP_DEMO": "false",
                             "PRELOOP_DATA_DIR": str(tmp_path / "data"), "PRELOOP_SECRET_KEY": "test-secret"}))
    await hub.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(hub=hub)),
                                     base_url="http://hub.test") as http:
            assert (await http.get("/ready")).status_code == 200
            proxy.cut()
            response = await http.get("/ready")
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["database"]["ok"] is False and body["database"]["error"]
            assert body["migrations"]["ok"] is False
            assert body["redis"] == {"ok": True}
            assert body["problems"][0].startswith("database unreachable"), body
            # /metrics still answers while the database is away (only the pending gauge goes stale).
            assert (await http.get("/metrics")).status_code == 200
    finally:
        with contextlib.suppress(Exception):
            await hub.stop()


@pytest.mark.postgres
async def test_a_full_postgres_is_unavailable_not_an_internal_error(postgres_url: str) -> None:
    """PostgreSQL refusing more connections (max_connections, a role's limit) means the request did not
    happen: the API answers 503 + Retry-After (as for an unreachable database), not 500."""
    import uuid

    import asyncpg

    role = f"preloop_full_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
        parts = urlsplit(postgres_url)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
        with pytest.raises(asyncpg.exceptions.TooManyConnectionsError) as refused:
            await asyncpg.connect(as_role)
        assert db.is_unreachable(refused.value)
        wrapped = RuntimeError("pool could not connect")
        wrapped.__cause__ = refused.value
        assert db.is_unreachable(wrapped)
        assert not db.is_unreachable(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
