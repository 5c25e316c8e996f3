"""Database engines: SQLite (embedded) or PostgreSQL (scaled), chosen by URL; migrations."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine
from piccolo.querystring import QueryString

from backend import piccolo_conf
from backend.connections import StatementConnections
from backend.errors import StartupError
from backend.observability import metrics
from backend.piccolo_app import ALL_TABLES, APP_CONFIG
from backend.settings import validate_database_url

os.environ.setdefault("PICCOLO_CONF", "backend.piccolo_conf")
logger = logging.getLogger("preloop.db")


def engine_for(url: str) -> Engine[Any]:
    validate_database_url(url)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(unquote(url[len("sqlite:///") :]))
        path.parent.mkdir(parents=True, exist_ok=True)
        # A generous busy timeout: concurrent writers queue instead of failing.
        return SQLiteEngine(path=str(path), timeout=30)
    return PostgresEngine(config={"dsn": url})


def use_database(engine: Engine[Any]) -> Engine[Any]:
    """Point every table (and Piccolo's migration machinery) at `engine`."""
    piccolo_conf.DB = engine
    for table in [*ALL_TABLES, Migration]:
        table._meta.db = engine
    return engine


def is_postgres(engine: Engine[Any] | None = None) -> bool:
    engine = engine or piccolo_conf.DB
    return engine is not None and engine.engine_type == "postgres"


POOL_SIZE = 20
"""Connections per process for Piccolo's queries (PostgreSQL)."""
KEYED_POOL_SIZE = 10
"""Connections per process for `fetch`'s statements, opened on demand (PostgreSQL)."""
_KEYED_POOLS: dict[int, StatementConnections] = {}  # id(engine) -> the connections `fetch` uses


async def connect(url: str) -> Engine[Any]:
    """Create the engine, check it answers, start a pool on PostgreSQL."""
    engine = use_database(engine_for(url))
    try:
        await ping(engine)
    except Exception as exc:  # any driver error means "unreachable" here
        raise StartupError(
            f"PRELOOP_DATABASE_URL: cannot reach the database at {_redact(url)}: {_one_line(exc)}"
        ) from exc
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(min_size=1, max_size=POOL_SIZE, init=_count_queries, reset=_keep_session)
        _KEYED_POOLS[id(engine)] = StatementConnections(  # `fetch` counts its statements itself
            functools.partial(
                asyncpg.connect, **engine.config, server_settings={"plan_cache_mode": "force_generic_plan"}
            ),
            KEYED_POOL_SIZE,
        )
    else:
        await engine.run_ddl("PRAGMA journal_mode=WAL")
    return engine


async def _count_queries(connection: Any) -> None:
    """Every connection of Piccolo's pool counts the statements it sends (`preloop_db_queries_total` on
    /metrics). The keyed connections (`StatementConnections`) have no query logger: asyncpg's logging wraps
    each statement in a context manager, a record and a loop callback (~10-20 µs of CPU a statement), so
    `fetch` counts what it sends there itself."""
    connection.add_query_logger(metrics.count_query)


async def _keep_session(connection: Any) -> None:
    """Hand a connection back to the pool without asyncpg's reset query.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on
    every release: one round trip per Piccolo query outside a transaction, a quarter of a cycle's
    statements. Preloop keeps no session state on pooled connections (locks are transaction-scoped
    `pg_advisory_xact_lock` / `FOR UPDATE`, no LISTEN, no SET, no cursors), and asyncpg still rolls
    back an open transaction before calling this, so there is nothing to reset.
    """
    return


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`sql` with Piccolo's `{}` placeholders numbered `$1`, `$2`, … as `QueryString` compiles them for
    PostgreSQL."""
    parts: list[str] = []
    count = 0
    for literal, field, _, _ in Formatter().parse(sql):
        parts.append(literal)
        if field is not None:
            count += 1
            parts.append(f"${count}")
    return "".join(parts)


async def fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of raw SQL written with `{}` placeholders: what `Table.raw(sql, *args)` returns, for the
    statements every approval call sends.

    On PostgreSQL the placeholders are numbered once per statement text (`numbered`, cached) and the
    statement goes straight to asyncpg: on the connection of the Piccolo transaction running in this
    task, else on one of the keyed connections (`StatementConnections`, a free list: asyncpg's pool
    costs ~40 µs of CPU per acquire and release). `Table.raw` parses the text and rebuilds it on every call, which
    was ~7 % of the API's CPU per approval cycle for these long statements. Elsewhere (SQLite) and for
    nested `QueryString` arguments it is `Table.raw`.

    The keyed connections plan each statement once (`plan_cache_mode = force_generic_plan`):
    PostgreSQL otherwise keeps planning these long statements again on every execution, because its
    estimate for the generic plan is higher than for a plan made for the values, though both find the
    rows by key. That was ~11 % of PostgreSQL's CPU per cycle. So use `fetch` only for statements that
    find their rows by id, org or another key, whose best plan does not depend on the values; a filter
    on a skewed column (a status, a time range) belongs in Piccolo's queries, which keep PostgreSQL's
    own choice on the main pool.
    """
    engine = piccolo_conf.DB
    if (
        isinstance(engine, PostgresEngine)
        and engine.pool is not None
        and not any(isinstance(arg, QueryString) for arg in args)
    ):
        text = numbered(sql)
        transaction = engine.current_transaction.get()
        if transaction is not None:
            records = await transaction.connection.fetch(text, *args)
        elif (keyed := _KEYED_POOLS.get(id(engine))) is not None:
            metrics.DB_QUERIES.inc()
            records = await keyed.fetch(text, *args)
        else:
            async with engine.pool.acquire() as connection:
                records = await connection.fetch(text, *args)
        return [dict(record) for record in records]
    # Raw SQL runs on the engine every table shares; the table only names it.
    rows: list[dict[str, Any]] = await ALL_TABLES[0].raw(sql, *args)
    return rows


AUTOVACUUM_OFF = (
    "PostgreSQL's autovacuum is off on this server: every approval updates its request row several times "
    "and the org's audit chain head on every event, so without vacuum and analyze dead row versions pile "
    "up and query plans made while the tables were small stay in use, and each approval gets slower as "
    "history grows; turn it on (autovacuum = on, PostgreSQL's default) or run VACUUM (ANALYZE) on a schedule"
)


async def check_server(engine: Engine[Any] | None = None) -> list[str]:
    """What about the database server an operator should hear at start-up (logged as warnings, returned)."""
    engine = engine or piccolo_conf.DB
    if not isinstance(engine, PostgresEngine):
        return []
    rows = await engine.run_querystring(QueryString("SELECT current_setting('autovacuum') AS autovacuum"))
    problems = [AUTOVACUUM_OFF] if rows and rows[0]["autovacuum"] == "off" else []
    for problem in problems:
        logger.warning(problem)
    return problems


async def disconnect(engine: Engine[Any]) -> None:
    if isinstance(engine, PostgresEngine):
        keyed = _KEYED_POOLS.pop(id(engine), None)
        if keyed is not None:
            await keyed.close()
        await engine.close_connection_pool()


async def ping(engine: Engine[Any] | None = None) -> None:
    engine = engine or piccolo_conf.DB
    if engine is None:
        raise StartupError("no database configured")
    await engine.run_ddl("SELECT 1")


async def migrate() -> list[str]:
    """Apply every migration not yet applied; return their ids. Piccolo's chatter goes to the log."""
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        manager = ForwardsMigrationManager(app_name="preloop")
        await manager.create_migration_table()
        before = set(await Migration.get_migrations_which_ran(app_name="preloop"))
        result = await manager.run()
    if not result.success:
        raise StartupError(f"migrations failed: {result.message}\n{chatter.getvalue()}")
    after = set(await Migration.get_migrations_which_ran(app_name="preloop"))
    applied = sorted(after - before)
    for migration_id in applied:
        logger.info("applied migration", extra={"migration": migration_id})
    return applied


@functools.cache
def known_migrations() -> tuple[str, ...]:
    """Ids of the migrations this code ships (imported once: Piccolo's finder edits sys.path)."""
    manager = BaseMigrationManager()
    return tuple(manager.get_migration_ids(manager.get_migration_modules(str(APP_CONFIG.migrations_folder_path))))


async def pending_migrations() -> list[str]:
    """Migrations this code ships that the database has not applied (all of them on an empty database)."""
    if not await Migration.table_exists():
        return list(known_migrations())
    ran = set(await Migration.get_migrations_which_ran(app_name="preloop"))
    return [m for m in known_migrations() if m not in ran]


RETRY_AFTER_SECONDS = 5  # what a 503 tells clients while the database is unreachable


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) means the database could not be reached or dropped the
    connection: the request did not happen, so the API answers 503 + Retry-After, not 500."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            ConnectionError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.exceptions.CannotConnectNowError
            | asyncpg.exceptions.ConnectionDoesNotExistError
            # The server is full (max_connections, a role's or database's connection limit): the
            # request did not happen either, and a retry shortly is the right answer.
            | asyncpg.exceptions.TooManyConnectionsError,
        ):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def describe(exc: BaseException) -> str:
    return _one_line(exc)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
