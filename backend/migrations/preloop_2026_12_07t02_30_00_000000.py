"""One open request per call, enforced by the database; a version that every vote moves.

`approval_request_open_call`: at most one `pending` or `approved` request per (org, tool, server,
arguments hash, agent key), which the create's attach rule already kept under its lock. With the index
a create on PostgreSQL is one `INSERT … ON CONFLICT DO NOTHING` statement (no lock), and the locked
path stays for grants and attaching. `vote_version`: each vote adds one, so a vote written in one
statement can check that nobody voted since it read the request (see `flows._vote_in_sql`).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod
from piccolo.engine import engine_finder
from piccolo.engine.sqlite import SQLiteEngine

ID = "2026-12-07T02:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "one open request per call; vote_version"

# PostgreSQL compares a NULL agent key as distinct from every other: the key is coalesced to a zero UUID.
NO_KEY = {"postgres": "'00000000-0000-0000-0000-000000000000'::uuid", "sqlite": "''"}
INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS approval_request_open_call ON approval_request "
    "(org, tool, server, arguments_hash, (coalesce(agent_key, {no_key}))) WHERE status IN ('pending', 'approved')"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="preloop", description=DESCRIPTION)
    manager.add_column(
        table_class_name="ApprovalRequest",
        tablename="approval_request",
        column_name="vote_version",
        db_column_name="vote_version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    async def create_index() -> None:
        engine = engine_finder()
        assert engine is not None
        dialect = "sqlite" if isinstance(engine, SQLiteEngine) else "postgres"
        await engine.run_ddl(INDEX.format(no_key=NO_KEY[dialect]))

    async def drop_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("DROP INDEX IF EXISTS approval_request_open_call")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
