"""The one migration history applies to SQLite and PostgreSQL; the audit chain holds on both."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from backend import db
from backend.audit.service import Actor, record, verify
from backend.audit.tables import AuditEvent
from backend.piccolo_app import ALL_TABLES


async def test_migrations_create_every_table_and_are_idempotent(database_url: str) -> None:
    engine = await db.connect(database_url)
    try:
        await db.migrate()  # already migrated by the fixture on PostgreSQL; first run on SQLite
        assert await db.migrate() == []
        for table in ALL_TABLES:
            assert await table.table_exists(), table._meta.tablename
    finally:
        await db.disconnect(engine)


async def _leading_index_columns(table: str) -> set[str]:
    """The first column of every index of `table` in the connected database."""
    if db.is_postgres():
        rows = await AuditEvent.raw(
            "SELECT a.attname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] WHERE c.relname = {}", table
        )
        return {row["name"] for row in rows}
    found = set()
    for index in await AuditEvent.raw(f"PRAGMA index_list('{table}')"):
        columns = await AuditEvent.raw(f"PRAGMA index_info('{index['name']}')")
        if columns and columns[0]["name"]:
            found.add(columns[0]["name"])
    return found


async def test_every_column_the_tables_index_is_indexed_in_the_database(hub: Any) -> None:
    """Each column a table declares `index=True` or `unique=True` leads an index after the migrations, on
    both databases (the migrations and the table classes say the same), and the foreign keys requests
    are read by are among them (PostgreSQL does not index a foreign key by itself)."""
    declared: dict[str, set[str]] = {}
    for table in ALL_TABLES:
        for column in table._meta.columns:
            if (column._meta.index or column._meta.unique) and not column._meta.primary_key:
                declared.setdefault(table._meta.tablename, set()).add(column._meta.db_column_name)
    for needed in (("vote", "request"), ("notification_delivery", "request"), ("notification_attempt", "delivery"),
                   ("chat_comment", "request"), ("chat_action_token", "request")):
        assert needed[1] in declared.get(needed[0], set()), needed
    missing = {
        (table, column)
        for table, columns in declared.items()
        for column in columns - await _leading_index_columns(table)
    }
    assert not missing, f"declared indexed, no index in the database: {sorted(missing)}"


async def test_audit_chain_verifies_and_reports_the_first_altered_event(hub: Any) -> None:
    org = "00000000-0000-0000-0000-00000000a0d1"
    for n in range(5):
        await record(org, "test.event", Actor("user", "u1", "alice@x.test"), data={"n": n})
    assert (await verify(org)).to_dict() == {"ok": True, "events": 5, "first_broken_seq": None, "problem": None}

    await AuditEvent.update({AuditEvent.data: {"n": 99}}).where(
        (AuditEvent.org_id == org) & (AuditEvent.seq == 3)
    )
    result = await verify(org)
    assert not result.ok
    assert result.first_broken_seq == 3
    assert result.problem == "event content does not match its hash"


async def test_audit_chain_reports_a_removed_event(hub: Any) -> None:
    org = "00000000-0000-0000-0000-00000000a0d2"
    for n in range(4):
        await record(org, "test.event", Actor.system(), data={"n": n})
    await AuditEvent.delete().where((AuditEvent.org_id == org) & (AuditEvent.seq == 2))
    result = await verify(org)
    assert (result.ok, result.first_broken_seq, result.problem) == (False, 2, "event 2 is missing")


async def test_audit_chain_reports_events_removed_from_the_end(hub: Any) -> None:
    org = "00000000-0000-0000-0000-00000000a0d6"
    for n in range(5):
        await record(org, "test.event", Actor.system(), data={"n": n})
    await AuditEvent.delete().where((AuditEvent.org_id == org) & (AuditEvent.seq >= 4))
    result = await verify(org)
    assert (result.ok, result.first_broken_seq) == (False, 4)
    assert result.problem == "events 4..5 are missing from the end of the chain"


async def test_concurrent_appends_never_fork_the_chain(hub: Any) -> None:
    org = "00000000-0000-0000-0000-00000000a0d3"
    await asyncio.gather(*(record(org, "race", Actor.system(), data={"n": n}) for n in range(25)))
    rows = await AuditEvent.select(AuditEvent.seq).where(AuditEvent.org_id == org).order_by(AuditEvent.seq)
    assert [row["seq"] for row in rows] == list(range(1, 26))
    assert (await verify(org)).ok


async def test_verify_during_appends_sees_a_whole_chain(hub: Any) -> None:
    """Events appended while a verification walks the chain are not mistaken for a broken end."""
    org = "00000000-0000-0000-0000-00000000a0d7"
    for n in range(3):
        await record(org, "test.event", Actor.system(), data={"n": n})
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await record(org, "race", Actor.system(), data={"n": n})

    task = asyncio.create_task(writer())
    try:
        results = [await verify(org, batch=1) for _ in range(15)]
    finally:
        stop.set()
        await task
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert (await verify(org)).ok


async def test_external_ids_make_ingestion_idempotent(hub: Any) -> None:
    org = "00000000-0000-0000-0000-00000000a0d4"
    first = await record(org, "call.allow", Actor("key", "k"), external_id="spool-1")
    again = await record(org, "call.allow", Actor("key", "k"), external_id="spool-1")
    assert first["hash"] == again["hash"]
    assert await AuditEvent.count().where(AuditEvent.org_id == org) == 1


async def test_audit_chain_has_an_org_seq_index(hub: Any) -> None:
    from backend import db

    if db.is_postgres():
        rows = await AuditEvent.raw("SELECT indexdef FROM pg_indexes WHERE indexname = 'audit_event_org_seq'")
        assert rows and "(org_id, seq)" in rows[0]["indexdef"]
    else:
        rows = await AuditEvent.raw("PRAGMA index_info('audit_event_org_seq')")
        assert [row["name"] for row in rows] == ["org_id", "seq"]


async def test_events_of_a_transaction_land_with_it_or_not_at_all(hub: Any) -> None:
    import pytest

    from backend.transactions import write_transaction

    org = "00000000-0000-0000-0000-00000000a0d5"
    async with write_transaction():
        await record(org, "first", Actor.system())
        await record(org, "second", Actor.system())
        # Appended as the transaction's last statements: not in the chain yet.
        assert await AuditEvent.count().where(AuditEvent.org_id == org) == 0
    rows = await AuditEvent.select(AuditEvent.seq, AuditEvent.kind).where(AuditEvent.org_id == org).order_by(
        AuditEvent.seq
    )
    assert [(r["seq"], r["kind"]) for r in rows] == [(1, "first"), (2, "second")]

    async def failing_unit_of_work() -> None:
        async with write_transaction():
            await record(org, "rolled-back", Actor.system())
            raise RuntimeError("the unit of work fails")

    with pytest.raises(RuntimeError, match="the unit of work fails"):
        await failing_unit_of_work()
    assert await AuditEvent.count().where(AuditEvent.org_id == org) == 2
    assert (await verify(org)).ok


async def test_concurrent_multi_event_transactions_chain_in_order_with_any_text(hub: Any) -> None:
    """Appends after an org's first event chain in one statement on PostgreSQL (the hash finished in SQL):
    the hashes must still be `event_hash`'s, for non-ASCII text, nested data and several events at once."""
    from backend.transactions import write_transaction

    org = "00000000-0000-0000-0000-00000000a0d6"
    await record(org, "first", Actor.system())

    async def unit(n: int) -> None:
        async with write_transaction():
            for k in range(3):
                data = {"n": n, "k": k, "text": "é ü 漢字 \"quoted\" \\ \n", "nested": {"b": [1, 2.5, None], "a": True}}
                await record(org, f"multi.{k}", Actor("user", f"u{n}", "Zoë <z@example.com>"), data=data,
                             subject_type="request", subject_id=f"r-{n}")

    await asyncio.gather(*(unit(n) for n in range(12)))
    rows = await AuditEvent.select(AuditEvent.seq, AuditEvent.kind, AuditEvent.subject_id).where(
        AuditEvent.org_id == org
    ).order_by(AuditEvent.seq)
    assert [row["seq"] for row in rows] == list(range(1, 38))
    # A transaction's events are consecutive and in the order they were recorded.
    for start in range(1, 37, 3):
        group = rows[start : start + 3]
        assert [r["kind"] for r in group] == ["multi.0", "multi.1", "multi.2"]
        assert len({r["subject_id"] for r in group}) == 1
    assert (await verify(org)).ok


