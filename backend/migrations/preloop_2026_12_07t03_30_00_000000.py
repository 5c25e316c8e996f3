"""Index the foreign keys that requests are read by.

PostgreSQL does not index a foreign key by itself, and these were not: every read of a request's votes
(each approve, each answer that shows a request), each outcome fan-out (who was told about the request)
and each chat callback scanned its whole table, so their cost grew with everything ever stored, in
every org. Plain `CREATE INDEX` (the migration runs in a transaction): on a large existing database it
holds writes to each table while that index is built.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T03:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "foreign key indexes"

# (table, column): Piccolo's own index name for `index=True` is `<table>_<column>`.
INDEXED = [
    ("vote", "request"),
    ("notification_delivery", "request"),
    ("notification_attempt", "delivery"),
    ("chat_comment", "request"),
    ("chat_action_token", "request"),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="preloop", description=DESCRIPTION)

    async def create() -> None:
        engine = engine_finder()
        assert engine is not None
        for table, column in INDEXED:  # same statement on SQLite and PostgreSQL
            await engine.run_ddl(f'CREATE INDEX IF NOT EXISTS {table}_{column} ON {table} ("{column}")')

    async def drop() -> None:
        engine = engine_finder()
        assert engine is not None
        for table, column in INDEXED:
            await engine.run_ddl(f"DROP INDEX IF EXISTS {table}_{column}")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
