"""Index the audit chain by (org_id, seq): appending reads the org's last event on every write."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-24T15:12:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "audit_event (org_id, seq) index"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="preloop", description=DESCRIPTION)

    async def create_index() -> None:
        engine = engine_finder()
        assert engine is not None
        # Same statement on SQLite and PostgreSQL.
        await engine.run_ddl("CREATE INDEX IF NOT EXISTS audit_event_org_seq ON audit_event (org_id, seq)")

    async def drop_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("DROP INDEX IF EXISTS audit_event_org_seq")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