def test_fetch_numbers_placeholders_as_piccolo_does() -> None:
    from piccolo.querystring import QueryString

    sql = "SELECT {} AS a FROM t WHERE b = {} AND c IN ({}, {}) AND d = 'x'"
    assert db.numbered(sql) == QueryString(sql, 1, 2, 3, 4).compile_string("postgres")[0]
    assert db.numbered(sql) == "SELECT $1 AS a FROM t WHERE b = $2 AND c IN ($3, $4) AND d = 'x'"


async def test_fetch_runs_in_the_tasks_transaction_and_on_the_pool_outside_it(hub: Any) -> None:
    """`db.fetch` (the hot path's raw SQL, straight to asyncpg on PostgreSQL) sees what the running
    transaction wrote and rolls back with it; outside a transaction it answers like `Table.raw`."""
    import pytest

    from backend.audit.tables import AuditHead
    from backend.transactions import write_transaction

    org = "00000000-0000-0000-0000-00000000a0d8"
    count = "SELECT CAST(COUNT(*) AS INTEGER) AS n, MAX(hash) AS hash FROM audit_head WHERE org_id = {}"

    async def unit_of_work() -> None:
        async with write_transaction():
            await AuditHead.insert(AuditHead(org_id=org, seq=0, hash="h" * 64))
            assert await db.fetch(count, org) == [{"n": 1, "hash": "h" * 64}]  # the transaction's connection
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        await unit_of_work()
    assert await db.fetch(count, org) == [{"n": 0, "hash": None}] == await AuditEvent.raw(count, org)
    assert await db.fetch("SELECT CAST({} AS TEXT) AS a, CAST({} AS INTEGER) + 1 AS b", "x", 41) == [
        {"a": "x", "b": 42}
    ]


