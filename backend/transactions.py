"""Write transactions that serialize where it matters, on both databases, and the work that waits for their commit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from backend import piccolo_conf

Hook = Callable[[], Awaitable[None]]


class TransactionState:
    """Per outermost write transaction: work to run as its last statements, work to run once it has
    committed, and scratch space."""

    def __init__(self) -> None:
        self.before_commit: list[Hook] = []
        self.after_commit: list[Hook] = []
        #: Work that must happen whether this transaction commits or rolls back: run, in order, once it
        #: has ended, outside it (each opens its own transaction).
        self.after_end: list[Hook] = []
        self.scratch: dict[str, Any] = {}
        self.closed = False


_STATE: ContextVar[TransactionState | None] = ContextVar("preloop_transaction", default=None)


def _engine() -> object:
    if piccolo_conf.DB is None:
        raise RuntimeError("no database configured; call backend.db.connect first")
    return piccolo_conf.DB


def current_transaction() -> TransactionState | None:
    """The enclosing write transaction's state, or None outside one (or once it has ended)."""
    state = _STATE.get()
    return state if state is not None and not state.closed else None


@asynccontextmanager
async def write_transaction() -> AsyncIterator[None]:
    """A transaction for read-modify-write work.

    SQLite: BEGIN IMMEDIATE takes the write lock up front, so two writers never interleave.
    PostgreSQL: a normal transaction; callers add `lock()` or conditional UPDATEs for ordering.
    Nested use joins the outer transaction. Hooks registered with `before_commit` run, in order,
    as the outermost transaction's last statements (so locks they take are held only briefly).
    Hooks registered with `after_commit` run, in order, once the outermost transaction has committed,
    outside it; when it rolls back they are dropped.
    """
    if current_transaction() is not None:
        yield  # nested: the outer transaction is already open (Piccolo treats nesting as a no-op)
        return
    state = TransactionState()
    token = _STATE.set(state)
    engine = _engine()
    try:
        if isinstance(engine, SQLiteEngine):
            async with engine.transaction(transaction_type=TransactionType.immediate):
                yield
                await _run_hooks(state)
        else:
            async with engine.transaction():  # type: ignore[attr-defined]
                yield
                await _run_hooks(state)
    finally:
        state.closed = True  # a task that outlived the transaction must not queue work on it
        _STATE.reset(token)
        for hook in state.after_end:
            await hook()
    # Only reached after a commit: an exception (the block's or the commit's) skips this.
    await _run_after_commit(state)


@asynccontextmanager
async def one_statement() -> AsyncIterator[None]:
    """Work that writes in one PostgreSQL statement, which is its own transaction (no BEGIN/COMMIT):
    `after_commit` hooks registered inside run once the block has ended without an exception.

    Inside a write transaction it joins it (the hooks wait for that transaction's commit). The block
    must not register `before_commit` work (e.g. `audit.record`): there is no commit to run it before.
    """
    if current_transaction() is not None:
        yield
        return
    state = TransactionState()
    token = _STATE.set(state)
    try:
        yield
    finally:
        state.closed = True
        _STATE.reset(token)
    if state.before_commit or state.after_end:
        raise RuntimeError("one_statement() has no commit to run before_commit / after_end work at")
    await _run_after_commit(state)


def after_commit(hook: Hook) -> None:
    """Run `hook` once the enclosing outermost write transaction commits; never if it rolls back.

    Wake-ups (bus messages, jobs) go here: a waiter woken before the commit would read the old row
    and sleep again, so announcing after the commit is what makes push-based waiting correct.
    """
    state = current_transaction()
    if state is None:
        raise RuntimeError("after_commit() needs an enclosing write_transaction()")
    state.after_commit.append(hook)


async def _run_after_commit(state: TransactionState) -> None:
    for hook in state.after_commit:
        await hook()


async def _run_hooks(state: TransactionState) -> None:
    while state.before_commit:
        await state.before_commit.pop(0)()


def is_sqlite() -> bool:
    return isinstance(_engine(), SQLiteEngine)


async def lock(name: str) -> None:
    """Serialize on `name` until the surrounding transaction ends (PostgreSQL advisory lock)."""
    engine = _engine()
    if isinstance(engine, SQLiteEngine):
        return  # the immediate transaction already holds the only write lock
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    await engine.run_ddl(f"SELECT pg_advisory_xact_lock({key})")  # type: ignore[attr-defined]
