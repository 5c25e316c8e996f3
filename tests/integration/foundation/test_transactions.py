"""After-commit hooks: run in order once the outermost write transaction commits, dropped when it rolls back."""

from __future__ import annotations

import pytest

from backend import db
from backend.approvals import flows
from backend.audit.tables import AuditEvent
from backend.transactions import after_commit, current_transaction, write_transaction

ORG = "00000000-0000-0000-0000-00000000a0f1"


async def _committed_rows() -> int:
    return await AuditEvent.count().where(AuditEvent.org_id == ORG)


async def test_hooks_run_in_order_after_the_outermost_commit_and_never_after_a_rollback(database_url: str) -> None:
    from backend.audit.service import Actor, record

    engine = await db.connect(database_url)
    try:
        await db.migrate()
        seen: list[tuple[str, int, bool]] = []

        def hook(name: str) -> flows.Effect:
            async def run() -> None:
                # The row is committed (visible) and the hook runs outside any transaction.
                seen.append((name, await _committed_rows(), current_transaction() is None))

            return run

        async with write_transaction():
            await record(ORG, "outer", Actor.system())
            after_commit(hook("first"))
            async with flows.unit_of_work():  # nested: joins the outer transaction
                flows.after_commit(hook("second"))
            assert seen == []  # the inner block's end is not a commit
            after_commit(hook("third"))
            assert seen == []
        assert seen == [("first", 1, True), ("second", 1, True), ("third", 1, True)]

        async def failing_unit_of_work() -> None:
            async with write_transaction():
                await record(ORG, "doomed", Actor.system())
                after_commit(hook("dropped"))
                raise RuntimeError("rolled back")

        seen.clear()
        with pytest.raises(RuntimeError, match="rolled back"):
            await failing_unit_of_work()
        assert seen == []
        assert await _committed_rows() == 1

        with pytest.raises(RuntimeError, match="needs an enclosing write_transaction"):
            after_commit(hook("orphan"))
    finally:
        await db.disconnect(engine)