async def test_a_local_postgresql_is_reached_through_its_socket_directory(
    _postgres_migrated: str,  # noqa: PT019 - its value, the database URL, is used
) -> None:
    """PRELOOP_DATABASE_URL=postgres://user@/db?host=/socket/dir: the hub talks to the server over its unix
    socket (no TCP), reads and writes as over TCP."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    from backend.settings import load_settings

    conn = await asyncpg.connect(_postgres_migrated)
    try:
        socket_dir = str(await conn.fetchval("SHOW unix_socket_directories")).split(",")[0].strip()
    finally:
        await conn.close()
    parts = urlsplit(_postgres_migrated)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@", query=f"host={socket_dir}"))
    assert load_settings({"PRELOOP_DATABASE_URL": url}).database_url == url
    engine = await db.connect(url)
    try:
        rows = await db.fetch("SELECT inet_server_addr() IS NULL AS over_socket, current_database() AS name")
        assert rows == [{"over_socket": True, "name": parts.path.strip("/")}]
        assert await AuditEvent.count() >= 0  # the query builder's path too
    finally:
        await db.disconnect(engine)


async def test_fetch_statements_are_planned_once_per_connection(
    _postgres_migrated: str,  # noqa: PT019 - its value, the database URL, is used
) -> None:
    """`db.fetch`'s statements (found by key) run on connections that keep one generic plan per statement;
    Piccolo's queries and anything inside a transaction keep PostgreSQL's own choice of plan."""
    from backend.transactions import write_transaction

    engine = await db.connect(_postgres_migrated)
    mode = "SELECT current_setting('plan_cache_mode') AS mode"
    try:
        assert await db.fetch(mode) == [{"mode": "force_generic_plan"}]
        [(piccolo,)] = [tuple(r.values()) for r in await AuditEvent.raw(mode)]
        assert piccolo != "force_generic_plan"
        async with write_transaction():
            [(in_transaction,)] = [tuple(r.values()) for r in await db.fetch(mode)]
        assert in_transaction == piccolo
    finally:
        await db.disconnect(engine)
    assert id(engine) not in db._KEYED_POOLS  # closed with the engine


async def test_start_up_warns_when_the_servers_autovacuum_is_off(
    settings: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub on a PostgreSQL without autovacuum says so once at start-up (approvals slow down as history grows
    without it), exactly when the server itself reports it off; SQLite has nothing to say."""
    from backend.hub import Hub

    expected: list[str] = []
    if database_url.startswith("postgres"):
        conn = await asyncpg.connect(database_url)
        try:
            if await conn.fetchval("SHOW autovacuum") == "off":  # this machine's CI server: off
                expected = [db.AUTOVACUUM_OFF]
        finally:
            await conn.close()
    caplog.set_level(logging.WARNING, logger="preloop.db")
    running = Hub(settings)
    await running.start()
    try:
        assert await db.check_server() == expected
    finally:
        await running.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "preloop.db"] == expected * 2  # start + the check
