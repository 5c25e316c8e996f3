"""The JSON PostgreSQL writes into the audit chain is the JSON Python hashes (claim/report append in SQL)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from backend.approvals.tables import ApprovalRequest
from backend.audit import service as audit
from tests.conftest import _truncate_postgres


@pytest.fixture
def database_url(_postgres_migrated: str) -> str:
    """Only PostgreSQL: SQLite appends through Python."""
    asyncio.run(_truncate_postgres(_postgres_migrated))
    return _postgres_migrated


OBJECTS: list[dict[str, Any]] = [
    {"claimed_at": "2026-12-06T22:50:01.123456+00:00", "claimed_by": "agent", "success": True, "error": None},
    {"result_summary": 'naïve "quoted" \\ back\nnew\ttab \r\b\f \x01\x1f \x7f ✓ \u2028 😀 {} $1 %s', "ok": False},
    {"B": "upper sorts before lower", "a": "", "ä": "non-ASCII keys sort by code point", "aa": "x", "a b": "y"},
    {},
]


async def test_canonical_object_sql_matches_the_python_canonical_json(client: Any) -> None:
    for value in OBJECTS:
        [row] = await ApprovalRequest.raw(
            f"SELECT {audit.canonical_object_sql('{}::jsonb')} AS text", json.dumps(value)
        )
        assert row["text"] == audit._canonical(value)


async def test_one_statement_appends_race_with_transactions_and_keep_the_head_exact(client: Any) -> None:
    """The one-statement appends lock and move the head with `INSERT ... ON CONFLICT DO UPDATE` and chain
    their events from the hash it moved from (`audit_head.prev_hash`). Racing them, one and two events at a
    time, against transactions' appends on one org: every position once, in order, each statement's events
    consecutive, the chain verifies, and the head names the newest event and the hash the latest append
    started from (the first event of a two-event statement chains from it)."""
    from backend import db
    from backend.audit.tables import AuditEvent, AuditHead

    org = "00000000-0000-0000-0000-00000000a0e1"
    actor = audit.Actor("user", "u1", "Zoë <z@example.com>")
    await audit.record(org, "first", actor)

    def row(kind: str, n: int) -> dict[str, Any]:
        data = {"n": n, "text": 'é "q" \\ \n {} $1', "nested": {"a": [1, None, True]}}
        return audit.event_row(org, kind, actor, "request", f"r-{n}", data, datetime.now(UTC))

    async def one(n: int) -> None:
        sql, args = audit.chained_event_sql(row("one", n), after="go")
        [found] = await db.fetch(f"WITH go AS (SELECT 1), {sql} SELECT (SELECT count(*) FROM logged) AS n", *args)
        assert found["n"] == 1

    async def two(n: int) -> None:
        sql, args = audit.chained_events_sql([row("two.a", n), row("two.b", n)], after="go")
        [found] = await db.fetch(f"WITH go AS (SELECT 1), {sql} SELECT (SELECT count(*) FROM logged) AS n", *args)
        assert found["n"] == 2

    async def unit(n: int) -> None:
        await audit.record(org, "tx", actor, subject_type="request", subject_id=f"r-{n}", data={"n": n})

    await asyncio.gather(*(f(n) for n in range(10) for f in (one, two, unit)))
    rows = await AuditEvent.select().where(AuditEvent.org_id == org).order_by(AuditEvent.seq)
    assert [r["seq"] for r in rows] == list(range(1, 42))
    kinds = [r["kind"] for r in rows]
    for i, kind in enumerate(kinds):
        if kind == "two.a":
            assert kinds[i + 1] == "two.b" and rows[i + 1]["subject_id"] == rows[i]["subject_id"]
    assert (await audit.verify(org)).ok
    [head] = await AuditHead.select().where(AuditHead.org_id == org)
    started = rows[-2]["prev_hash"] if rows[-1]["kind"] == "two.b" else rows[-1]["prev_hash"]
    assert (head["seq"], head["hash"], head["prev_hash"]) == (41, rows[-1]["hash"], started)

    # Nothing is appended where `after` returns no row, or for an org without a head yet.
    sql, args = audit.chained_event_sql(row("none", 0), after="go")
    count = "SELECT (SELECT count(*) FROM logged) AS n"
    [found] = await db.fetch(f"WITH go AS (SELECT 1 WHERE false), {sql} {count}", *args)
    assert found["n"] == 0
    other = {**row("none", 0), "org_id": "00000000-0000-0000-0000-00000000a0e2"}
    sql, args = audit.chained_events_sql([other], after="go")
    [found] = await db.fetch(f"WITH go AS (SELECT 1), {sql} SELECT (SELECT count(*) FROM logged) AS n", *args)
    assert found["n"] == 0
    assert not await AuditHead.select().where(AuditHead.org_id == other["org_id"])
    assert (await audit.verify(org)).ok and await AuditEvent.count().where(AuditEvent.org_id == org) == 41


async def test_thousands_of_racing_one_statement_appends_never_collide(client: Any, database_url: str) -> None:
    """32 connections appending one and two events at a time to one org's chain, 8,000 statements. Before
    the head's proposed row carried an id no row has, about one statement in 6,400 failed here with a
    primary-key violation (PostgreSQL's first conflict check had missed a head moved meanwhile)."""
    import asyncpg

    from backend import db
    from backend.audit.tables import AuditEvent, AuditHead

    org = "00000000-0000-0000-0000-00000000a0e3"
    actor = audit.Actor("key", "k1", "agent")
    await audit.record(org, "first", actor)
    count = "SELECT (SELECT count(*) FROM logged) AS n"
    failures: list[str] = []

    async def connection(k: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await appends(conn, k)
        finally:
            await conn.close()

    async def appends(conn: Any, k: int) -> None:
        for i in range(250):
            row = audit.event_row(org, "race", actor, "request", f"{k}-{i}", {"k": k, "i": i}, datetime.now(UTC))
            if i % 2:
                sql, args = audit.chained_event_sql(row, after="go")
            else:
                sql, args = audit.chained_events_sql([row, {**row, "kind": "race.b"}], after="go")
            try:
                await conn.fetch(db.numbered(f"WITH go AS (SELECT 1), {sql} {count}"), *args)
            except Exception as exc:  # collected: one failure must not hide how many there were
                failures.append(repr(exc))

    await asyncio.gather(*(connection(k) for k in range(32)))
    assert failures == []
    total = 1 + 32 * (125 * 2 + 125)
    assert await AuditEvent.count().where(AuditEvent.org_id == org) == total
    [head] = await AuditHead.select(AuditHead.seq).where(AuditHead.org_id == org)
    assert head["seq"] == total
    assert (await audit.verify(org)).ok
