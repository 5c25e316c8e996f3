"""Write transactions that serialize where it matters, on both databases."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from backend import piccolo_conf


def _engine() -> object:
    if piccolo_conf.DB is None:
        raise RuntimeError("no database configured; call backend.db.connect first")
    return piccolo_conf.DB


@asynccontextmanager
async def write_transaction() -> AsyncIterator[None]:
    """A transaction for read-modify-write work.

    SQLite: BEGIN IMMEDIATE takes the write lock up front, so two writers never interleave.
    PostgreSQL: a normal transaction; callers add `lock()` or conditional UPDATEs for ordering.
    Nested use joins the outer transaction.
    """
    engine = _engine()
    if isinstance(engine, SQLiteEngine):
        async with engine.transaction(transaction_type=TransactionType.immediate):
            yield
    else:
        async with engine.transaction():  # type: ignore[attr-defined]
            yield


async def lock(name: str) -> None:
    """Serialize on `name` until the surrounding transaction ends (PostgreSQL advisory lock)."""
    engine = _engine()
    if isinstance(engine, SQLiteEngine):
        return  # the immediate transaction already holds the only write lock
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    await engine.run_ddl(f"SELECT pg_advisory_xact_lock({key})")  # type: ignore[attr-defined]
